"""Tests for the taskiq tasks and their HTTP API (added by bgtasks).

They need the Redis server named by the REDIS_URL setting: without
one they are skipped, or fail when CI=true. Tasks go to a stream of each test's own,
and run in the test through taskiq's own Receiver (in the app's event loop, the one
the broker's connections belong to), so a real worker on the same Redis never sees
them. No pytest plugin needed.
"""

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq.receiver import Receiver
from taskiq.serializers import JSONSerializer

from app.core.config import settings
from app.tasks import taskiq_inbox, taskiq_tasks
from app.tasks.auth import authorize_task_access
from app.tasks.taskiq_app import (
    RETRY_PREFIX,
    broker,
    redis_client,
    retry_source,
    status_key,
)

CONFIG = settings
T = TypeVar("T")


def _b_word(text: bytes) -> str:
    """`text` as an RFC 2047 "b" (base64) encoded word."""
    return f"=?utf-8?b?{base64.b64encode(text).decode()}?="


# Encoded words that decode to CR LF and then headers (or a body) of their own: raw
# CR/LF checks pass them, Python's email package before the CVE-2024-6923 fix writes
# them out as real line breaks.
SUBJECT_PROBES = (
    "=?utf-8?q?Invoice=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0Abody?=",
    _b_word(b"Hi\r\nBcc: victim@evil.example\r\n\r\nattacker body"),
)
# Valid addresses to an address parser: the encoded word sits in the local part (the
# last one decodes to a second "@", and a To header naming another domain).
RECIPIENT_PROBES = (
    "=?utf-8?q?ada=0D=0ABcc=3A_victim=40evil.example?=@example.com",
    _b_word(b"ada\r\nBcc: victim@evil.example") + "@example.com",
    "=?utf-8?q?victim=40evil.example?=@example.com",
)


def _ping(url: str) -> bool:
    async def ping() -> bool:
        client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    return asyncio.run(ping())


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = str(CONFIG.REDIS_URL)
    if not _ping(url):
        where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 6379}"
        reason = f"no Redis at {where} (REDIS_URL setting)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis is required in CI: {reason}")
        pytest.skip(reason)
    return url


async def _caller(request: Request) -> str:
    return "test-caller"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    """The app, its broker on a stream of this test's own, every caller let through."""
    from app.main import app

    application: FastAPI = app
    stream, broker.queue_name = broker.queue_name, f"bgtasks-test:{uuid.uuid4().hex}"
    application.dependency_overrides[authorize_task_access] = _caller
    try:
        # inside `with`, so the router's lifespan starts (then stops) the broker
        with TestClient(application) as test_client:
            yield test_client
            run(test_client, _drop_stream)
            run(test_client, retry_source.shutdown)  # its connections live in this loop
    finally:
        application.dependency_overrides.pop(authorize_task_access, None)
        broker.queue_name = stream


def run(client: TestClient, function: Callable[[], Awaitable[T]]) -> T:
    """Run `function` in the app's event loop: the broker's connections live there."""
    portal = client.portal
    assert portal is not None, "use the client inside `with`"
    return portal.call(function)


def _stream_client() -> Redis:
    # the stream lives where the broker does (its own URL, its own pool)
    return Redis(connection_pool=broker.connection_pool)


async def _drop_stream() -> None:
    async with _stream_client() as redis:
        await redis.delete(broker.queue_name)


async def drain() -> int:
    """Run every task queued on the test's stream, as a worker would; how many ran."""
    receiver = Receiver(broker, run_startup=False, max_async_tasks=1)
    ran = 0
    async with _stream_client() as redis:
        while True:
            fetched: Any = await redis.xreadgroup(
                broker.consumer_group_name,
                "test",
                {broker.queue_name: ">"},
                count=10,
                block=100,
            )
            if not fetched:
                return ran
            for entry_id, fields in fetched[0][1]:
                message = broker.ackable_message(entry_id, fields)
                await receiver.callback(message, raise_err=True)
                ran += 1


def url(client: TestClient, name: str, **params: str) -> str:
    # where the app serves the route: it may include the router under a prefix
    app: Any = client.app
    return str(app.url_path_for(name, **params))


def post(client: TestClient, name: str, payload: Any, **params: str) -> Any:
    return client.post(url(client, name, **params), json=payload)


def status_of(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.get(url(client, "get_task_status", task_id=task_id))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class SmtpSink:
    """Just enough of an SMTP server (no TLS, no auth) to receive messages."""

    def __init__(self, rcpt_reply: str = "250 OK") -> None:
        self.messages: list[Message] = []
        self.port = 0
        self.rcpt_reply = rcpt_reply

    async def session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply("220 localhost test sink")
        while line := await reader.readline():
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            if verb == "DATA":
                await reply("354 end data with <CR><LF>.<CR><LF>")
                lines = []
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b".") else data)
                self.messages.append(message_from_bytes(b"".join(lines)))
                await reply("250 OK")
            elif verb == "QUIT":
                await reply("221 bye")
                break
            elif verb == "RCPT":
                await reply(self.rcpt_reply)
            elif verb in ("EHLO", "HELO", "MAIL", "RSET", "NOOP"):
                await reply("250 OK")
            else:
                await reply("502 not implemented")
        writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator["SmtpSink"]:
        server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


@pytest.fixture
def smtp_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def point_at(port: int) -> None:
        monkeypatch.setattr(CONFIG, "SMTP_HOST", "127.0.0.1")
        monkeypatch.setattr(CONFIG, "SMTP_PORT", port)
        monkeypatch.setattr(CONFIG, "SMTP_USER", "")
        monkeypatch.setattr(CONFIG, "SMTP_STARTTLS", False)
        monkeypatch.setattr(CONFIG, "EMAIL_FROM", "shop@example.com")

    return point_at


def test_tasks_are_registered_with_time_limits_and_schedules() -> None:
    tasks = broker.get_all_tasks()
    assert {"send_email", "process_data", "long_running_task"} <= set(tasks)
    assert all(int(task.labels["timeout"]) > 0 for task in tasks.values())
    assert tasks["send_email"].labels["retry_on_error"] is True
    assert [s["cron"] for s in tasks["cleanup_expired"].labels["schedule"]]
    assert [s["cron"] for s in tasks["daily_report"].labels["schedule"]]


def test_everything_is_json_never_pickle() -> None:
    assert isinstance(broker.serializer, JSONSerializer)
    backend: Any = broker.result_backend
    assert isinstance(backend.serializer, JSONSerializer)


def test_send_email_task_delivers(
    client: TestClient, smtp_settings: Callable[[int], None]
) -> None:
    sink = SmtpSink()

    async def deliver() -> int:
        async with sink.running():
            smtp_settings(sink.port)
            return await drain()

    response = post(
        client,
        "queue_send_email",
        {"to": "ada@example.com", "subject": "Welcome", "body": "Hello Ada"},
    )
    assert response.status_code == 202, response.text
    assert run(client, deliver) == 1
    (message,) = sink.messages
    assert (message["To"], message["Subject"]) == ("ada@example.com", "Welcome")
    assert message["Date"] and message["Message-ID"]
    body = status_of(client, response.json()["task_id"])
    assert body["status"] == "complete" and body["success"] is True
    assert body["result"] == {"status": "sent"}


def test_a_transient_failure_is_retried_a_permanent_one_is_not(
    client: TestClient, smtp_settings: Callable[[int], None]
) -> None:
    payload = {"to": "ada@example.com", "subject": "Hi", "body": "x"}

    async def attempt(reply: str) -> int:
        async with SmtpSink(rcpt_reply=reply).running() as sink:
            smtp_settings(sink.port)
            return await drain()

    async def take_retries(task_id: str) -> int:
        """Remove the retries scheduled for the task (a real scheduler on this Redis
        would send them); how many there were."""
        found = []
        async with redis_client() as redis:
            async for key in redis.scan_iter(f"{RETRY_PREFIX}:data:*"):
                raw = await redis.get(key)
                schedule = json.loads(raw) if raw else {}
                if schedule.get("task_id") == task_id:
                    found.append(schedule["schedule_id"])
        for schedule_id in found:
            await retry_source.delete_schedule(schedule_id)
        return len(found)

    transient = post(client, "queue_send_email", payload).json()["task_id"]
    assert run(client, lambda: attempt("451 try again later")) == 1
    assert status_of(client, transient)["status"] == "retrying"
    assert run(client, lambda: take_retries(transient)) == 1
    # retried: not failed for good, so not in the failed-task inbox
    kept = client.get(url(client, "bgtasks_failed_entry", entry_id=transient))
    assert kept.status_code == 404

    permanent = post(client, "queue_send_email", payload).json()["task_id"]
    assert run(client, lambda: attempt("550 no such user")) == 1
    body = status_of(client, permanent)
    assert body["status"] == "complete" and body["error"] == "failed"
    assert run(client, lambda: take_retries(permanent)) == 0
    # failed for good: kept in the failed-task inbox (then removed from it)
    kept_url = url(client, "bgtasks_failed_discard", entry_id=permanent)
    assert client.delete(kept_url).status_code == 204


def test_process_data_result(client: TestClient) -> None:
    response = post(client, "queue_process_data", {"data_id": 7, "values": [1, 2, 6]})
    assert response.status_code == 202, response.text
    assert run(client, drain) == 1
    body = status_of(client, response.json()["task_id"])
    assert body["status"] == "complete" and body["tries"] == 1
    assert body["result"]["total"] == 9 and body["result"]["mean"] == 3


def test_unknown_task_id_is_404(client: TestClient) -> None:
    unknown = uuid.uuid4().hex
    status = client.get(url(client, "get_task_status", task_id=unknown))
    assert status.status_code == 404
    cancel = post(client, "cancel_task", {}, task_id=unknown)
    assert cancel.status_code == 404


def test_cancel_a_queued_task_then_409(client: TestClient) -> None:
    task_id = post(client, "queue_long_running", {"steps": 50}).json()["task_id"]
    cancel_url = url(client, "cancel_task", task_id=task_id)
    asked = client.post(cancel_url, params={"wait": 0}, json={})
    assert asked.status_code == 202, asked.text
    assert asked.json()["cancelled"] is False
    assert run(client, drain) == 1  # the worker reaches it and drops it
    body = status_of(client, task_id)
    assert body["status"] == "complete" and body["error"] == "cancelled"
    finished = client.post(cancel_url, json={})
    assert finished.status_code == 409 and finished.json()["cancelled"] is True


def test_an_idempotency_key_queues_once_per_caller(client: TestClient) -> None:
    path = url(client, "queue_process_data")
    payload = {"data_id": 3, "values": [1, 2]}
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = client.post(path, json=payload, headers=key)
    again = client.post(path, json=payload, headers=key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    task_id = first.json()["task_id"]
    assert first.json()["duplicate"] is False
    assert again.json() == {
        "task_id": task_id,
        "status": "queued",
        "status_url": url(client, "get_task_status", task_id=task_id),
        "duplicate": True,
    }
    assert first.json()["status_url"] == again.json()["status_url"]
    assert run(client, drain) == 1  # one task, however often it was asked for
    done = client.post(path, json=payload, headers=key)
    assert done.status_code == 200 and done.json()["status"] == "complete"
    other_key = {"Idempotency-Key": f"other-{uuid.uuid4().hex}"}
    other = client.post(path, json=payload, headers=other_key)
    assert other.status_code == 202 and other.json()["task_id"] != task_id

    async def someone_else(request: Request) -> str:
        return "another-caller"

    app: Any = client.app
    app.dependency_overrides[authorize_task_access] = someone_else
    theirs = client.post(path, json=payload, headers=key)  # their key, not ours
    assert theirs.status_code == 202 and theirs.json()["task_id"] != task_id
    assert run(client, drain) == 2
    refused = client.post(path, json=payload, headers={"Idempotency-Key": "a b"})
    assert refused.status_code == 422


def test_a_task_is_private_to_the_caller_who_queued_it(client: TestClient) -> None:
    payload = {"data_id": 2, "values": [1, 2]}
    task_id = post(client, "queue_process_data", payload).json()["task_id"]

    async def someone_else(request: Request) -> str:
        return "another-caller"

    app: Any = client.app
    app.dependency_overrides[authorize_task_access] = someone_else
    status_url = url(client, "get_task_status", task_id=task_id)
    status = client.get(status_url)
    stop = post(client, "cancel_task", {}, task_id=task_id)
    unknown = client.get(url(client, "get_task_status", task_id=uuid.uuid4().hex))
    assert (status.status_code, stop.status_code) == (404, 404)
    assert status.json() == unknown.json()  # nothing tells it from an unknown id

    async def sent_by_other_code() -> str:
        sent = await taskiq_tasks.process_data.kiq(data_id=2, values=[1, 2])
        return sent.task_id

    unowned = run(client, sent_by_other_code)
    app.dependency_overrides[authorize_task_access] = _caller
    assert status_of(client, task_id)["status"] == "queued"
    # the other caller's request to stop it changed nothing: both tasks run
    assert run(client, drain) == 2
    assert status_of(client, task_id)["success"] is True
    app.dependency_overrides[authorize_task_access] = someone_else
    assert client.get(status_url).status_code == 404
    # a task sent by other code (a schedule, say) has no owner: any caller's
    assert status_of(client, unowned)["success"] is True


def test_progress_is_an_object_while_it_runs(client: TestClient) -> None:
    task_id = post(client, "queue_long_running", {"steps": 1}).json()["task_id"]

    async def pretend_running() -> None:
        async with redis_client() as redis:
            await redis.hset(
                status_key(task_id),
                mapping={"state": "in_progress", "current": 3, "total": 4},
            )

    run(client, pretend_running)
    progress = status_of(client, task_id)["progress"]
    assert progress == {"current": 3, "total": 4, "percent": 75}


def test_encoded_line_breaks_are_refused(client: TestClient) -> None:
    for subject in SUBJECT_PROBES:
        payload = {"to": "ada@example.com", "subject": subject, "body": "x"}
        assert post(client, "queue_send_email", payload).status_code == 422
    for to in RECIPIENT_PROBES:
        payload = {"to": to, "subject": "Hi", "body": "x"}
        assert post(client, "queue_send_email", payload).status_code == 422
    with pytest.raises(ValueError):
        taskiq_tasks.compose_message(
            "shop@example.com", "ada@example.com", SUBJECT_PROBES[0], "x"
        )


def test_inputs_are_bounded(client: TestClient) -> None:
    path = url(client, "queue_process_data")
    too_large = b'{"data_id": 1, "values": [' + b"1," * 200_000 + b"1]}"
    headers = {"content-type": "application/json"}
    assert client.post(path, content=too_large, headers=headers).status_code == 413
    assert client.post(path, content=b"{}").status_code == 415
    infinite = b'{"data_id": 1, "values": [1e400]}'  # parsed as inf
    assert client.post(path, content=infinite, headers=headers).status_code == 422


def test_the_routes_refuse_requests_without_the_token(client: TestClient) -> None:
    app: Any = client.app
    app.dependency_overrides.pop(authorize_task_access, None)
    if str(CONFIG.BGTASKS_ALLOW_ANONYMOUS).strip().lower() == "true":
        pytest.skip("anonymous requests are allowed in this environment")
    response = post(client, "queue_process_data", {"data_id": 1, "values": [1]})
    assert response.status_code == 401


def refused_for_good(client: TestClient, smtp_settings: Callable[[int], None]) -> int:
    """Run what is queued with a mail server that refuses every recipient for good
    (550: not retried); how many ran."""

    async def refuse() -> int:
        async with SmtpSink(rcpt_reply="550 no such user").running() as sink:
            smtp_settings(sink.port)
            return await drain()

    return run(client, refuse)


def inbox_url(client: TestClient, name: str, entry_id: str) -> str:
    return url(client, name, entry_id=entry_id)


def test_a_task_failed_for_good_is_kept_its_address_hidden(
    client: TestClient, smtp_settings: Callable[[int], None]
) -> None:
    payload = {"to": "grace@example.com", "subject": "Refused", "body": "code 1234"}
    task_id = post(client, "queue_send_email", payload).json()["task_id"]
    assert refused_for_good(client, smtp_settings) == 1
    listed = client.get(
        url(client, "bgtasks_failed_list"), params={"task": "send_email", "limit": 100}
    )
    assert listed.status_code == 200, listed.text
    (entry,) = [e for e in listed.json()["entries"] if e["id"] == task_id]
    assert (entry["kind"], entry["task"]) == ("failed", "send_email")
    assert entry["attempts"] == 1  # refused for good: not retried
    assert entry["error_type"] == "EmailNotSent" and "550" in entry["error"]
    assert entry["kwargs"] == {name: taskiq_inbox.HIDDEN for name in payload}
    shown = client.get(inbox_url(client, "bgtasks_failed_entry", task_id))
    assert shown.status_code == 200 and shown.json()["kwargs"] == entry["kwargs"]
    for text in (listed.text, shown.text):
        assert "grace@example.com" not in text and "code 1234" not in text
    discard_url = inbox_url(client, "bgtasks_failed_discard", task_id)
    assert client.delete(discard_url).status_code == 204
    gone = client.get(inbox_url(client, "bgtasks_failed_entry", task_id))
    assert gone.status_code == 404
    assert client.delete(discard_url).status_code == 404


def test_a_replay_runs_the_task_again_once_unless_forced(
    client: TestClient, smtp_settings: Callable[[int], None]
) -> None:
    payload = {"to": "grace@example.com", "subject": "Again", "body": "x"}
    task_id = post(client, "queue_send_email", payload).json()["task_id"]
    assert refused_for_good(client, smtp_settings) == 1
    replay_url = inbox_url(client, "bgtasks_failed_replay", task_id)
    first = client.post(replay_url, json={})
    assert first.status_code == 202, first.text
    again = first.json()["task_id"]
    assert first.json()["entry_id"] == task_id and again != task_id
    status_url = url(client, "get_task_status", task_id=again)
    assert first.json()["status_url"] == status_url
    assert refused_for_good(client, smtp_settings) == 1  # fails again: linked back
    linked = client.get(inbox_url(client, "bgtasks_failed_entry", again)).json()
    assert linked["replay_of"] == task_id
    refused = client.post(replay_url, json={})
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"]["replayed_as"] == again
    forced = client.post(replay_url, params={"force": "true"}, json={})
    assert forced.status_code == 202, forced.text
    sink = SmtpSink()

    async def deliver() -> int:
        async with sink.running():
            smtp_settings(sink.port)
            return await drain()

    assert run(client, deliver) == 1
    (message,) = sink.messages
    assert (message["To"], message["Subject"]) == ("grace@example.com", "Again")
    assert status_of(client, forced.json()["task_id"])["success"] is True
    for entry_id in (task_id, again):
        client.delete(inbox_url(client, "bgtasks_failed_discard", entry_id))


def test_unknown_inbox_entries_are_404(client: TestClient) -> None:
    unknown = uuid.uuid4().hex
    shown = client.get(inbox_url(client, "bgtasks_failed_entry", unknown))
    assert shown.status_code == 404
    replay = client.post(inbox_url(client, "bgtasks_failed_replay", unknown), json={})
    assert replay.status_code == 404
    discard = client.delete(inbox_url(client, "bgtasks_failed_discard", unknown))
    assert discard.status_code == 404
    too_many = client.get(url(client, "bgtasks_failed_list"), params={"limit": 101})
    assert too_many.status_code == 422


def test_a_message_that_is_no_task_is_kept_as_poison_never_run(
    client: TestClient,
) -> None:
    raw = f"not a task {uuid.uuid4().hex}".encode()

    async def push() -> None:
        async with _stream_client() as redis:
            await redis.xadd(broker.queue_name, {"data": raw})

    run(client, push)
    assert run(client, drain) == 1  # taken, acknowledged, not run
    encoded = base64.b64encode(raw).decode()
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:  # written right after the drop
        listed = client.get(url(client, "bgtasks_failed_list"), params={"limit": 100})
        found = [e for e in listed.json()["entries"] if e["raw"] == encoded]
        time.sleep(0.05)
    assert found, "no poison entry for the message"
    (entry,) = found
    assert entry["kind"] == "poison" and "not a task message" in entry["error"]
    assert entry["raw_size"] == len(raw)
    replay_url = inbox_url(client, "bgtasks_failed_replay", entry["id"])
    replay = client.post(replay_url, json={})
    assert replay.status_code == 422  # nothing to run
    client.delete(inbox_url(client, "bgtasks_failed_discard", entry["id"]))
    # the next message is a task as usual
    response = post(client, "queue_process_data", {"data_id": 5, "values": [5]})
    assert run(client, drain) == 1
    assert status_of(client, response.json()["task_id"])["success"] is True

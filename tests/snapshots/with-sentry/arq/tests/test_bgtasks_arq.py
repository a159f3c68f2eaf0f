"""Tests for the arq jobs and their HTTP API (added by bgtasks).

They need the Redis server named by the REDIS_URL setting: without
one they are skipped, or fail when CI=true. Jobs go to a private queue, run by a
burst-mode arq Worker inside the test, so a real worker on the same Redis never sees
them (and they never run its jobs). No pytest plugin needed: async code runs through
asyncio.run.
"""

import asyncio
import base64
import functools
import logging
import os
import pickle
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import pytest
from arq import Retry
from arq.connections import RedisSettings, create_pool
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.cron import CronJob
from arq.jobs import JobStatus
from arq.worker import FailedJobs, Function, Worker
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.api.v1.routes.arq_tasks import authorize_task_access
from app.core.config import settings
from app.tasks import arq_inbox, arq_tasks
from app.tasks.arq_tasks import (
    SEND_EMAIL_MAX_TRIES,
    EmailNotSent,
    build_message,
    daily_cleanup,
    send_email,
)
from app.tasks.arq_worker import WorkerSettings
from app.tasks.pool import STATE_KEY, create_queue
from app.tasks.serialization import deserialize, serialize

CONFIG = settings
JSON = {"content-type": "application/json"}
# The API token of these tests; every request of `client` carries it and says JSON.
TOKEN = f"test-{uuid.uuid4().hex}"
HEADERS = {"authorization": f"Bearer {TOKEN}", **JSON}


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


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue of this test's own: no job of another test (or of a real worker)."""
    name = f"bgtasks-test:{uuid.uuid4().hex}"
    yield name

    async def drop() -> None:
        client = Redis.from_url(redis_url)
        try:
            await client.delete(name)
        finally:
            await client.aclose()

    asyncio.run(drop())


def the_app() -> FastAPI:
    from app.main import app

    application: FastAPI = app
    return application


@functools.cache
def _router_prefix() -> str:
    """The path the app serves the job router under: whatever prefix its include
    gives it (`prefix=settings.API_V1_STR`), read from the app itself."""
    tail = "/tasks/status/{task_id}"
    # the OpenAPI paths, not app.routes: newer FastAPI keeps included routers nested
    for path in the_app().openapi().get("paths", {}):
        if path.endswith(tail):
            return str(path[: -len(tail)])
    raise AssertionError(f"the app serves no {tail} route: is the job router included?")


def served(path: str) -> str:
    """A path of the job router (`/tasks/...`) as the app serves it."""
    return f"{_router_prefix()}{path}"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The API accepts TOKEN, and nothing without it, whatever the environment says."""
    monkeypatch.setattr(CONFIG, "BGTASKS_API_TOKEN", TOKEN)
    monkeypatch.setattr(CONFIG, "BGTASKS_ALLOW_ANONYMOUS", False)
    return TOKEN


@pytest.fixture
def client(queue_name: str, token: str) -> Iterator[TestClient]:
    application = the_app()
    # inside `with`, so the app's lifespan opens (and then closes) its arq pool
    with TestClient(application, headers=HEADERS) as test_client:
        getattr(application.state, STATE_KEY).default_queue_name = queue_name
        yield test_client


async def drain_queue(redis_url: str, queue_name: str) -> Worker:
    """Run the jobs queued so far with a burst-mode worker built from WorkerSettings."""
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )
    worker = Worker(
        WorkerSettings.functions,
        redis_pool=pool,
        queue_name=queue_name,
        burst=True,
        poll_delay=0,
        handle_signals=False,
        allow_abort_jobs=True,
        # the worker's own: its queue guard, and what records into the inbox
        on_startup=WorkerSettings.on_startup,
        on_shutdown=WorkerSettings.on_shutdown,
        job_serializer=WorkerSettings.job_serializer,
        job_deserializer=deserialize,
    )
    try:
        await worker.run_check()
    finally:
        await worker.close()
    return worker


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


def status_of(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(served(f"/tasks/status/{job_id}"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_requests_without_the_token_are_refused(token: str) -> None:
    application = the_app()
    unknown = uuid.uuid4().hex
    requests = [
        ("POST", served("/tasks/send-email")),
        ("POST", served("/tasks/process-data")),
        ("GET", served(f"/tasks/status/{unknown}")),
        ("POST", served(f"/tasks/cancel/{unknown}")),
    ]
    payload = {"to": "a@example.com", "subject": "Hi", "body": "b"}
    for authorization in ("", "Bearer wrong-token", f"Basic {token}", "Bearer "):
        headers = {**JSON, "authorization": authorization} if authorization else JSON
        # no `with`: refused before the Redis pool is needed
        caller = TestClient(application, headers=headers)
        for method, path in requests:
            body = payload if method == "POST" else None
            response = caller.request(method, path, json=body)
            assert response.status_code == 401, (method, path, authorization)
            assert response.headers["www-authenticate"] == "Bearer"


def test_anonymous_requests_pass_only_when_allowed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CONFIG, "BGTASKS_ALLOW_ANONYMOUS", True)
    path = served(f"/tasks/status/{uuid.uuid4().hex}")
    anonymous = client.get(path, headers={"authorization": ""})
    assert anonymous.status_code == 404  # past the hook: an unknown id
    wrong = client.get(path, headers={"authorization": "Bearer wrong-token"})
    assert wrong.status_code == 401  # a wrong token is still refused


def test_a_post_that_is_not_json_is_refused(token: str) -> None:
    # What a cross-site form or no-cors fetch can send without a CORS preflight.
    caller = TestClient(the_app(), headers=HEADERS)
    form = caller.post(
        served("/tasks/send-email"),
        data={"to": "a@example.com", "subject": "Hi", "body": "b"},
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415, form.text
    abort_path = served(f"/tasks/cancel/{uuid.uuid4().hex}")
    for content_type in ("text/plain", "multipart/form-data; boundary=x"):
        response = caller.post(abort_path, headers={"content-type": content_type})
        assert response.status_code == 415, content_type


def test_openapi_declares_the_real_responses() -> None:
    schema = the_app().openapi()["paths"]
    declared = {
        ("/send-email", "post"): {"200", "202", "401", "413", "415", "429", "503"},
        ("/process-data", "post"): {"200", "202", "401", "413", "415", "503"},
        ("/long-running", "post"): {"200", "202", "401", "413", "415", "503"},
        ("/status/{task_id}", "get"): {"200", "401", "404", "503"},
        ("/cancel/{task_id}", "post"): {
            "200",
            "202",
            "401",
            "404",
            "409",
            "415",
            "503",
        },
    }
    for (path, method), codes in declared.items():
        operation = schema[served(f"/tasks{path}")][method]
        assert codes <= set(operation["responses"]), (path, operation["responses"])
        assert operation["summary"] and "Queue Send" not in operation["summary"], path
        refused = operation["responses"]["401"]["content"]["application/json"]
        assert refused["schema"]["$ref"].endswith("/ErrorMessage"), path


def test_worker_settings_register_function_objects() -> None:
    functions = {f.name: f for f in WorkerSettings.functions}
    assert {"send_email", "process_data", "long_running_task"} <= set(functions)
    # wrapped, to keep what fails for good in the failed-task inbox
    send = functions["send_email"].coroutine
    assert getattr(send, "__wrapped__", None) is arq_tasks.send_email
    assert all(isinstance(f, Function) and f.timeout_s for f in functions.values())
    assert all(isinstance(job, CronJob) for job in WorkerSettings.cron_jobs)
    assert WorkerSettings.allow_abort_jobs
    record = {**JOB_RECORD, "s": True, "r": 1, "st": 2, "ft": 3}
    assert WorkerSettings.job_serializer(record) == serialize(record)
    assert WorkerSettings.job_deserializer is deserialize


JOB_RECORD = {"f": "send_email", "a": [], "k": {"to": "a@example.com"}, "t": 1, "et": 1}


def test_serializer_is_json_and_refuses_pickle() -> None:
    result = {**JOB_RECORD, "s": False, "st": 2, "ft": 3}
    record = {**result, "r": ValueError("secret@example.com")}
    stored = {**result, "r": {"__error__": "ValueError"}}
    assert deserialize(serialize(record)) == stored
    with pytest.raises(ValueError):
        deserialize(pickle.dumps({"f": "send_email"}))


def test_malformed_records_are_refused() -> None:
    # arq trusts these fields: a mistyped one would stop the worker
    poisoned: list[dict[str, Any]] = [
        {key: value for key, value in JOB_RECORD.items() if key != "f"},
        {**JOB_RECORD, "f": ["send_email"]},
        {**JOB_RECORD, "a": {"to": "x"}},
        {**JOB_RECORD, "k": [1]},
        {**JOB_RECORD, "t": "1"},
        {**JOB_RECORD, "et": None},
        # in range for JSON, not for arq: a datetime beyond year 9999, a try count
        {**JOB_RECORD, "et": 10**20},
        {**JOB_RECORD, "et": -1},
        {**JOB_RECORD, "t": 10**30},
        {**JOB_RECORD, "s": True, "st": "now", "ft": 3},
    ]
    for record in poisoned:
        with pytest.raises(ValueError):
            deserialize(serialize(record))
    with pytest.raises(ValueError):
        deserialize(b"not json")
    untried = {**JOB_RECORD, "t": None}  # what enqueue_job stores for a new job
    assert deserialize(serialize(untried)) == untried


def use_smtp(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setattr(CONFIG, "SMTP_HOST", "127.0.0.1")
    monkeypatch.setattr(CONFIG, "SMTP_PORT", port)
    monkeypatch.setattr(CONFIG, "SMTP_USER", "")
    monkeypatch.setattr(CONFIG, "SMTP_STARTTLS", False)
    monkeypatch.setattr(CONFIG, "SMTP_TIMEOUT", 5.0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_send_email_retries_transient_errors_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ("user@example.com", "Hi", "Hello")
    use_smtp(monkeypatch, closed_port())  # connection refused: worth a retry
    with pytest.raises(Retry):
        asyncio.run(send_email({"job_id": "t", "job_try": 1}, *args))
    # the last try raises the real error, so the job's result records a failure
    last_try = {"job_id": "t", "job_try": SEND_EMAIL_MAX_TRIES}
    with pytest.raises(aiosmtplib.SMTPConnectError):
        asyncio.run(send_email(last_try, *args))

    async def refused() -> None:  # 550: permanent, never retried
        async with SmtpSink(rcpt_reply="550 no such user").running() as sink:
            use_smtp(monkeypatch, sink.port)
            await send_email({"job_id": "t", "job_try": 1}, *args)

    # the error names the reply code only: arq logs it, the server's text may
    # quote the address
    with pytest.raises(EmailNotSent) as refusal:
        asyncio.run(refused())
    assert "user@example.com" not in str(refusal.value)


def test_send_email_job_delivers(
    client: TestClient, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = client.post(
        served("/tasks/send-email"),
        json={"to": "user@example.com", "subject": "Welcome", "body": "Hello!"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["task_id"]
    assert status_of(client, job_id)["status"] == "queued"

    async def deliver() -> list[Message]:
        async with SmtpSink().running() as sink:
            use_smtp(monkeypatch, sink.port)
            await drain_queue(redis_url, queue_name)
            return sink.messages

    messages = asyncio.run(deliver())
    assert [m["Subject"] for m in messages] == ["Welcome"]
    assert messages[0]["To"] == "user@example.com"
    body = status_of(client, job_id)
    assert body["status"] == "complete" and body["success"] is True
    assert body["result"] == {"status": "sent"}


def test_the_worker_log_names_the_job_not_its_arguments(
    client: TestClient,
    redis_url: str,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = {"to": "private.person@example.com", "subject": "Hi", "body": "Secret"}
    response = client.post(served("/tasks/send-email"), json=payload)
    assert response.status_code == 202, response.text

    async def deliver() -> list[Message]:
        async with SmtpSink().running() as sink:
            use_smtp(monkeypatch, sink.port)
            await drain_queue(redis_url, queue_name)
            return sink.messages

    with caplog.at_level(logging.INFO, logger="arq"):
        messages = asyncio.run(deliver())
    assert len(messages) == 1
    assert "send_email(<arguments hidden>)" in caplog.text
    assert "private.person" not in caplog.text and "Secret" not in caplog.text


def test_encoded_line_breaks_are_refused(client: TestClient) -> None:
    for subject in (*SUBJECT_PROBES, "a\r\nBcc: x", "tab\there", "line\u2028break"):
        payload = {"to": "a@example.com", "subject": subject, "body": "b"}
        response = client.post(served("/tasks/send-email"), json=payload)
        assert response.status_code == 422, subject
    for to in RECIPIENT_PROBES:
        payload = {"to": to, "subject": "Hi", "body": "b"}
        refused = client.post(served("/tasks/send-email"), json=payload)
        assert refused.status_code == 422


def test_the_job_refuses_what_the_api_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Jobs can be queued by other code than the API: the job checks again.
    use_smtp(monkeypatch, closed_port())  # never reached
    ctx = {"job_id": "t", "job_try": 1}
    for subject in SUBJECT_PROBES:
        with pytest.raises(ValueError):
            asyncio.run(send_email(ctx, "user@example.com", subject, "Hello"))
    for to in (*RECIPIENT_PROBES, "user@example.com\r\nBcc: v@evil.example"):
        with pytest.raises(ValueError):
            build_message(to, "Hi", "Hello")
    sender = "=?utf-8?q?Shop=0D=0ABcc:_v@evil.example?= <shop@example.com>"
    monkeypatch.setattr(CONFIG, "EMAIL_FROM", sender)
    with pytest.raises(ValueError):
        build_message("user@example.com", "Hi", "Hello")


def test_a_message_has_date_and_message_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CONFIG, "EMAIL_FROM", "Shop <shop@example.com>")
    message = build_message("user@example.com", "Hi", "Hello")
    assert str(message["Date"]).endswith(" -0000")  # UTC (RFC 5322)
    assert str(message["Message-ID"]).endswith("@example.com>")
    assert {"From", "To", "Subject", "Date", "Message-ID"} <= set(message.keys())


def test_non_finite_numbers_and_large_bodies_are_refused(client: TestClient) -> None:
    # Python's JSON parser reads 1e400 as inf and accepts NaN; a 422 that echoed them
    # could not be written as JSON (a 500).
    for raw in ("1e400", "NaN", "-Infinity"):
        body = '{"data_id": 1, "values": [1, ' + raw + "]}"
        response = client.post(
            served("/tasks/process-data"), content=body, headers=JSON
        )
        assert response.status_code == 422, raw
        assert "input" not in response.json()["detail"][0]
    abort_path = served(f"/tasks/cancel/{uuid.uuid4().hex}")
    assert client.post(abort_path, params={"wait": "nan"}).status_code == 422
    oversized = b'{"data_id": 1, "values": [' + b"1," * 200_000 + b"1]}"

    # without a Content-Length (chunked), the limit holds while the body is read
    def chunked() -> Iterator[bytes]:
        for start in range(0, len(oversized), 16_384):
            yield oversized[start : start + 16_384]

    for content in (oversized, chunked()):
        response = client.post(
            served("/tasks/process-data"), content=content, headers=JSON
        )
        assert response.status_code == 413


def test_process_data_job_result(
    client: TestClient, redis_url: str, queue_name: str
) -> None:
    response = client.post(
        served("/tasks/process-data"), json={"data_id": 7, "values": [1, 2, 3.5]}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["task_id"]
    asyncio.run(drain_queue(redis_url, queue_name))
    body = status_of(client, job_id)
    assert body["status"] == "complete" and body["success"] is True
    assert body["result"]["total"] == 6.5 and body["result"]["count"] == 3


def test_unknown_job_is_404(client: TestClient) -> None:
    unknown = uuid.uuid4().hex
    assert client.get(served(f"/tasks/status/{unknown}")).status_code == 404
    assert client.post(served(f"/tasks/cancel/{unknown}")).status_code == 404


def test_idempotency_key_enqueues_once(
    client: TestClient, redis_url: str, queue_name: str
) -> None:
    key = uuid.uuid4().hex
    payload = {"data_id": 1, "values": [1]}
    headers = {"Idempotency-Key": key}
    url = served("/tasks/process-data")
    first = client.post(url, json=payload, headers=headers)
    second = client.post(url, json=payload, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    job_id = first.json()["task_id"]
    assert job_id == second.json()["task_id"]
    # a keyed hash: the key cannot be read from, nor the id guessed from, the other
    assert job_id.startswith("process_data:") and key not in job_id
    assert asyncio.run(drain_queue(redis_url, queue_name)).jobs_complete == 1


def as_caller(identity: str) -> Callable[[], str]:
    """A stand-in for the auth hook that says the request comes from `identity`."""

    def caller() -> str:
        return identity

    return caller


def test_idempotency_keys_are_per_caller(
    client: TestClient, redis_url: str, queue_name: str
) -> None:
    application = client.app
    assert isinstance(application, FastAPI)
    key, payload = uuid.uuid4().hex, {"data_id": 1, "values": [1]}
    job_ids = []
    try:
        for caller in ("user:alice", "user:bob"):
            application.dependency_overrides[authorize_task_access] = as_caller(caller)
            response = client.post(
                served("/tasks/process-data"),
                json=payload,
                headers={"Idempotency-Key": key},
            )
            assert response.status_code == 202, response.text
            assert response.json()["duplicate"] is False
            job_ids.append(response.json()["task_id"])
    finally:
        application.dependency_overrides.pop(authorize_task_access, None)
    assert job_ids[0] != job_ids[1]
    assert asyncio.run(drain_queue(redis_url, queue_name)).jobs_complete == 2


def test_a_job_is_private_to_the_caller_who_queued_it(
    client: TestClient, redis_url: str, queue_name: str
) -> None:
    application = client.app
    assert isinstance(application, FastAPI)
    overrides = application.dependency_overrides
    payload = {"data_id": 1, "values": [1]}

    def as_alice() -> None:
        overrides[authorize_task_access] = as_caller("user:alice")

    def as_bob() -> None:
        overrides[authorize_task_access] = as_caller("user:bob")

    async def queued_by_other_code() -> str:
        queue = create_queue()
        queue.default_queue_name = queue_name
        try:
            job = await queue.enqueue_job("process_data", data_id=1, values=[1])
        finally:
            await queue.aclose(close_connection_pool=True)
        assert job is not None
        return job.job_id

    try:
        as_alice()
        response = client.post(served("/tasks/process-data"), json=payload)
        assert response.status_code == 202, response.text
        job_id = response.json()["task_id"]
        as_bob()
        status = client.get(served(f"/tasks/status/{job_id}"))
        stop = client.post(served(f"/tasks/cancel/{job_id}"), params={"wait": 0})
        unknown = client.get(served(f"/tasks/status/{uuid.uuid4().hex}"))
        assert (status.status_code, stop.status_code) == (404, 404)
        assert status.json() == unknown.json()  # nothing tells it from an unknown id
        unowned = asyncio.run(queued_by_other_code())
        as_alice()
        assert status_of(client, job_id)["status"] == "queued"
        # Bob's cancel asked for nothing: both jobs run to their end
        assert asyncio.run(drain_queue(redis_url, queue_name)).jobs_complete == 2
        assert status_of(client, job_id)["success"] is True
        as_bob()
        later = client.get(served(f"/tasks/status/{job_id}"))
        assert later.status_code == 404
        # a job queued by other code (a cron job, say) has no owner: any caller's
        assert status_of(client, unowned)["success"] is True
    finally:
        overrides.pop(authorize_task_access, None)


def test_queue_client_stores_jobs_as_arq_does(redis_url: str, queue_name: str) -> None:
    """The API's one-round-trip enqueue writes what arq's own enqueue_job writes."""
    suffix = uuid.uuid4().hex

    async def scenario() -> dict[str, Any]:
        ours = create_queue()
        ours.default_queue_name = queue_name
        arqs = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=queue_name,
        )
        ids = (f"ours-{suffix}", f"arq-{suffix}")
        try:
            kwargs: dict[str, Any] = {"data_id": 7, "values": [1.5], "_defer_by": 30}
            mine = await ours.enqueue_job("process_data", _job_id=ids[0], **kwargs)
            theirs = await arqs.enqueue_job("process_data", _job_id=ids[1], **kwargs)
            assert mine is not None and theirs is not None
            return {
                "duplicate": await ours.enqueue_job("process_data", _job_id=ids[0]),
                "infos": [await mine.info(), await theirs.info()],
                "ttls": [await ours.pttl(job_key_prefix + job_id) for job_id in ids],
                "status": await mine.status(),
            }
        finally:
            await ours.delete(*(job_key_prefix + job_id for job_id in ids))
            await ours.aclose(close_connection_pool=True)
            await arqs.aclose(close_connection_pool=True)

    outcome = asyncio.run(scenario())
    assert outcome["duplicate"] is None
    assert outcome["status"] == JobStatus.deferred
    mine, theirs = outcome["infos"]
    assert mine is not None and theirs is not None
    assert (mine.function, mine.args, mine.kwargs, mine.job_try) == (
        theirs.function,
        theirs.args,
        theirs.kwargs,
        theirs.job_try,
    )
    assert mine.kwargs == {"data_id": 7, "values": [1.5]}
    # due in 30 s, kept a day past that: both within a few seconds of arq's own
    assert abs(mine.score - theirs.score) < 5_000
    assert abs(outcome["ttls"][0] - outcome["ttls"][1]) < 5_000


def test_enqueues_made_together_queue_each_id_once(
    redis_url: str, queue_name: str
) -> None:
    """Concurrent enqueues share script calls (pool.Batches): none is lost, and an id
    given by several of them is still queued once."""
    shared_id = f"shared-{uuid.uuid4().hex}"

    async def scenario() -> list[Any]:
        queue = create_queue()
        queue.default_queue_name = queue_name
        try:
            return await asyncio.gather(
                *(
                    queue.enqueue_job(
                        "process_data",
                        _job_id=shared_id if number % 2 else None,
                        data_id=number,
                        values=[number],
                    )
                    for number in range(1, 41)
                )
            )
        finally:
            await queue.aclose(close_connection_pool=True)

    jobs = asyncio.run(scenario())
    shared = [job for job in jobs[0::2] if job is not None]
    own = [job for job in jobs[1::2] if job is not None]
    assert [job.job_id for job in shared] == [shared_id]
    assert len({job.job_id for job in own}) == 20
    assert asyncio.run(drain_queue(redis_url, queue_name)).jobs_complete == 21


def test_abort_queued_job(client: TestClient, redis_url: str, queue_name: str) -> None:
    response = client.post(served("/tasks/long-running"), json={"steps": 50})
    job_id = response.json()["task_id"]
    # no worker runs yet: the abort is recorded, the job has not stopped
    pending = client.post(served(f"/tasks/cancel/{job_id}"), params={"wait": 0})
    assert pending.status_code == 202
    assert pending.json() == {"task_id": job_id, "cancelled": False, "status": "queued"}

    # the worker drops the job instead of running it; arq counts that as a failure
    with pytest.raises(FailedJobs):
        asyncio.run(drain_queue(redis_url, queue_name))
    body = status_of(client, job_id)
    assert body["status"] == "complete" and body["error"] == "cancelled"
    assert body["result"] is None
    done = client.post(served(f"/tasks/cancel/{job_id}"))
    assert done.status_code == 409  # finished: nothing left to abort
    assert done.json() == {"task_id": job_id, "cancelled": True, "status": "complete"}


def test_daily_cleanup_drops_stale_abort_requests(redis_url: str) -> None:
    stale, fresh = f"test-stale-{uuid.uuid4().hex}", f"test-fresh-{uuid.uuid4().hex}"
    now_ms = int(time.time() * 1000)

    async def scenario() -> tuple[dict[str, int], list[bytes]]:
        redis = Redis.from_url(redis_url)
        try:
            await redis.zadd(abort_jobs_ss, {stale: now_ms - 2 * 86_400_000})
            await redis.zadd(abort_jobs_ss, {fresh: now_ms})
            result = await daily_cleanup({"redis": redis})
            left = await redis.zrange(abort_jobs_ss, 0, -1)
            await redis.zrem(abort_jobs_ss, fresh)
            return result, left
        finally:
            await redis.aclose()

    result, left = asyncio.run(scenario())
    assert result["abort_requests_removed"] >= 1
    assert stale.encode() not in left and fresh.encode() in left


def test_inputs_are_bounded(client: TestClient) -> None:
    bad_email = {"to": "not-an-address", "subject": "s", "body": "b"}
    email_url = served("/tasks/send-email")
    assert client.post(email_url, json=bad_email).status_code == 422
    injected = {"to": "a@example.com", "subject": "a\r\nBcc: x", "body": "b"}
    assert client.post(email_url, json=injected).status_code == 422
    long_url = served("/tasks/long-running")
    assert client.post(long_url, json={"steps": 0}).status_code == 422
    too_many = {"data_id": 1, "values": [0] * 10_001}
    data_url = served("/tasks/process-data")
    assert client.post(data_url, json=too_many).status_code == 422


def refused_email_in_inbox(
    client: TestClient,
    redis_url: str,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    payload: dict[str, str],
) -> str:
    """Queue an email the server refuses for good (550); its job id, once the worker
    has given up on it."""
    response = client.post(served("/tasks/send-email"), json=payload)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["task_id"]

    async def refuse() -> None:
        async with SmtpSink(rcpt_reply="550 no such user").running() as sink:
            use_smtp(monkeypatch, sink.port)
            await drain_queue(redis_url, queue_name)

    with pytest.raises(FailedJobs):
        asyncio.run(refuse())
    return job_id


def test_arq_inbox_lists_shows_replays_and_discards(
    client: TestClient, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"to": "inbox.person@example.com", "subject": "Hi", "body": "Private"}
    job_id = refused_email_in_inbox(client, redis_url, queue_name, monkeypatch, payload)
    entry_path = served(f"/tasks/failed/{job_id}")
    try:
        listing = client.get(
            served("/tasks/failed"), params={"task": "send_email", "limit": 100}
        )
        assert listing.status_code == 200, listing.text
        page = listing.json()
        assert job_id in [entry["id"] for entry in page["entries"]]
        assert page["total"] >= 1 and page["dropped"] >= 0
        shown = client.get(entry_path)
        assert shown.status_code == 200, shown.text
        entry = shown.json()
        assert (entry["kind"], entry["task"]) == ("failed", "send_email")
        assert entry["error_type"] == "EmailNotSent" and entry["attempts"] == 1
        # personal data is kept for a replay, never shown
        assert set(entry["kwargs"].values()) == {arq_inbox.HIDDEN}
        for text in (listing.text, shown.text):
            assert "inbox.person" not in text and "Private" not in text

        async def deliver() -> list[Message]:
            async with SmtpSink().running() as sink:
                use_smtp(monkeypatch, sink.port)
                await drain_queue(redis_url, queue_name)
                return sink.messages

        replayed = client.post(f"{entry_path}/replay")
        assert replayed.status_code == 202, replayed.text
        new_id = replayed.json()["task_id"]
        assert new_id != job_id and replayed.json()["entry_id"] == job_id
        assert replayed.json()["status_url"] == served(f"/tasks/status/{new_id}")
        messages = asyncio.run(deliver())
        assert [message["To"] for message in messages] == [payload["to"]]
        assert status_of(client, new_id)["success"] is True
        again = client.post(f"{entry_path}/replay")
        assert again.status_code == 409, again.text
        assert again.json()["detail"]["replayed_as"] == new_id
        forced = client.post(f"{entry_path}/replay", params={"force": "true"})
        assert forced.status_code == 202, forced.text
        assert client.get(entry_path).json()["replayed_as"] == forced.json()["task_id"]
        assert client.delete(entry_path).status_code == 204
    finally:
        client.delete(entry_path)
    assert client.get(entry_path).status_code == 404
    assert client.delete(entry_path).status_code == 404
    assert client.post(f"{entry_path}/replay").status_code == 404


def test_a_poison_queue_entry_lands_in_the_inbox_unrun(
    client: TestClient, redis_url: str, queue_name: str
) -> None:
    member = b"\xff\xfe" + uuid.uuid4().hex.encode()  # a job id that is not UTF-8

    async def push() -> None:
        redis = Redis.from_url(redis_url)
        try:
            await redis.zadd(queue_name, {member: 1})
        finally:
            await redis.aclose()

    asyncio.run(push())
    response = client.post(
        served("/tasks/process-data"), json={"data_id": 1, "values": [1]}
    )
    assert response.status_code == 202, response.text
    # the worker drops the entry and goes on: the next job still runs
    assert asyncio.run(drain_queue(redis_url, queue_name)).jobs_complete == 1
    listing = client.get(served("/tasks/failed"), params={"limit": 100})
    assert listing.status_code == 200, listing.text
    raw = base64.b64encode(member).decode()
    found = [entry for entry in listing.json()["entries"] if entry["raw"] == raw]
    assert len(found) == 1, listing.text
    entry = found[0]
    assert entry["kind"] == "poison" and "not UTF-8" in entry["error"]
    path = served(f"/tasks/failed/{entry['id']}")
    try:
        assert client.post(f"{path}/replay").status_code == 422  # nothing to run
    finally:
        assert client.delete(path).status_code == 204


def test_arq_inbox_routes_are_declared() -> None:
    schema = the_app().openapi()["paths"]
    entry = "/failed/{entry_id}"
    declared = {
        ("/failed", "get"): {"200", "401", "503"},
        (entry, "get"): {"200", "401", "404", "503"},
        (f"{entry}/replay", "post"): {"202", "401", "404", "409", "422", "503"},
        (entry, "delete"): {"204", "401", "404", "503"},
    }
    for (path, method), codes in declared.items():
        operation = schema[served(f"/tasks{path}")][method]
        assert codes <= set(operation["responses"]), (path, operation["responses"])

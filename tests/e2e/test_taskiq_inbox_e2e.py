"""The failed-task inbox of a scaffolded taskiq project, against real processes.

A private redis-server (the stream broker, status and inbox), a real `taskiq worker`
and uvicorn from .venvs/taskiq serving the `layered` example, and an SMTP sink that
refuses every recipient for good (550 to RCPT) until the test fixes it. A refused
email lands in the inbox with its reason, its address never shown (over HTTP and
through `bgtasks failed list`); once the sink takes mail, a replay over HTTP delivers
it; a second replay is refused (409) unless forced; `bgtasks failed replay` does the
same outside the app (starting and stopping the broker itself), and a replay that
fails again is linked to the entry it replays; discard removes it. Entries pushed raw
onto the stream are dropped as poison, kept with their reason and bytes and
acknowledged, while the worker goes on serving. With BGTASKS_FAILED_MAX_ENTRIES=2 a
third failure drops the oldest and `dropped` counts it. With Redis gone, 503.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bgtasks_gen.inbox import InboxRequest, run_inbox
from tests.e2e.harness import (
    AUTH,
    REFUSED,
    Proc,
    RefusingSink,
    RestartableRedis,
    refusing_sink,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

BROKER = "app.tasks.taskiq_app:broker"
TASKS = "app.tasks.taskiq_tasks"
STREAM = "bgtasks:taskiq"  # the generated broker's stream and consumer group
GROUP = "bgtasks"
RECIPIENT = "grace.hopper@example.com"
WAIT = 30.0


@dataclass
class Stack:
    python: Path
    project: Path
    logs: Path
    env: dict[str, str]
    redis: RestartableRedis
    sink: RefusingSink
    base: str
    worker: Proc

    def start_worker(self, name: str, **extra: str) -> Proc:
        taskiq = self.python.parent / "taskiq"
        proc = start_process(
            [str(taskiq), "worker", BROKER, TASKS, "--workers", "1"],
            cwd=self.project,
            log_path=self.logs / f"{name}.log",
            env={**self.env, **extra},
        )
        wait_until(
            lambda: "Listening started" in proc.log() or not proc.alive(),
            30,
            f"taskiq {name} starting",
        )
        assert proc.alive(), proc.log()
        return proc

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}/tasks{path}", headers=AUTH, timeout=15, **kwargs)

    def failed_email(self) -> str:
        """Queue an email while the sink refuses it; its task id, once it is kept."""
        payload = {"to": RECIPIENT, "subject": "Your code", "body": "It is 1234"}
        response = self.call("POST", "/send-email", json=payload)
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        self.wait_entry(task_id)
        return task_id

    def wait_entry(self, entry_id: str) -> dict[str, Any]:
        def kept() -> dict[str, Any] | None:
            response = self.call("GET", f"/failed/{entry_id}")
            return response.json() if response.status_code == 200 else None

        found: dict[str, Any] = wait_until(
            kept, WAIT, f"entry {entry_id} in the inbox\n{self.worker.log()[-3000:]}"
        )
        return found

    def listing(self, **params: Any) -> dict[str, Any]:
        response = self.call("GET", "/failed", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_mail(self, count: int) -> None:
        wait_until(
            lambda: len(self.sink.messages) >= count,
            WAIT,
            f"{count} emails at the sink\n{self.worker.log()[-3000:]}",
        )

    def inbox(self, request: InboxRequest) -> dict[str, Any]:
        return run_inbox(self.project, request, python=self.python)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = runner_python("taskiq")
    root = tmp_path_factory.mktemp("taskiq-inbox-e2e")
    project = scaffold("layered", root, "--runner", "taskiq")
    logs = root / "logs"
    logs.mkdir()
    with (
        restartable_redis(root) as server,
        refusing_sink() as sink,
        pytest.MonkeyPatch.context() as patch,
    ):
        env = {
            "REDIS_URL": f"{server.url}/0",
            "TASKIQ_BROKER_URL": f"{server.url}/0",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "PYTHONPATH": str(project),
        }
        for name, value in env.items():  # `bgtasks failed` reads the environment
            patch.setenv(name, value)
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(api):
            stack = Stack(python, project, logs, env, server, sink, base, api)
            stack.worker = stack.start_worker("worker-1")
            try:
                yield stack
            finally:
                stack.worker.stop()


def test_a_refused_email_is_kept_with_its_reason_never_its_address(stack: Stack) -> None:
    task_id = stack.failed_email()
    entry = stack.wait_entry(task_id)
    assert (entry["kind"], entry["task"], entry["attempts"]) == ("failed", "send_email", 1)
    assert entry["error_type"] == "EmailNotSent" and "550" in entry["error"]
    assert "EmailNotSent" in entry["traceback"]
    hidden = "<hidden: personal data>"
    assert entry["kwargs"] == {name: hidden for name in ("to", "subject", "body")}
    listed = stack.call("GET", "/failed", params={"task": "send_email"})
    assert listed.status_code == 200 and task_id in listed.text
    cli = stack.inbox(InboxRequest("list"))
    assert task_id in [found["id"] for found in cli["entries"]]
    for text in (listed.text, repr(cli), stack.worker.log()):
        assert RECIPIENT not in text and "1234" not in text
    status = stack.call("GET", f"/status/{task_id}").json()
    assert status["status"] == "complete" and status["error"] == "failed"


def test_a_replay_delivers_once_then_only_when_forced(stack: Stack) -> None:
    (entry,) = [e for e in stack.listing(task="send_email")["entries"]]
    entry_id = entry["id"]
    stack.sink.rcpt_reply = "250 OK"  # the mailbox exists now
    try:
        first = stack.call("POST", f"/failed/{entry_id}/replay", json={})
        assert first.status_code == 202, first.text
        body = first.json()
        assert body["entry_id"] == entry_id and body["task_id"] != entry_id
        assert body["status_url"] == f"/tasks/status/{body['task_id']}"
        stack.wait_mail(1)
        assert stack.sink.messages[0]["To"] == RECIPIENT

        def succeeded() -> bool:
            answer = httpx.get(stack.base + body["status_url"], headers=AUTH, timeout=10)
            return answer.json().get("success") is True

        wait_until(succeeded, WAIT, "the replayed task's status: complete, success")

        again = stack.call("POST", f"/failed/{entry_id}/replay", json={})
        assert again.status_code == 409, again.text
        assert again.json()["detail"]["replayed_as"] == body["task_id"]
        forced = stack.call("POST", f"/failed/{entry_id}/replay", params={"force": True}, json={})
        assert forced.status_code == 202, forced.text
        stack.wait_mail(2)

        # outside the app: `bgtasks failed replay` starts and stops the broker itself
        refused = stack.inbox(InboxRequest("replay", entry_id))
        assert refused == {"error": "already_replayed", "replayed_as": forced.json()["task_id"]}
        replayed = stack.inbox(InboxRequest("replay", entry_id, force=True))
        assert replayed.get("replayed") == entry_id, replayed
        stack.wait_mail(3)
    finally:
        stack.sink.rcpt_reply = REFUSED
    # a replay that fails again is an entry of its own, linked to the one it replays
    failing = stack.inbox(InboxRequest("replay", entry_id, force=True))
    assert stack.wait_entry(failing["task_id"])["replay_of"] == entry_id
    assert len(stack.sink.messages) == 3

    for gone in (entry_id, failing["task_id"]):
        assert stack.call("DELETE", f"/failed/{gone}").status_code == 204
        assert stack.call("GET", f"/failed/{gone}").status_code == 404
        assert stack.call("DELETE", f"/failed/{gone}").status_code == 404
    assert stack.inbox(InboxRequest("show", entry_id)) == {"error": "not_found"}
    unknown = stack.call("POST", f"/failed/{entry_id}/replay", json={})
    assert unknown.status_code == 404


def test_poison_is_kept_with_its_reason_and_the_worker_goes_on(stack: Stack) -> None:
    garbage = b"\xff not json, not a task"
    client = redis.Redis.from_url(f"{stack.redis.url}/0")
    try:
        client.xadd(STREAM, {"data": garbage})
        client.xadd(STREAM, {"something": "else"})  # no task message in it at all
        encoded = base64.b64encode(garbage).decode()

        def both() -> list[dict[str, Any]] | None:
            entries = stack.listing()["entries"]
            found = [e for e in entries if e["kind"] == "poison"]
            return found if len(found) == 2 else None

        found = wait_until(both, WAIT, f"two poison entries\n{stack.worker.log()[-3000:]}")
        by_raw = {entry["raw"]: entry for entry in found}
        unparsed = by_raw[encoded]
        assert unparsed["error"].startswith("not a task message")
        assert unparsed["raw_size"] == len(garbage) and unparsed["attempts"] == 1
        (no_data,) = [e for e in found if e["raw"] != encoded]
        assert no_data["error"] == "a stream entry without a data field"
        assert b"something" in base64.b64decode(no_data["raw"])
        for entry in found:
            replay = stack.call("POST", f"/failed/{entry['id']}/replay", json={})
            assert replay.status_code == 422, replay.text  # nothing to run
            assert stack.call("DELETE", f"/failed/{entry['id']}").status_code == 204

        # the worker serves on, and acknowledged both: nothing of them is pending
        response = stack.call("POST", "/process-data", json={"data_id": 9, "values": [4]})
        task_id = response.json()["task_id"]

        def complete() -> bool:
            return bool(stack.call("GET", f"/status/{task_id}").json()["success"])

        wait_until(complete, WAIT, f"process_data after poison\n{stack.worker.log()[-3000:]}")
        assert stack.worker.alive()
        pending: Any = client.xpending(STREAM, GROUP)
        assert pending["pending"] == 0
    finally:
        client.close()


def test_beyond_max_entries_the_oldest_goes_and_is_counted(stack: Stack) -> None:
    for entry in stack.listing()["entries"]:  # an inbox of its own for this test
        stack.call("DELETE", f"/failed/{entry['id']}")
    before = stack.listing()
    assert before["total"] == 0
    stack.worker.stop()
    stack.worker = stack.start_worker("worker-max-2", BGTASKS_FAILED_MAX_ENTRIES="2")
    first, second, third = (stack.failed_email() for _ in range(3))
    after = stack.listing()
    assert [entry["id"] for entry in after["entries"]] == [third, second]
    assert after["total"] == 2
    assert after["dropped"] == before["dropped"] + 1
    assert stack.call("GET", f"/failed/{first}").status_code == 404


def test_without_redis_the_inbox_answers_503(stack: Stack) -> None:
    stack.redis.stop()  # the last test: nothing needs it after this one
    response = stack.call("GET", "/failed")
    assert response.status_code == 503, response.text
    assert stack.call("DELETE", "/failed/anything").status_code == 503

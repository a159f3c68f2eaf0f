"""The failed-task inbox of a scaffolded Celery project, against real processes.

A private redis-server (broker and result backend), a real `celery worker` (prefork)
and uvicorn from .venvs/celery serving the `layered` example, and an SMTP sink that
refuses every recipient for good (550 to RCPT) until the test fixes it. A refused
email lands in the inbox with its reason, its address never shown (over HTTP and
through `bgtasks failed list`); once the sink takes mail, a replay delivers it; a
second replay is refused (409) unless forced; discard removes it. Entries pushed raw
onto the broker's queue are dropped as poison and kept with their reason and bytes,
while the worker goes on serving. A task added by `bgtasks add-task` (no retries)
whose pool process is killed is kept as lost. With BGTASKS_FAILED_MAX_ENTRIES=2, a
third failure drops the oldest, and `dropped` counts it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import uuid
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
    add_task,
    free_port,
    redis_server,
    refusing_sink,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

CELERY_APP = "app.tasks.celery_app"
SEND_EMAIL = "app.tasks.tasks.send_email"
RECIPIENT = "grace.hopper@example.com"
WAIT = 30.0


@dataclass
class Stack:
    python: Path
    project: Path
    env: dict[str, str]
    logs: Path
    sink: RefusingSink
    redis_url: str
    base: str = ""
    prefix: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}{self.prefix}{path}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url(path), headers=AUTH, params=params, timeout=10)

    def email(self, subject: str) -> str:
        payload = {"to": RECIPIENT, "subject": subject, "body": "From the inbox e2e."}
        response = httpx.post(self.url("/send-email"), headers=AUTH, json=payload, timeout=10)
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def final(self, task_id: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            response = self.get(f"/status/{task_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body if body["status"] == "complete" else None

        result: dict[str, Any] = wait_until(finished, WAIT, f"task {task_id} to finish")
        return result

    def entry(self, entry_id: str) -> dict[str, Any]:
        """The inbox's entry once the worker recorded it (Celery stores FAILURE first,
        then signals the failure)."""

        def kept() -> dict[str, Any] | None:
            response = self.get(f"/failed/{entry_id}")
            assert response.status_code in (200, 404), response.text
            return dict(response.json()) if response.status_code == 200 else None

        found: dict[str, Any] = wait_until(kept, WAIT, f"{entry_id} in the inbox")
        return found

    def listing(self, **params: Any) -> dict[str, Any]:
        response = self.get("/failed", limit=100, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def replay(self, entry_id: str, force: bool = False) -> httpx.Response:
        url = self.url(f"/failed/{entry_id}/replay")
        params = {"force": "true"} if force else {}
        return httpx.post(url, headers=AUTH, params=params, timeout=10)

    def worker(self, name: str, **env: str) -> Proc:
        proc = start_process(
            [
                str(self.python),
                *("-m", "celery", "-A", CELERY_APP, "worker", "-P", "prefork", "-c", "1"),
                *("--loglevel=info", "-n", f"inbox-{name}-{uuid.uuid4().hex[:6]}@%h"),
                *("--without-mingle", "--without-gossip"),
            ],
            cwd=self.project,
            log_path=self.logs / f"worker-{name}.log",
            env={**self.env, **env},
        )

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"celery worker exited:\n{proc.log()}")
            return " ready." in proc.log()

        try:
            wait_until(ready, WAIT, f"celery worker {name} ready")
        except BaseException:
            proc.stop()
            raise
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = runner_python("celery")
    workdir = tmp_path_factory.mktemp("celery-inbox")
    project = scaffold("layered", workdir, "--runner", "celery")
    # an added task, no retries, its body made to take a while: it is killed mid-run
    add_task(project, "slow_job", "--arg", "seconds:int", "--retries", "0")
    tasks = project / "app" / "tasks" / "tasks.py"
    attempt = 'logger.info("slow_job: attempt %d", self.request.retries + 1)\n'
    source = tasks.read_text()
    assert source.count(attempt) == 1, source
    tasks.write_text(source.replace(attempt, attempt + "    time.sleep(seconds)\n"))
    logs = workdir / "logs"
    logs.mkdir()
    with redis_server(workdir) as url, refusing_sink() as sink:
        env = {
            "CELERY_BROKER_URL": f"{url}/0",
            "CELERY_RESULT_BACKEND": f"{url}/1",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_STARTTLS": "false",
            "SMTP_USER": "",
            "EMAIL_FROM": "shop@example.com",
        }
        stack = Stack(python, project, env, logs, sink, url)
        server, stack.base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(server):
            paths = httpx.get(f"{stack.base}/openapi.json", timeout=10).json()["paths"]
            (listing,) = [p for p in paths if p.endswith("/failed")]
            stack.prefix = listing.removesuffix("/failed")
            yield stack


def test_a_refused_email_is_kept_replayed_and_discarded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = stack.worker("main")
    with running(worker):
        subject = f"Refused first {uuid.uuid4()}"
        task_id = stack.email(subject)
        assert stack.final(task_id)["success"] is False
        found = stack.entry(task_id)
        # refused for good: not retried, so its first try was its last
        assert (found["kind"], found["task"], found["attempts"]) == ("failed", SEND_EMAIL, 1)
        assert found["error_type"] == "EmailRejected"
        assert "550" in found["error"], found
        assert found["worker"] and found["traceback"]

        # the listing, over HTTP and through `bgtasks failed list`: never the address
        listing = stack.get("/failed", task=SEND_EMAIL)
        assert listing.status_code == 200, listing.text
        assert task_id in [item["id"] for item in listing.json()["entries"]]
        for key, value in stack.env.items():
            monkeypatch.setenv(key, value)
        answer = run_inbox(stack.project, InboxRequest("list"), python=stack.python)
        assert task_id in [item["id"] for item in answer["entries"]], answer
        shown = run_inbox(stack.project, InboxRequest("show", task_id), python=stack.python)
        for text in (listing.text, json.dumps(answer), json.dumps(shown), str(found)):
            assert RECIPIENT not in text and "grace" not in text

        # the sink takes mail again: the replay delivers it, under a new task id
        stack.sink.rcpt_reply = "250 OK"
        response = stack.replay(task_id)
        assert response.status_code == 202, response.text
        replayed = response.json()
        assert replayed["entry_id"] == task_id and replayed["task_id"] != task_id
        assert replayed["status_url"] == f"{stack.prefix}/status/{replayed['task_id']}"
        assert stack.final(replayed["task_id"])["success"] is True, worker.log()
        (message,) = [m for m in stack.sink.messages if m["Subject"] == subject]
        assert message["To"] == RECIPIENT

        # once: again only when forced
        again = stack.replay(task_id)
        assert again.status_code == 409, again.text
        assert again.json()["detail"]["replayed_as"] == replayed["task_id"]
        forced = stack.replay(task_id, force=True)
        assert forced.status_code == 202, forced.text
        assert stack.final(forced.json()["task_id"])["success"] is True
        assert [m["Subject"] for m in stack.sink.messages].count(subject) == 2
        assert stack.entry(task_id)["replayed_as"] == forced.json()["task_id"]
        # the same through `bgtasks failed replay`, in the project's own interpreter
        cli = InboxRequest("replay", task_id)
        refused = run_inbox(stack.project, cli, python=stack.python)
        assert refused == {
            "error": "already_replayed",
            "replayed_as": forced.json()["task_id"],
        }
        cli = InboxRequest("replay", task_id, force=True)
        queued = run_inbox(stack.project, cli, python=stack.python)
        assert queued.get("replayed") == task_id, queued
        assert stack.final(queued["task_id"])["success"] is True
        assert [m["Subject"] for m in stack.sink.messages].count(subject) == 3

        # discarded: gone from the entry, the listing and the CLI
        deleted = httpx.delete(stack.url(f"/failed/{task_id}"), headers=AUTH, timeout=10)
        assert deleted.status_code == 204, deleted.text
        assert stack.get(f"/failed/{task_id}").status_code == 404
        assert task_id not in [item["id"] for item in stack.listing()["entries"]]
        gone = run_inbox(stack.project, InboxRequest("show", task_id), python=stack.python)
        assert gone == {"error": "not_found"}, gone


def _envelope(task: str, task_id: str, body: Any) -> bytes:
    """A kombu message as the Redis transport keeps it, around `body` (JSON)."""
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def test_poison_is_kept_and_the_worker_goes_on(stack: Stack) -> None:
    broker = redis.Redis.from_url(f"{stack.redis_url}/0")
    worker = stack.worker("poison")
    with running(worker):
        not_a_message = b"\x00\xffnot a kombu message {" + uuid.uuid4().hex.encode()
        bad_body_id = str(uuid.uuid4())
        # a real task's message whose body is not [args, kwargs, embed]
        bad_body = _envelope("app.tasks.tasks.process_order", bad_body_id, "not a list")
        broker.lpush("celery", not_a_message, bad_body)

        found = stack.entry(bad_body_id)
        assert (found["kind"], found["task"]) == ("poison", "app.tasks.tasks.process_order")
        assert found["error"] == "its body is not [args, kwargs, embed]", found
        assert found["raw_size"] > 0 and base64.b64decode(found["raw"])

        def raw_entry() -> dict[str, Any] | None:
            for item in stack.listing()["entries"]:
                if item["kind"] == "poison" and item["id"].startswith("poison-"):
                    return dict(item)
            return None

        raw = wait_until(raw_entry, WAIT, "the raw entry in the inbox")
        assert "not a message" in raw["error"], raw
        assert base64.b64decode(raw["raw"]) == not_a_message
        assert raw["raw_size"] == len(not_a_message)
        # nothing to run
        refused = stack.replay(bad_body_id)
        assert refused.status_code == 422, refused.text

        # the worker still serves: a task queued after the poison completes
        response = httpx.post(
            stack.url("/process-order"), headers=AUTH, json={"order_id": 5}, timeout=10
        )
        assert response.status_code == 202, response.text
        assert stack.final(response.json()["task_id"])["success"] is True
        assert worker.alive()
    broker.close()


def _pool_children(pid: int) -> list[int]:
    """The child processes of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_an_added_task_lost_with_its_worker_is_kept(stack: Stack) -> None:
    worker = stack.worker("lost")
    with running(worker):
        response = httpx.post(
            stack.url("/slow-job"), headers=AUTH, json={"seconds": 60}, timeout=10
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        def started() -> bool:
            return bool(stack.get(f"/status/{task_id}").json()["status"] == "in_progress")

        wait_until(started, WAIT, "slow_job to start")
        (child,) = _pool_children(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
        found = stack.entry(task_id)
        assert (found["kind"], found["task"]) == ("lost", "app.tasks.tasks.slow_job")
        assert found["error_type"] == "WorkerLostError", found
        assert found["kwargs"] == {"seconds": 60} and found["attempts"] == 1
        assert stack.final(task_id)["success"] is False
        assert worker.alive()


def test_beyond_the_maximum_the_oldest_goes_and_is_counted(stack: Stack) -> None:
    for item in stack.listing()["entries"]:
        httpx.delete(stack.url(f"/failed/{item['id']}"), headers=AUTH, timeout=10)
    before = stack.listing()
    assert before["total"] == 0, before
    stack.sink.rcpt_reply = REFUSED
    worker = stack.worker("limited", BGTASKS_FAILED_MAX_ENTRIES="2")
    with running(worker):
        ids = []
        for number in range(3):
            ids.append(stack.email(f"Refused {number} {uuid.uuid4()}"))
            stack.entry(ids[-1])  # recorded before the next one fails
            if number == 1:
                kept = stack.listing()
                assert (kept["total"], kept["dropped"]) == (2, before["dropped"])
    after = stack.listing()
    assert after["total"] == 2, after
    assert [item["id"] for item in after["entries"]] == [ids[2], ids[1]]
    assert after["dropped"] == before["dropped"] + 1, after
    assert stack.get(f"/failed/{ids[0]}").status_code == 404


def test_an_unreachable_redis_is_a_503(stack: Stack) -> None:
    env = {**stack.env, "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{free_port()}/1"}
    log = stack.logs / "uvicorn-no-redis.log"
    server, base = serve_app(stack.python, stack.project, "app.main:app", log, env)
    with running(server):
        inbox = f"{base}{stack.prefix}/failed"
        answers = [
            httpx.get(inbox, headers=AUTH, timeout=10),
            httpx.get(f"{inbox}/{uuid.uuid4()}", headers=AUTH, timeout=10),
            httpx.post(f"{inbox}/{uuid.uuid4()}/replay", headers=AUTH, timeout=10),
            httpx.delete(f"{inbox}/{uuid.uuid4()}", headers=AUTH, timeout=10),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"detail": "Task queue unavailable, try again later"}

"""arq's failed-task inbox end to end, against real processes.

A private redis-server, the real `arq` worker and uvicorn from .venvs/arq serving the
scaffolded `layered` example, and an SMTP sink (aiosmtpd, in this process) that can be
told to refuse every recipient for good (550). The module shares one stack; tests run
in file order: a refused email lands in the inbox, is listed without its recipient
(over HTTP and through `bgtasks failed list`), replayed once the sink accepts again,
refused a second replay unless forced, and discarded; poison pushed raw onto the queue
lands with its reason while the worker goes on; a worker with
BGTASKS_FAILED_MAX_ENTRIES=2 keeps the newest two and counts the one it dropped.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgtasks_gen.inbox import InboxRequest, run_inbox
from tests.e2e.harness import (
    AUTH,
    Proc,
    SmtpSink,
    free_port,
    missing,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

RECIPIENT = "private.person@example.com"


@dataclass
class RefusingSink(SmtpSink):
    """The harness' sink, answering 550 to every recipient while `refuse` is set."""

    refuse: bool = False

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@contextlib.contextmanager
def refusing_sink() -> Iterator[RefusingSink]:
    from aiosmtpd.controller import Controller

    sink = RefusingSink(port=free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class Stack:
    python: Path
    project: Path
    logs: Path
    redis_port: int
    env: dict[str, str]
    sink: RefusingSink
    base: str
    worker: Proc

    def start_worker(self, name: str, **env: str) -> Proc:
        proc = start_process(
            [str(self.python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"],
            cwd=self.project,
            log_path=self.logs / f"{name}.log",
            env={**self.env, **env},
        )
        wait_until(
            lambda: "Starting worker" in proc.log() or not proc.alive(),
            20,
            f"arq worker {name} starting",
        )
        assert proc.alive(), proc.log()
        return proc

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base}/tasks{path}"
        return httpx.request(method, url, headers=AUTH, timeout=30, **kwargs)

    def email(self, subject: str) -> str:
        payload = {"to": RECIPIENT, "subject": subject, "body": "Hello"}
        response = self.request("POST", "/send-email", json=payload)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["task_id"]
        return job_id

    def entry(self, entry_id: str, timeout: float = 20) -> dict[str, Any]:
        """The entry once it is kept (bounded wait)."""

        def kept() -> dict[str, Any] | None:
            response = self.request("GET", f"/failed/{entry_id}")
            return response.json() if response.status_code == 200 else None

        found: dict[str, Any] = wait_until(
            kept, timeout, f"entry {entry_id}\n{self.worker.log()[-3000:]}"
        )
        return found

    def listing(self, **params: Any) -> dict[str, Any]:
        response = self.request("GET", "/failed", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    def redis_cli(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), *args],
            input=stdin,
            capture_output=True,
            timeout=10,
            check=True,
        )
        return done.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("redis-cli") is None:
        missing("redis-cli is not installed")
    python = runner_python("arq")
    root = tmp_path_factory.mktemp("arq-inbox")
    project = scaffold("layered", root, "--runner", "arq")
    logs = root / "logs"
    logs.mkdir()
    with redis_server(root) as redis_url, refusing_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "shop@example.com",
            "ARQ_JOB_TIMEOUT": "5",
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        port = int(redis_url.rsplit(":", 1)[1])
        with running(api):
            built = Stack(python, project, logs, port, env, sink, base, api)
            built.worker = built.start_worker("worker-1")
            try:
                yield built
            finally:
                built.worker.stop()


@pytest.fixture(scope="module")
def refused(stack: Stack) -> str:
    """The job id of an email the sink refused for good."""
    stack.sink.refuse = True
    try:
        job_id = stack.email("Refused")
        stack.entry(job_id)
    finally:
        stack.sink.refuse = False
    return job_id


def test_a_refused_email_lands_with_its_reason(stack: Stack, refused: str) -> None:
    entry = stack.entry(refused)
    assert (entry["kind"], entry["task"]) == ("failed", "send_email")
    # 550 is never retried: the first try was the last
    assert entry["error_type"] == "EmailNotSent" and "550" in entry["error"]
    assert entry["attempts"] == 1 and entry["traceback"]
    assert RECIPIENT not in str(entry)
    status = stack.request("GET", f"/status/{refused}").json()
    assert status["success"] is False and status["error"] == "failed"


def test_the_listing_never_shows_the_recipient(
    stack: Stack, refused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = stack.listing(task="send_email")
    assert refused in [entry["id"] for entry in page["entries"]]
    assert RECIPIENT not in str(page)
    # the CLI's way: the project's own interpreter, its settings from the environment
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    answer = run_inbox(stack.project, InboxRequest("list"), python=stack.python)
    assert refused in [entry["id"] for entry in answer["entries"]], answer
    assert RECIPIENT not in str(answer)


def test_replay_delivers_once_then_needs_force(stack: Stack, refused: str) -> None:
    before = len(stack.sink.messages)
    replayed = stack.request("POST", f"/failed/{refused}/replay")
    assert replayed.status_code == 202, replayed.text
    body = replayed.json()
    assert body["entry_id"] == refused and body["task_id"] != refused
    assert body["status_url"].endswith(f"/tasks/status/{body['task_id']}")
    wait_until(
        lambda: len(stack.sink.messages) > before,
        20,
        f"the replayed email\n{stack.worker.log()[-3000:]}",
    )
    assert stack.sink.messages[-1]["To"] == RECIPIENT
    assert stack.entry(refused)["replayed_as"] == body["task_id"]

    again = stack.request("POST", f"/failed/{refused}/replay")
    assert again.status_code == 409, again.text
    assert again.json()["detail"]["replayed_as"] == body["task_id"]
    forced = stack.request("POST", f"/failed/{refused}/replay", params={"force": "true"})
    assert forced.status_code == 202, forced.text
    assert forced.json()["task_id"] not in (refused, body["task_id"])
    wait_until(lambda: len(stack.sink.messages) > before + 1, 20, "the forced replay")


def test_discard_removes_the_entry(stack: Stack, refused: str) -> None:
    assert stack.request("DELETE", f"/failed/{refused}").status_code == 204
    assert stack.request("GET", f"/failed/{refused}").status_code == 404
    assert stack.request("DELETE", f"/failed/{refused}").status_code == 404
    assert refused not in [entry["id"] for entry in stack.listing()["entries"]]


def test_poison_lands_with_its_reason_and_the_worker_goes_on(stack: Stack) -> None:
    # a queue entry whose id is not UTF-8, and a job record that is not JSON
    member = b"\xff\xfe-" + uuid.uuid4().hex.encode()
    stack.redis_cli("-x", "ZADD", "arq:queue", "1", stdin=member)
    record_id = f"poison-{uuid.uuid4().hex}"
    garbage = b"\x80\x04 not a job record"
    stack.redis_cli("-x", "SET", f"arq:job:{record_id}", stdin=garbage)
    stack.redis_cli("ZADD", "arq:queue", "1", record_id)

    refused = stack.entry(record_id)
    assert refused["kind"] == "poison" and "not JSON" in refused["error"]
    assert base64.b64decode(refused["raw"]) == garbage
    assert refused["raw_size"] == len(garbage)
    raw = base64.b64encode(member).decode()

    def dropped_entry() -> dict[str, Any] | None:
        found = [e for e in stack.listing()["entries"] if e.get("raw") == raw]
        return found[0] if found else None

    dropped = wait_until(dropped_entry, 20, f"the dropped entry\n{stack.worker.log()}")
    assert dropped["kind"] == "poison" and "not UTF-8" in dropped["error"]
    # nothing to run: never replayed
    replay = stack.request("POST", f"/failed/{dropped['id']}/replay")
    assert replay.status_code == 422, replay.text

    assert stack.worker.alive(), stack.worker.log()
    response = stack.request("POST", "/process-data", json={"data_id": 1, "values": [2]})
    assert response.status_code == 202, response.text
    job_id = response.json()["task_id"]

    def complete() -> bool:
        status = stack.request("GET", f"/status/{job_id}").json()
        return bool(status.get("success"))

    wait_until(complete, 20, f"a job after the poison\n{stack.worker.log()[-3000:]}")
    for entry_id in (record_id, dropped["id"]):
        assert stack.request("DELETE", f"/failed/{entry_id}").status_code == 204


def test_beyond_max_entries_the_oldest_is_dropped_and_counted(stack: Stack) -> None:
    stack.worker.stop()
    stack.worker = stack.start_worker("worker-2", BGTASKS_FAILED_MAX_ENTRIES="2")
    for entry in stack.listing()["entries"]:  # start from an empty inbox
        stack.request("DELETE", f"/failed/{entry['id']}")
    dropped_before = stack.listing()["dropped"]
    stack.sink.refuse = True
    try:
        job_ids = []
        for number in range(3):
            job_ids.append(stack.email(f"Refused {number}"))
            stack.entry(job_ids[-1])  # one after the other: their order is known
    finally:
        stack.sink.refuse = False
    page = stack.listing()
    assert page["total"] == 2, page
    assert [entry["id"] for entry in page["entries"]] == job_ids[:0:-1]
    assert page["dropped"] == dropped_before + 1
    assert stack.request("GET", f"/failed/{job_ids[0]}").status_code == 404

"""`--with sentry` against real processes: a failed task reaches Sentry, its arguments never.

For each runner the `layered` example is scaffolded with `--with sentry` and served by
uvicorn beside a real worker (builtin: the web process runs the task itself), with the
DSN pointing at a small HTTP receiver in this process standing in for Sentry (it keeps
every envelope's bytes, gzip or brotli undone). SMTP points at a closed port.

- A task that raises (added with `bgtasks add-task explode --arg note:str`, its body
  made to raise with its argument in the message; builtin: the email job, whose SMTP
  fails) gives an event tagged with the task's name and id.
- An email queued first, whose SMTP connection fails, leaves its recipient, subject and
  body nowhere in the bytes received, nor does the private argument of the failed task
  (which was in its exception's message).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.dashboard_stack import _commands, _env
from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    Proc,
    add_task,
    free_port,
    port_open,
    refusing_sink,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

WAIT = 45.0
RECIPIENT = "ada.lovelace@example.com"
SUBJECT = "Quarterly numbers for Ada"
BODY = "The private text of the message, never reported."
# the failing task's argument: an address and a phrase, both in its exception's message
NOTE = "grace.hopper@example.org private-note-7731"
PRIVATE = (RECIPIENT, SUBJECT, BODY, "grace.hopper@example.org", "private-note-7731")


@dataclass
class Receiver:
    """Sentry's envelope endpoint, in this process: every request body, decoded."""

    port: int
    bodies: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(self.bodies)

    def events(self) -> list[dict[str, Any]]:
        """The error events of every envelope received so far."""
        found = []
        for line in self.raw().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and ("exception" in item or "logentry" in item):
                    found.append(item)
        return found


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body


@contextlib.contextmanager
def sentry_receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
            size = int(self.headers.get("content-length") or 0)
            body = _decoded(self.rfile.read(size), self.headers.get("content-encoding", ""))
            with receiver.lock:
                receiver.bodies.append(body)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ReportingStack:
    runner: str
    web: Proc
    worker: Proc | None
    base: str
    paths: list[str]
    receiver: Receiver

    def url(self, suffix: str) -> str:
        (path,) = [path for path in self.paths if path.endswith(suffix)]
        return f"{self.base}{path}"

    def logs(self) -> str:
        return self.web.log() + (self.worker.log() if self.worker else "")


def _make_explode_fail(project: Path, runner: str) -> None:
    """The added task's body raises, quoting its argument."""
    module = {"celery": "tasks.py", "arq": "arq_tasks.py", "taskiq": "taskiq_tasks.py"}[runner]
    path = project / "app" / "tasks" / module
    text = path.read_text()
    start = text.index("def explode(")
    body = re.compile(r"    return \{\n        \"note\": note,\n    \}\n")
    found = body.search(text, start)
    assert found is not None, text[start:]
    failing = '    raise RuntimeError(f"explode could not handle {note}")\n'
    path.write_text(text[: found.start()] + failing + text[found.end() :])


def _serve(python: Path, project: Path, logs: Path, env: dict[str, str]) -> tuple[Proc, str]:
    port = free_port()
    command = [str(python), "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    proc = start_process(
        command, project, logs / "web.log", {"BGTASKS_API_TOKEN": API_TOKEN, **env}
    )

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"uvicorn exited:\n{proc.log()}")
        return port_open("127.0.0.1", port)

    wait_until(up, 30, "uvicorn serving the app")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=["celery", "arq", "taskiq", "builtin"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReportingStack]:
    runner = str(request.param)
    # builtin runs in FastAPI alone: any runner's environment has it and the SDK
    python = runner_python("taskiq" if runner == "builtin" else runner)
    root = tmp_path_factory.mktemp(f"sentry-{runner}")
    project = scaffold("layered", root, "--runner", runner, "--with", "sentry")
    assert (project / "app" / "tasks" / "error_reporting.py").is_file()
    if runner != "builtin":
        add_task(project, "explode", "--arg", "note:str")
        _make_explode_fail(project, runner)
    logs = root / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(sentry_receiver())
        sink = stack.enter_context(refusing_sink())
        closed_port = free_port()  # nothing listens: every SMTP connection fails
        env = {"PYTHONPATH": str(project), "SENTRY_DSN": receiver.dsn}
        env["SENTRY_ENVIRONMENT"] = "e2e"
        worker = None
        if runner == "builtin":
            env.update(_env("arq", "redis://unused", sink))
        else:
            redis = stack.enter_context(restartable_redis(root))
            env.update(_env(runner, redis.url, sink))
            env["SMTP_PORT"] = str(closed_port)
            command = _commands(runner, python, logs)["worker"]
            worker = start_process(command, project, logs / "worker.log", env)
        env["SMTP_PORT"] = str(closed_port)
        web, base = _serve(python, project, logs, env)
        stack.enter_context(running(*(p for p in (web, worker) if p is not None)))
        paths = list(httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"])
        yield ReportingStack(runner, web, worker, base, paths, receiver)


def _post(stack: ReportingStack, suffix: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(stack.url(suffix), headers=AUTH, json=body, timeout=15)
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


def _tagged(stack: ReportingStack, task: str) -> list[dict[str, Any]]:
    return [
        event
        for event in stack.receiver.events()
        if str(dict(event.get("tags") or {}).get("task_name", "")).endswith(task)
    ]


def test_a_failed_task_is_reported_tagged_and_its_arguments_are_not(
    stack: ReportingStack,
) -> None:
    email = {"to": RECIPIENT, "subject": SUBJECT, "body": BODY}
    try:
        if stack.runner == "builtin":
            # the email job itself fails (SMTP refuses the connection), after the response
            _post(stack, "/send-email", email)
            (event, *_) = wait_until(
                lambda: _tagged(stack, "send_email"), WAIT, "the failed email job's event"
            )
            assert re.fullmatch(r"[0-9a-f]{32}", event["tags"]["task_id"]), event["tags"]
        else:
            queued = _post(stack, "/send-email", email)
            status_url = str(httpx.URL(stack.base).join(queued["status_url"]))

            def attempted() -> bool:
                answer = httpx.get(status_url, headers=AUTH, timeout=10).json()
                return answer["status"] in ("retrying", "complete")

            # its SMTP connection failed at least once before the failing task runs
            wait_until(attempted, WAIT, "the email task's first attempt")
            task_id = _post(stack, "/explode", {"note": NOTE})["task_id"]
            (event, *_) = wait_until(
                lambda: _tagged(stack, "explode"), WAIT, "the failed task's event"
            )
            assert event["tags"]["task_id"] == task_id, event["tags"]
            assert "RuntimeError" in json.dumps(event["exception"])
            # the scrubbed message still says what happened
            assert "explode could not handle" in json.dumps(event["exception"])
    except BaseException:
        print(stack.logs()[-6000:], file=sys.stderr)
        raise
    assert event["tags"]["process"] == ("web" if stack.runner == "builtin" else "worker")
    assert event.get("environment") == "e2e"  # SENTRY_ENVIRONMENT, read by sentry-sdk
    assert "extra" not in event
    raw = stack.receiver.raw()
    for private in PRIVATE:
        assert private.encode() not in raw, f"{private!r} was sent to Sentry"
    if stack.runner != "builtin":
        # the failed task's message quoted its argument: replaced, not dropped
        assert b"explode could not handle [private]" in raw, "the scrubber replaced nothing"

"""Real processes for the end-to-end suite: redis-server, an SMTP sink, uvicorn, workers.

Every wait is bounded. A service that is missing skips the test outside CI and fails it
when CI=true, so CI can never go green by skipping.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
IN_CI = os.environ.get("CI", "").lower() == "true"
# The API token every web process serve_app starts accepts (BGTASKS_API_TOKEN), and the
# headers of a call that uses it: the generated routes refuse anonymous callers (401)
# and POSTs that are not JSON (415).
API_TOKEN = f"e2e-{secrets.token_hex(16)}"
AUTH = {"authorization": f"Bearer {API_TOKEN}", "content-type": "application/json"}


def missing(reason: str) -> None:
    """Skip locally, fail in CI: a service the suite needs must be there in CI."""
    if IN_CI:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.1
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - polled services may not be up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    pytest.fail(f"timed out after {timeout}s: {message}{detail}")


@dataclass
class Proc:
    """A child process whose output goes to a log file we can show on failure."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


def start_process(
    cmd: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None
) -> Proc:
    """Start `cmd` in its own process group (so stop() also ends its children)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    return Proc(popen, log_path)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed")
    port = free_port()
    proc = start_process(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        cwd=workdir,
        log_path=workdir / f"redis-{port}.log",
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 10, f"redis-server on port {port}")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.stop()


@dataclass
class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it receives.

    A slow server: it answers the end of a message's data after `delay` seconds, or
    closes the connection without answering when `hang_up` (the message is kept)."""

    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0
    hang_up: bool = False
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.original_content))
        if self.hang_up:
            server.transport.close()
            return "421 closing"  # never reaches the client
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 OK"


@contextlib.contextmanager
def smtp_sink(delay: float = 0.0, hang_up: bool = False) -> Iterator[SmtpSink]:
    from aiosmtpd.controller import Controller

    sink = SmtpSink(port=free_port(), delay=delay, hang_up=hang_up)
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# the reply of a mailbox that does not exist: a permanent refusal, never retried
REFUSED = "550 5.1.1 no such mailbox here"


@dataclass
class RefusingSink(SmtpSink):
    """The SMTP sink, answering RCPT with `rcpt_reply` (a 550 refuses the recipient for
    good; a 250 takes it)."""

    rcpt_reply: str = "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt_reply


@contextlib.contextmanager
def refusing_sink() -> Iterator[RefusingSink]:
    """A sink that refuses every recipient until its rcpt_reply is set to 250."""
    from aiosmtpd.controller import Controller

    sink = RefusingSink(port=free_port(), rcpt_reply=REFUSED)
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def runner_python(runner: str) -> Path:
    """The interpreter of the runner's own virtual environment (made by .ci/setup-venvs)."""
    override = os.environ.get(f"BGTASKS_{runner.upper()}_PYTHON")
    path = Path(override) if override else REPO / ".venvs" / runner / "bin" / "python"
    if not path.exists():
        missing(f"no {runner} environment at {path}: run `bash .ci/setup-venvs`")
    return path


def scaffold(example: str, dest: Path, *args: str) -> Path:
    """Copy examples/<example> to `dest` and run the real `bgtasks init` on it."""
    project = dest / example
    shutil.copytree(EXAMPLES / example, project)
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project


def bgtasks(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `bgtasks <args> -p project`; the caller judges its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args, "-p", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def add_task(project: Path, name: str, *args: str) -> None:
    """Run the real `bgtasks add-task` on a scaffolded project."""
    result = bgtasks(project, "add-task", name, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def serve_app(
    python: Path, project: Path, target: str, log_path: Path, env: dict[str, str]
) -> tuple[Proc, str]:
    """Serve `target` ("pkg.module:app") with uvicorn; returns the process and base URL.

    The app accepts API_TOKEN (send AUTH) unless `env` sets BGTASKS_API_TOKEN itself.
    """
    port = free_port()
    proc = start_process(
        [str(python), "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=project,
        log_path=log_path,
        env={"BGTASKS_API_TOKEN": API_TOKEN, **env},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"uvicorn exited:\n{proc.log()}")
        return port_open("127.0.0.1", port)

    wait_until(up, 30, f"uvicorn serving {target}")
    return proc, base


@dataclass
class RestartableRedis:
    """A private redis-server on a fixed port that a test can stop and start again.

    Append-only with an fsync per write, so what was queued before a stop is there
    after the start, as with a production Redis that persists.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed")
        self.proc = start_process(
            [
                str(binary),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(self.workdir)),
            ],
            cwd=self.workdir,
            log_path=self.workdir / f"redis-{self.port}-{time.monotonic_ns()}.log",
        )
        wait_until(
            lambda: port_open("127.0.0.1", self.port), 10, f"redis-server on port {self.port}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@contextlib.contextmanager
def restartable_redis(workdir: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Imports the app without serving it (nothing connects at import) and prints its routes.
_OPENAPI_ROUTES = """
import importlib, json, sys
module, _, name = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), name)
print(json.dumps(sorted([p, m] for p, ops in app.openapi()["paths"].items() for m in ops)))
"""


def openapi_routes(python: Path, project: Path, target: str) -> set[tuple[str, str]]:
    """The (path, method) pairs of `target`'s ("pkg.module:app") OpenAPI, as `python`
    imports it from `project`."""
    result = subprocess.run(
        [str(python), "-c", _OPENAPI_ROUTES, target],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "BGTASKS_API_TOKEN": API_TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {(path, method) for path, method in json.loads(result.stdout)}


def edit_task_body(path: Path, function: str, lines: list[str]) -> None:
    """Replace what follows `function`'s docstring, as a user editing the task would."""
    source = path.read_text()
    (node,) = (
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
    )
    first, end = node.body[1].lineno, node.body[-1].end_lineno
    assert end is not None
    text = source.splitlines(keepends=True)
    text[first - 1 : end] = [line + "\n" for line in lines]
    path.write_text("".join(text))

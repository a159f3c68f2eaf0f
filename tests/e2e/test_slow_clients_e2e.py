"""Slow clients against the web process as the generated Procfile starts it.

uvicorn has no timeout for a request's headers: a client that sends them a byte at a
time keeps its connection, and each one is a file descriptor. With the soft limit many
systems start processes with (1024), 1,100 such clients leave the server unable to
accept anyone else. The generated `web:` line raises the soft limit to the hard one
before it execs uvicorn, so the health route keeps answering within a second.

The web line runs exactly as written in the rendered Procfile (`sh -c`, as Procfile
runners do), with only $PORT set, under a soft limit of 1024.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    REPO,
    free_port,
    missing,
    port_open,
    redis_server,
    runner_python,
    scaffold,
    wait_until,
)

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 1100
SOFT_LIMIT = 1024
HEALTH = b"GET /health HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"


def _web_line(procfile: str) -> str:
    match = re.search(r"(?m)^web:(.*)$", procfile)
    assert match, procfile
    return match[1].strip()


def _own_descriptors(needed: int) -> None:
    """This process opens the slow clients: it needs a descriptor for each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        missing(f"the test needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, hard))


@contextlib.contextmanager
def _slow_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send part of a request line and then one header byte
    every second, never finishing their headers."""
    clients: list[socket.socket] = []
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for client in clients:
                with contextlib.suppress(OSError):
                    client.send(b"x")

    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        clients.append(client)
        with contextlib.suppress(OSError):
            client.send(b"GET /health HTTP/1.1\r\nHost: shop\r\nX-Slow: ")
    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        yield clients
    finally:
        stop.set()
        feeder.join(timeout=5)
        for client in clients:
            client.close()


def _health_seconds(port: int, timeout: float) -> float:
    """Seconds until GET /health answers 200 on a new connection; `timeout` + 1 when
    it does not answer in time."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(HEALTH)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return timeout + 1
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    return time.monotonic() - started


def _soft_open_files(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"(?m)^Max open files\s+(\d+)", limits)
    assert match, limits
    return int(match[1])


@contextlib.contextmanager
def _web(project: Path, command: str, env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """The web line under `sh -c` with a soft limit of 1024; yields (port, pid)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", command],
            cwd=project,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_low_soft_limit,
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the web process exited:\n{log.read_text()}")
            return port_open("127.0.0.1", port)

        wait_until(up, 30, "the web process")
        yield port, proc.pid
        assert proc.poll() is None, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


def test_health_answers_within_a_second_while_1100_slow_clients_hold_connections(
    tmp_path: Path,
) -> None:
    python = runner_python("celery")
    _own_descriptors(SLOW_CLIENTS + 200)
    project = scaffold("layered", tmp_path, "--runner", "celery")
    command = _web_line((project / "Procfile").read_text())
    assert "uvicorn " in command and "--limit-concurrency" in command, command
    with redis_server(tmp_path) as redis_url:
        env = {
            **os.environ,
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "CELERY_BROKER_URL": f"{redis_url}/0",
            "CELERY_RESULT_BACKEND": f"{redis_url}/1",
            "BGTASKS_API_TOKEN": "slow-clients-token",
        }
        with _web(project, command, env, tmp_path / "web.log") as (port, pid):
            # exec: the shell became uvicorn, and its soft limit is the hard one
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            assert _soft_open_files(pid) == hard
            assert _health_seconds(port, 5) < 1
            started = time.monotonic()
            with _slow_clients(port, SLOW_CLIENTS) as clients:
                timings = []
                for _ in range(5):  # while the slow clients trickle for a few seconds
                    time.sleep(1)
                    timings.append(round(_health_seconds(port, 5), 3))
                print(f"/health with {SLOW_CLIENTS} slow clients: {timings} s")
                assert max(timings) < 1, timings
                # uvicorn keeps them all: closing slow clients is the proxy's job
                assert sum(1 for client in clients if _still_open(client)) == SLOW_CLIENTS
            assert time.monotonic() - started < 45


def _still_open(client: socket.socket) -> bool:
    try:
        return client.recv(1) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False


def test_every_runner_serves_the_web_app_with_the_same_limits() -> None:
    """The three Procfiles and compose files start uvicorn alike (the e2e test runs
    celery's): the limits, and the soft limit raised where a shell runs the line."""
    flags = "--limit-concurrency 4096 --backlog 2048 --timeout-keep-alive 5"
    for runner in ("celery", "arq", "taskiq"):
        procfile = (REPO / "templates" / runner / "run" / "Procfile.jinja").read_text()
        assert _web_line(procfile).startswith('ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec ')
        assert _web_line(procfile).endswith(f"--port ${{PORT:-8000}} {flags}"), runner
        compose = (REPO / "templates" / runner / "run" / "compose.yaml.jinja").read_text()
        assert f"--port 8000 {flags}\n" in compose, runner
        assert "    ulimits:\n      nofile: 65536\n" in compose, runner

"""Shared helpers for the benchmarks: timing whole processes and printing tables."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BGTASKS = [sys.executable, "-m", "bgtasks_gen"]


def timed(
    cmd: list[str], cwd: Path | None = None, setup: Callable[[], None] | None = None, runs: int = 7
) -> list[float]:
    """Wall-clock seconds of `cmd` over `runs` runs (setup() before each, untimed)."""
    times = []
    for _ in range(runs):
        if setup:
            setup()
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return times


def fresh_copy(example: str, dest: Path) -> Callable[[], None]:
    def setup() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(EXAMPLES / example, dest)

    return setup


def row(label: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return f"| {label} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} |"


def table(title: str, rows: list[str], first: str = "command") -> None:
    print(f"\n### {title}\n")
    print(f"| {first} | median ms | min ms | max ms |")
    print("| --- | --- | --- | --- |")
    for line in rows:
        print(line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on port {port} after {timeout}s")


def scaffold_runner(runner: str, workdir: Path, *init_args: str) -> tuple[Path, Path]:
    """The `layered` example scaffolded with `runner` under workdir: (its Python, project)."""
    python = REPO / ".venvs" / runner / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"missing {python}: run `bash .ci/setup-venvs` first")
    project = workdir / runner
    shutil.copytree(EXAMPLES / "layered", project)
    subprocess.run(
        [*BGTASKS, "init", str(project), "--runner", runner, *init_args],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return python, project


@contextlib.contextmanager
def private_redis(project: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """A redis-server of its own on a free port: (port, environment for the project)."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port)
        yield (
            port,
            {
                **os.environ,
                "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "TASKIQ_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1",
                "PYTHONPATH": str(project),
            },
        )
    finally:
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait(timeout=20)

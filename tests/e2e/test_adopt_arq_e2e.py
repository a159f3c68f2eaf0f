"""`bgtasks adopt` on an arq project, end to end, against real processes.

The fixture project (tests/fixtures/adopt_project, six shapes of add_task call) is
scaffolded with arq, then served by uvicorn twice: before adopt, when FastAPI runs its
BackgroundTasks in the web process, and after adopt, with a real `arq` worker from
.venvs/arq beside it, on a private redis-server. Each job of the fixture appends a JSON
line (its arguments, its process and process group) to the file ADOPT_RECORD_FILE
names. After adopt: the moved routes answer exactly as before and their jobs run in the
worker's process group with the same arguments; the calls that cannot move are left
byte for byte and listed; the OpenAPI document is the same; the code adopt wrote passes
ruff and adds no mypy error; a hung Redis is a 504 that never blocks the event loop,
a stopped one a quick 503.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgtasks_gen.adopt import scan_project
from tests.e2e.harness import (
    API_TOKEN,
    Proc,
    restartable_redis,
    runner_python,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adopt_project"
BGTASKS = [sys.executable, "-m", "bgtasks_gen"]
RUFF = [sys.executable, "-m", "ruff"]
WAIT = 20.0  # seconds, for any process or job
# each route whose add_task call moves, with its request
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/users/", {"json": {"email": "ada@example.com", "name": "Ada"}}),
    ("/users/7/refresh", {}),
    ("/users/7/receipt", {"params": {"email": "bo@example.com"}}),
    ("/users/7/welcome", {"params": {"email": "cy@example.com", "name": "Cy"}}),
    ("/orders/9/audit", {}),
]
JOBS = Counter(
    [
        "send_welcome",  # POST /users/ and, through the helper, /users/7/welcome
        "send_welcome",
        "record_signup",
        "log_signup",
        "refresh_cache",
        "send_receipt",
        "audit_order",
    ]
)
# the files adopt writes in the fixture
CHANGED = {
    "app/tasks/adopted.py",
    "app/tasks/arq_worker.py",
    "app/routes/orders.py",
    "app/routes/users.py",
    "app/services.py",
}
OPENAPI = """
import json
from app.main import app
print(json.dumps(app.openapi(), sort_keys=True))
"""


def bgtasks(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BGTASKS, *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def environment(project: Path, redis: str, records: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{project / '.stubs'}{os.pathsep}{project}",
        "ADOPT_RECORD_FILE": str(records),
        "BGTASKS_API_TOKEN": API_TOKEN,
        "REDIS_URL": f"{redis}/0",
    }


def start_worker(python: Path, project: Path, env: dict[str, str]) -> Proc:
    arq = python.parent / "arq"
    argv = [str(arq), "app.tasks.arq_worker.WorkerSettings"]
    proc = start_process(argv, project, project.parent / "arq-worker.log", env)

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"the arq worker exited:\n{proc.log()}")
        return "Starting worker" in proc.log()

    wait_until(up, WAIT, "the arq worker")
    return proc


def call_routes(base: str) -> list[tuple[int, Any]]:
    answers = []
    for path, request in REQUESTS:
        response = httpx.post(f"{base}{path}", timeout=WAIT, **request)
        answers.append((response.status_code, response.json()))
    return answers


def jobs_seen(records: Path, count: int, log: Proc) -> list[dict[str, Any]]:
    def complete() -> list[dict[str, Any]] | None:
        if not records.exists():
            return None
        lines = records.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines] if len(lines) >= count else None

    found: list[dict[str, Any]] = wait_until(
        complete, WAIT, f"{count} jobs recorded\n{log.log()[-3000:]}"
    )
    return found


def arguments(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps([r["job"], r["arguments"]], sort_keys=True) for r in records)


def openapi(python: Path, project: Path) -> object:
    env = {**os.environ, "PYTHONPATH": f"{project / '.stubs'}{os.pathsep}{project}"}
    env["BGTASKS_API_TOKEN"] = API_TOKEN
    done = subprocess.run(
        [str(python), "-c", OPENAPI],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mypy_errors(python: Path, project: Path, cache: Path) -> Counter[str]:
    """mypy's errors over the app, each without its line number (adopt moves lines)."""
    done = subprocess.run(
        [str(python), "-m", "mypy", "--cache-dir", str(cache), "app"],
        cwd=project,
        env={**os.environ, "MYPYPATH": str(project / ".stubs")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert done.returncode in (0, 1) and (done.returncode == 0) == (not errors), done.stdout
    return Counter(re.sub(r":\d+: error:", ": error:", line) for line in errors)


def call_text(root: Path, file: str, line: int, end_line: int) -> str:
    lines = (root / file).read_text(encoding="utf-8").splitlines()
    return "\n".join(lines[line - 1 : end_line])


def refused(root: Path) -> list[tuple[str, str, str]]:
    scan = scan_project(root)
    return sorted(
        (c.file, c.reason_code, call_text(root, c.file, c.line, c.end_line)) for c in scan.refused
    )


def test_adopted_jobs_run_on_the_arq_worker_and_the_routes_answer_as_before(
    tmp_path: Path,
) -> None:
    python = runner_python("arq")
    project = tmp_path / "project"
    shutil.copytree(FIXTURE, project)
    done = bgtasks(project, "init", str(project), "--runner", "arq", "--no-deps")
    assert done.returncode == 0, done.stdout + done.stderr
    logs = tmp_path
    document = openapi(python, project)
    mypy_before = mypy_errors(python, project, tmp_path / "mypy")

    with restartable_redis(tmp_path) as redis:
        # before: FastAPI runs the jobs in the web process, after each response
        before_file = logs / "before.jsonl"
        env = environment(project, redis.url, before_file)
        web, base = serve_app(python, project, "app.main:app", logs / "web-before.log", env)
        try:
            answers = call_routes(base)
            before = jobs_seen(before_file, sum(JOBS.values()), web)
        finally:
            web.stop()
        assert all(status == 200 for status, _ in answers), answers
        assert Counter(r["job"] for r in before) == JOBS
        assert {r["process_group"] for r in before} == {web.popen.pid}

        done = bgtasks(project, "adopt", "--json", "-p", str(project))
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["runner"] == "arq" and len(report["moved"]) == 7
        assert {f["path"] for f in report["files"]} == CHANGED | {".bgtasks.toml"}

        # the calls that cannot move: left byte for byte, each listed with its fix
        assert refused(project) == refused(FIXTURE)
        assert len(report["left"]) == len(refused(FIXTURE)) == 10
        assert all(entry["fix"] for entry in report["left"])
        # the same OpenAPI document; the code passes ruff and adds no mypy error
        assert openapi(python, project) == document
        python_files = sorted(CHANGED)
        check = subprocess.run(
            [*RUFF, "check", "--isolated", "--no-cache", *python_files],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout
        # orders.py was not in ruff's format before adopt: it is left in its own
        formatted = [rel for rel in python_files if rel != "app/routes/orders.py"]
        fmt = subprocess.run(
            [*RUFF, "format", "--check", "--isolated", "--no-cache", *formatted],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
        )
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
        assert mypy_errors(python, project, tmp_path / "mypy") == mypy_before

        after_file = logs / "after.jsonl"
        env = environment(project, redis.url, after_file)
        worker = start_worker(python, project, env)
        web, base = serve_app(python, project, "app.main:app", logs / "web-after.log", env)
        try:
            assert call_routes(base) == answers  # the same statuses and bodies
            after = jobs_seen(after_file, sum(JOBS.values()), worker)
            # on the worker (its process or a thread of it), with the same arguments
            assert {r["process_group"] for r in after} == {worker.popen.pid}, after
            assert web.popen.pid not in {r["pid"] for r in after}
            assert arguments(after) == arguments(before)
            signup = next(r for r in after if r["job"] == "record_signup")
            assert signup["types"] == {"payload": "SignupIn"}  # rebuilt from its JSON form
            assert "Traceback" not in worker.log(), worker.log()
            assert "adopted.app.jobs.send_welcome" in worker.log()  # by its queue name

            # a Redis that hangs: the async route waits for it without blocking the event
            # loop (other requests are served meanwhile), then says it may be queued
            assert redis.proc is not None
            os.kill(redis.proc.popen.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(1) as pool:
                    hanging = pool.submit(httpx.post, f"{base}/users/7/refresh", timeout=WAIT)
                    time.sleep(0.5)
                    started = time.monotonic()
                    assert httpx.get(f"{base}/health", timeout=WAIT).status_code == 200
                    assert time.monotonic() - started < 1.0
                    assert not hanging.done()
                    assert hanging.result().status_code == 504
            finally:
                os.kill(redis.proc.popen.pid, signal.SIGCONT)

            # Redis down: not queued, said at once, for async and plain def routes
            redis.stop()
            for path, request in REQUESTS:
                started = time.monotonic()
                response = httpx.post(f"{base}{path}", timeout=WAIT, **request)
                assert response.status_code == 503, (path, response.text)
                assert time.monotonic() - started < 10, path
        finally:
            web.stop()
            worker.stop()

"""`bgtasks adopt` end to end, for celery and for taskiq, against real processes.

The fixture project (tests/fixtures/adopt_project) is scaffolded, then served by uvicorn
twice: before adopt, when FastAPI runs its BackgroundTasks in the web process, and after
adopt, with the runner's real worker from .venvs/<runner> beside it, on a private
redis-server. Each job of the fixture appends a JSON line (its arguments, its process
and process group) to the file ADOPT_RECORD_FILE names. After adopt, every route whose
call moved answers exactly as before, and each job runs in the worker's process group,
never the web server's, with the same arguments; with the broker stopped the moved
routes answer 503, quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from bgtasks_gen.cli_adopt import register
from tests.e2e.harness import (
    API_TOKEN,
    Proc,
    RestartableRedis,
    restartable_redis,
    runner_python,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adopt_project"
# each route whose add_task call moves, with its request; and the jobs it runs
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
BGTASKS = [sys.executable, "-m", "bgtasks_gen"]
WAIT = 20.0  # seconds, for any process or job


def adopt(project: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """bgtasks"""

    register(app)
    result = CliRunner().invoke(app, ["adopt", "-p", str(project)])
    assert result.exit_code == 0, result.output


def scaffold(runner: str, root: Path) -> Path:
    import subprocess

    project = root / "project"
    shutil.copytree(FIXTURE, project)
    done = subprocess.run(
        [*BGTASKS, "init", str(project), "--runner", runner, "--no-deps"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return project


def environment(runner: str, project: Path, redis: str, records: Path) -> dict[str, str]:
    env = {
        "PYTHONPATH": f"{project / '.stubs'}{os.pathsep}{project}",
        "ADOPT_RECORD_FILE": str(records),
        "BGTASKS_API_TOKEN": API_TOKEN,
    }
    if runner == "celery":
        env |= {"CELERY_BROKER_URL": f"{redis}/0", "CELERY_RESULT_BACKEND": f"{redis}/1"}
    else:
        env |= {"TASKIQ_BROKER_URL": f"{redis}/0", "REDIS_URL": f"{redis}/0"}
    return env


def start_worker(runner: str, python: Path, project: Path, env: dict[str, str]) -> Proc:
    if runner == "celery":
        argv = [str(python), "-m", "celery", "-A", "app.tasks.celery_app", "worker"]
        argv += ["-P", "prefork", "-c", "1", "--loglevel=info"]
        argv += ["--without-mingle", "--without-gossip"]
        ready = " ready."
    else:
        argv = [str(python.parent / "taskiq"), "worker", "app.tasks.taskiq_app:broker"]
        argv += ["app.tasks.taskiq_tasks", "--workers", "1"]
        ready = "Listening started"
    proc = start_process(argv, project, project.parent / f"{runner}-worker.log", env)

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"the {runner} worker exited:\n{proc.log()}")
        return ready in proc.log()

    wait_until(up, WAIT, f"the {runner} worker")
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


@pytest.fixture(params=["celery", "taskiq"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Path, Path, RestartableRedis]]:
    runner = str(request.param)
    python = runner_python(runner)
    project = scaffold(runner, tmp_path)
    with restartable_redis(tmp_path) as redis:
        yield runner, python, project, redis


def test_moved_jobs_run_on_the_worker_and_the_routes_answer_as_before(
    stack: tuple[str, Path, Path, RestartableRedis],
) -> None:
    runner, python, project, redis = stack
    logs = project.parent

    # before: FastAPI runs the jobs in the web process, after each response
    before_file = logs / "before.jsonl"
    env = environment(runner, project, redis.url, before_file)
    web, base = serve_app(python, project, "app.main:app", logs / "web-before.log", env)
    try:
        answers = call_routes(base)
        before = jobs_seen(before_file, sum(JOBS.values()), web)
    finally:
        web.stop()
    assert all(status == 200 for status, _ in answers), answers
    assert Counter(r["job"] for r in before) == JOBS
    assert {r["process_group"] for r in before} == {web.popen.pid}

    adopt(project)

    after_file = logs / "after.jsonl"
    env = environment(runner, project, redis.url, after_file)
    worker = start_worker(runner, python, project, env)
    web, base = serve_app(python, project, "app.main:app", logs / "web-after.log", env)
    try:
        assert call_routes(base) == answers  # the same statuses and bodies
        after = jobs_seen(after_file, sum(JOBS.values()), worker)
        # on the worker (its process or a child of it), with the same arguments
        assert {r["process_group"] for r in after} == {worker.popen.pid}, after
        assert web.popen.pid not in {r["pid"] for r in after}
        assert arguments(after) == arguments(before)
        signup = next(r for r in after if r["job"] == "record_signup")
        assert signup["types"] == {"payload": "SignupIn"}  # rebuilt from its JSON form
        assert "Traceback" not in worker.log(), worker.log()

        # a broker that hangs: the async route waits for it without blocking the event
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

        # the broker down: not queued, said at once, for async and plain def routes
        redis.stop()
        for path, request in REQUESTS:
            started = time.monotonic()
            response = httpx.post(f"{base}{path}", timeout=WAIT, **request)
            assert response.status_code == 503, (path, response.text)
            assert time.monotonic() - started < 10, path
    finally:
        web.stop()
        worker.stop()

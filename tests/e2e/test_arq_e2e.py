"""`init --runner arq` end to end, over HTTP against real processes.

A private redis-server, a real `arq` worker subprocess and uvicorn serving the
scaffolded `layered` example (both from the arq environment, .venvs/arq), and an SMTP
sink (aiosmtpd, in this process). The module shares one stack; tests run in file order
and the worker-kill test replaces the worker it killed.

ARQ_JOB_TIMEOUT=5 caps every job's timeout, so the in-progress lock of a job whose
worker was SIGKILLed (largest timeout + 10 s) expires after 15 s, not 310 s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    EXAMPLES,
    Proc,
    SmtpSink,
    add_task,
    missing,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    smtp_sink,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 5  # ARQ_JOB_TIMEOUT for the stack: in-progress lock = 15 s
POOL_MAX_CONNECTIONS = 20  # MAX_CONNECTIONS in the generated pool.py
WORKER_MAX_JOBS = 10  # WorkerSettings.max_jobs
MAX_BODY_BYTES = 256 * 1024  # MAX_BODY_BYTES in the generated router
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"


@dataclass
class Stack:
    python: Path
    project: Path
    logs: Path
    redis_url: str
    env: dict[str, str]
    sink: SmtpSink
    base: str
    api: Proc
    worker: Proc

    def start_worker(self, name: str) -> Proc:
        arq = self.python.parent / "arq"
        proc = start_process(
            [str(arq), "app.tasks.arq_worker.WorkerSettings"],
            cwd=self.project,
            log_path=self.logs / f"{name}.log",
            env=self.env,
        )
        wait_until(
            lambda: "Starting worker" in proc.log() or not proc.alive(),
            20,
            f"arq worker {name} starting",
        )
        assert proc.alive(), proc.log()
        return proc

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.base}/tasks{path}", headers=headers, timeout=30, **kwargs)

    def status(self, job_id: str) -> httpx.Response:
        return httpx.get(f"{self.base}/tasks/status/{job_id}", headers=AUTH, timeout=10)

    def wait_status(self, job_id: str, want: str, timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = self.status(job_id).json()
            return body if body["status"] == want else None

        result: dict[str, Any] = wait_until(
            reached,
            timeout,
            f"job {job_id} {want}\n--- worker\n{self.worker.log()[-3000:]}",
            interval=0.1,
        )
        return result


def redis_clients(url: str) -> int:
    """Redis `connected_clients` (the redis-cli asking counts as one)."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(
        ["redis-cli", "-p", port, "info", "clients"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("connected_clients:"))
    return int(line.split(":")[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("redis-cli") is None:
        missing("redis-cli is not installed")
    python = runner_python("arq")
    root = tmp_path_factory.mktemp("arq-e2e")
    project = scaffold("layered", root, "--runner", "arq")
    # grown by add-task before anything starts: a typed task with a route, a cron task
    add_task(project, "resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]")
    add_task(project, "heartbeat", "--every", "2", "--no-route")
    logs = root / "logs"
    logs.mkdir()
    with redis_server(root) as redis_url, smtp_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "ARQ_JOB_TIMEOUT": str(JOB_TIMEOUT),
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(api):
            placeholder = Stack(python, project, logs, redis_url, env, sink, base, api, api)
            placeholder.worker = placeholder.start_worker("worker-1")
            try:
                yield placeholder
            finally:
                placeholder.worker.stop()


def test_send_email_arrives_and_reports_success(stack: Stack) -> None:
    response = stack.post(
        "/send-email",
        json={"to": "ada@example.com", "subject": "Welcome aboard", "body": "Thanks!"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["task_id"]
    wait_until(lambda: stack.sink.messages, 20, f"email at the sink\n{stack.worker.log()}")
    (message,) = stack.sink.messages
    assert message["To"] == "ada@example.com"
    assert message["From"] == "shop@example.com"
    assert message["Subject"] == "Welcome aboard"
    body = stack.wait_status(job_id, "complete", 10)
    assert body["success"] is True and body["result"] == {"status": "sent"}
    assert body["error"] is None


def test_process_data_completes_with_its_result(stack: Stack) -> None:
    response = stack.post("/process-data", json={"data_id": 42, "values": [1.5, 2.5, 5]})
    assert response.status_code == 202, response.text
    body = stack.wait_status(response.json()["task_id"], "complete", 20)
    assert body["success"] is True
    assert body["result"] == {
        "data_id": 42,
        "count": 3,
        "total": 9.0,
        "mean": 3.0,
        "min": 1.5,
        "max": 5.0,
    }


def test_added_task_runs_with_its_arguments(stack: Stack) -> None:
    payload = {"image_id": 42, "sizes": [64, 128]}
    response = stack.post("/resize-image", json=payload)
    assert response.status_code == 202, response.text
    body = stack.wait_status(response.json()["task_id"], "complete", 20)
    assert body["success"] is True
    assert body["result"] == payload


def test_added_every_2_seconds_task_is_run_by_cron(stack: Stack) -> None:
    wait_until(
        lambda: "cron:heartbeat" in stack.worker.log(),
        15,
        f"arq cron running heartbeat\n{stack.worker.log()[-2000:]}",
    )


def test_unknown_job_id_is_404(stack: Stack) -> None:
    assert stack.status(uuid.uuid4().hex).status_code == 404
    assert stack.post(f"/cancel/{uuid.uuid4().hex}").status_code == 404


def test_same_idempotency_key_runs_one_job(stack: Stack) -> None:
    """Documented answer: 202 for the first request, 200 + duplicate=true after it."""
    key = uuid.uuid4().hex
    payload = {"to": "bob@example.com", "subject": f"once {key}", "body": "Only once."}
    headers = {"Idempotency-Key": key}
    first = stack.post("/send-email", json=payload, headers=headers)
    second = stack.post("/send-email", json=payload, headers=headers)
    assert first.status_code == 202, first.text
    assert second.status_code == 200, second.text
    job_id = first.json()["task_id"]
    # one job, under an id derived from the key with a secret (not the key itself)
    assert job_id == second.json()["task_id"] != f"send_email:{key}"
    assert job_id.startswith("send_email:") and key not in job_id
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    stack.wait_status(job_id, "complete", 20)
    # and once more after it ran: still the same job, no second email
    third = stack.post("/send-email", json=payload, headers=headers)
    assert third.status_code == 200 and third.json()["status"] == "complete"
    time.sleep(1)
    assert [m["Subject"] for m in stack.sink.messages].count(f"once {key}") == 1


def test_cancel_running_job(stack: Stack) -> None:
    response = stack.post("/long-running", json={"steps": 40})  # 4 s < the 5 s timeout
    job_id = response.json()["task_id"]
    running_body = stack.wait_status(job_id, "in_progress", 10)
    assert running_body["success"] is None
    cancelled = stack.post(f"/cancel/{job_id}", params={"wait": 5})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": job_id, "cancelled": True, "status": "complete"}
    body = stack.status(job_id).json()
    assert body["status"] == "complete" and body["success"] is False
    assert body["error"] == "cancelled" and body["result"] is None
    assert "aborted" in stack.worker.log()
    # finished: nothing left to cancel (409, as every runner's cancel of a finished task)
    again = stack.post(f"/cancel/{job_id}", params={"wait": 0})
    assert again.status_code == 409, again.text
    assert again.json() == {"task_id": job_id, "cancelled": True, "status": "complete"}


def test_killed_worker_job_runs_again(stack: Stack) -> None:
    response = stack.post("/long-running", json={"steps": 30})  # 3 s
    job_id = response.json()["task_id"]

    def started() -> bool:
        body = stack.status(job_id).json()
        return body["status"] == "in_progress" and bool(body["progress"])

    wait_until(started, 10, "long job running with progress")
    # the same shape as celery's PROGRESS: {current, total, percent}
    progress = stack.status(job_id).json()["progress"]
    assert progress is None or (progress["total"] == 30 and 0 <= progress["current"] <= 30)
    stack.worker.popen.send_signal(signal.SIGKILL)
    stack.worker.popen.wait(timeout=10)
    # the in-progress lock outlives the worker: nobody may run the job yet
    assert stack.status(job_id).json()["status"] == "in_progress"

    killed_at = time.monotonic()
    stack.worker = stack.start_worker("worker-2")
    lock = JOB_TIMEOUT + 10
    body = stack.wait_status(job_id, "complete", lock + 15)
    waited = time.monotonic() - killed_at
    assert body["success"] is True and body["result"] == {"steps": 30}
    assert body["tries"] == 2
    assert waited < lock + 15
    assert f"{job_id}:long_running_task" in stack.worker.log()


def test_concurrent_enqueues_keep_redis_connections_bounded(stack: Stack) -> None:
    before = redis_clients(stack.redis_url)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(redis_clients(stack.redis_url))
            time.sleep(0.05)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=stack.base, limits=limits, timeout=60, headers=AUTH
        ) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/tasks/process-data", json={"data_id": i, "values": [i]})
                    for i in range(1, 201)
                )
            )
        return [r.status_code for r in responses]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        first = asyncio.run(burst())
        after_first = redis_clients(stack.redis_url)
        second = asyncio.run(burst())
        after_second = redis_clients(stack.redis_url)
    finally:
        stop.set()
        sampler.join(timeout=10)

    print(f"connected_clients: before={before} peak={max(peak)} after={after_first},{after_second}")
    assert first == second == [202] * 200
    bound = before + POOL_MAX_CONNECTIONS + WORKER_MAX_JOBS + 2
    assert max(peak) <= bound < 200, (before, max(peak), bound)
    assert after_first <= bound and after_second <= bound
    # a second burst of 200 does not add connections: the pool is reused
    assert after_second <= after_first + 2, (after_first, after_second)


def test_a_content_length_beside_chunked_framing_leaves_the_body_bounded(
    stack: Stack,
) -> None:
    # The server frames this body as chunked (Transfer-Encoding wins): the small length
    # it also declares must not let the route skip its own bounded read.
    host, port = stack.base.removeprefix("http://").split(":")
    head = (
        "POST /tasks/process-data HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 20\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"1" * (MAX_BODY_BYTES + 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]


def test_worker_starts_with_the_cron_job_and_stays_up(stack: Stack) -> None:
    log = stack.worker.log()
    # 3 scaffold functions + 2 added by add-task + the cron jobs daily_cleanup, heartbeat
    assert "Starting worker for 7 functions" in log, log
    started = log.split("Starting worker for", 1)[1].splitlines()[0]
    assert "daily_cleanup" in started and "cron:heartbeat" in started
    time.sleep(3)
    assert stack.worker.alive(), stack.worker.log()


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_generated_project_tests_pass(stack: Stack) -> None:
    out = _run(
        [str(stack.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        stack.project,
        {**stack.env, "CI": "true"},  # no skipping: Redis is there
    )
    assert "passed" in out and "skipped" not in out, out


def test_generated_project_passes_ruff_and_mypy(stack: Stack) -> None:
    bin_dir = stack.python.parent
    _run(
        [
            str(bin_dir / "ruff"),
            "check",
            "--no-cache",
            "--select",
            RUFF_RULES,
            "--target-version",
            "py311",
            ".",
        ],
        stack.project,
        {},
    )
    _run([str(bin_dir / "ruff"), "format", "--check", "--no-cache", "."], stack.project, {})
    _run(
        [
            str(bin_dir / "mypy"),
            "--ignore-missing-imports",
            "--python-version",
            "3.11",
            "--cache-dir",
            str(stack.logs / "mypy-cache"),
            ".",
        ],
        stack.project,
        {},
    )


ON_EVENT_MAIN = """from fastapi import FastAPI

from app.api.v1.routes import health, items
from app.core.config import settings

app = FastAPI(title=settings.PROJECT_NAME)

app.include_router(health.router)
app.include_router(items.router, prefix=settings.API_V1_PREFIX)


@app.on_event("startup")
async def remember_startup() -> None:
    app.state.started_by_on_event = True
"""

ON_EVENT_CHECK = """
import os

from fastapi.testclient import TestClient

from app.main import app

token = os.environ["BGTASKS_API_TOKEN"]
with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
    assert app.state.started_by_on_event, "the project's on_event handler did not run"
    response = client.post("/tasks/process-data", json={"data_id": 1, "values": [1]})
    assert response.status_code == 202, response.text
print("on_event handler ran and the pool worked")
"""


def test_on_event_project_keeps_its_handlers(stack: Stack, tmp_path: Path) -> None:
    """An app that uses @app.on_event keeps running its handlers: the pool's lifespan
    is the generated router's, so the app's FastAPI(...) call is left as it is (an app
    lifespan would make FastAPI skip the handlers silently)."""
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    (project / "app" / "main.py").write_text(ON_EVENT_MAIN)
    _run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "arq"],
        tmp_path,
        {},
        timeout=120,
    )
    main = (project / "app" / "main.py").read_text()
    assert "app = FastAPI(title=settings.PROJECT_NAME)\n" in main, main
    assert "lifespan" not in main, main
    out = _run(
        [str(stack.python), "-c", ON_EVENT_CHECK],
        project,
        {
            "REDIS_URL": stack.env["REDIS_URL"],
            "PYTHONPATH": str(project),
            "BGTASKS_API_TOKEN": API_TOKEN,
        },
    )
    assert "on_event handler ran" in out

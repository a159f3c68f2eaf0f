"""`init --runner taskiq` end to end, over HTTP against real processes.

The RabbitMQ variant (`--broker rabbitmq`, last test) uses the machine's RabbitMQ on
127.0.0.1:5672, with results and status still in a private Redis.

A private redis-server, a real `taskiq worker` and `taskiq scheduler` (from the taskiq
environment, .venvs/taskiq), uvicorn serving the scaffolded `layered` example, and an
SMTP sink (aiosmtpd, in this process). The module shares one stack; tests run in file
order and the worker-kill test replaces the worker it killed.

TASKIQ_TASK_TIMEOUT=4 caps every task's time limit, so a task whose worker was
SIGKILLed is handed to another worker after 4 + 10 s, not 310 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    Proc,
    SmtpSink,
    add_task,
    missing,
    port_open,
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

TASK_TIMEOUT = 4  # TASKIQ_TASK_TIMEOUT: redelivery after 4 + 10 s
REDELIVER_AFTER = TASK_TIMEOUT + 10
TOKEN = "e2e-token"
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"
BROKER = "app.tasks.taskiq_app:broker"
SCHEDULER = "app.tasks.taskiq_app:scheduler"
TASKS = "app.tasks.taskiq_tasks"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class Stack:
    python: Path
    project: Path
    logs: Path
    env: dict[str, str]
    sink: SmtpSink
    base: str
    worker: Proc
    scheduler: Proc

    def start(self, name: str, *argv: str) -> Proc:
        taskiq = self.python.parent / "taskiq"
        proc = start_process(
            [str(taskiq), *argv], cwd=self.project, log_path=self.logs / f"{name}.log", env=self.env
        )
        ready = "Listening started" if argv[0] == "worker" else "Startup completed"
        wait_until(lambda: ready in proc.log() or not proc.alive(), 30, f"taskiq {name} starting")
        assert proc.alive(), proc.log()
        return proc

    def start_worker(self, name: str) -> Proc:
        return self.start(name, "worker", BROKER, TASKS, "--workers", "1")

    def start_scheduler(self, name: str) -> Proc:
        return self.start(name, "scheduler", SCHEDULER, TASKS, "--update-interval", "1")

    def post(
        self, path: str, payload: Any = None, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return httpx.post(
            f"{self.base}/tasks{path}",
            json={} if payload is None else payload,
            headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
            timeout=30,
            **kwargs,
        )

    def status(self, task_id: str) -> httpx.Response:
        return httpx.get(
            f"{self.base}/tasks/status/{task_id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

    def wait_status(self, task_id: str, want: str, timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = self.status(task_id).json()
            return body if body["status"] == want else None

        result: dict[str, Any] = wait_until(
            reached,
            timeout,
            f"task {task_id} {want}\n--- worker\n{self.worker.log()[-3000:]}",
            interval=0.1,
        )
        return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = runner_python("taskiq")
    root = tmp_path_factory.mktemp("taskiq-e2e")
    project = scaffold("layered", root, "--runner", "taskiq")
    # grown by add-task before anything starts: a typed task with a route, a scheduled one
    add_task(project, "resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]")
    add_task(project, "heartbeat", "--every", "2", "--no-route")
    logs = root / "logs"
    logs.mkdir()
    with redis_server(root) as redis_url, smtp_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": f"{redis_url}/0",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "TASKIQ_TASK_TIMEOUT": str(TASK_TIMEOUT),
            "BGTASKS_API_TOKEN": TOKEN,
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(api):
            stack = Stack(python, project, logs, env, sink, base, api, api)
            stack.worker = stack.start_worker("worker-1")
            stack.scheduler = stack.start_scheduler("scheduler-1")
            try:
                yield stack
            finally:
                stack.scheduler.stop()
                stack.worker.stop()


def test_send_email_arrives_and_reports_success(stack: Stack) -> None:
    response = stack.post(
        "/send-email", {"to": "ada@example.com", "subject": "Welcome aboard", "body": "Thanks!"}
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_until(lambda: stack.sink.messages, 20, f"email at the sink\n{stack.worker.log()}")
    (message,) = stack.sink.messages
    assert message["To"] == "ada@example.com"
    assert message["From"] == "shop@example.com"
    assert message["Subject"] == "Welcome aboard"
    assert message["Date"] and message["Message-ID"]
    body = stack.wait_status(task_id, "complete", 10)
    assert body["success"] is True and body["result"] == {"status": "sent"}
    # the worker's log names the task, never the address or the text
    assert "ada@example.com" not in stack.worker.log()


def test_requests_without_the_token_are_refused(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.base}/tasks/process-data", json={"data_id": 1, "values": [1]}, timeout=10
    )
    assert response.status_code == 401


def test_process_data_completes_with_its_result(stack: Stack) -> None:
    response = stack.post("/process-data", {"data_id": 42, "values": [1.5, 2.5, 5]})
    assert response.status_code == 202, response.text
    body = stack.wait_status(response.json()["task_id"], "complete", 20)
    assert body["success"] is True and body["tries"] == 1
    assert body["result"] == {
        "data_id": 42,
        "count": 3,
        "total": 9.0,
        "mean": 3.0,
        "min": 1.5,
        "max": 5.0,
    }


def test_requests_queued_together_all_run(stack: Stack) -> None:
    """Concurrent requests share the status record's script call (Batches) and one
    Redis client: every task is queued, recorded and run with its own arguments."""
    numbers = range(500, 530)
    with ThreadPoolExecutor(max_workers=15) as pool:
        answers = list(
            pool.map(lambda n: stack.post("/process-data", {"data_id": n, "values": [n]}), numbers)
        )
    refused = [a.text for a in answers if a.status_code != 202]
    assert not refused, refused
    assert len({a.json()["task_id"] for a in answers}) == len(numbers)
    for n, answer in zip(numbers, answers, strict=True):
        body = stack.wait_status(answer.json()["task_id"], "complete", 30)
        assert body["success"] is True, body
        assert body["result"]["data_id"] == n and body["result"]["total"] == n


def test_an_idempotency_key_queues_one_task(stack: Stack) -> None:
    """The same key twice, then eight concurrent requests with another one: one task
    each, every answer naming it; a different key is a different task."""
    payload = {"data_id": 7, "values": [1, 2, 3]}
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = stack.post("/process-data", payload, key)
    again = stack.post("/process-data", payload, key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    task_id = first.json()["task_id"]
    assert again.json()["task_id"] == task_id and again.json()["duplicate"] is True
    other = stack.post("/process-data", payload, {"Idempotency-Key": f"other-{uuid.uuid4().hex}"})
    assert other.status_code == 202 and other.json()["task_id"] != task_id
    stack.wait_status(task_id, "complete", 20)
    done = stack.post("/process-data", payload, key)  # finished: still that task
    assert done.status_code == 200, done.text
    assert done.json() == {
        "task_id": task_id,
        "status": "complete",
        "status_url": f"/tasks/status/{task_id}",
        "duplicate": True,
    }

    burst = {"Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: stack.post("/process-data", payload, burst), range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202], [a.text for a in answers]
    (burst_id,) = {a.json()["task_id"] for a in answers}
    assert stack.wait_status(burst_id, "complete", 20)["tries"] == 1
    stack.wait_status(other.json()["task_id"], "complete", 20)
    log = stack.worker.log()
    for ran in (task_id, other.json()["task_id"], burst_id):
        assert log.count(f"Executing task process_data with ID: {ran}") == 1, ran
    refused = stack.post("/process-data", payload, {"Idempotency-Key": "x" * 65})
    assert refused.status_code == 422


def test_added_task_runs_with_its_arguments(stack: Stack) -> None:
    payload = {"image_id": 42, "sizes": [64, 128]}
    response = stack.post("/resize-image", payload)
    assert response.status_code == 202, response.text
    body = stack.wait_status(response.json()["task_id"], "complete", 20)
    assert body["success"] is True and body["result"] == payload


def test_the_scheduler_fires_the_added_every_2_seconds_task(stack: Stack) -> None:
    wait_until(
        lambda: stack.worker.log().count("Executing task heartbeat") >= 2,
        15,
        f"heartbeat run twice\n{stack.scheduler.log()[-2000:]}",
    )


def test_a_second_scheduler_sends_nothing_twice(stack: Stack) -> None:
    second = stack.start_scheduler("scheduler-2")
    try:
        before = stack.worker.log().count("Executing task heartbeat")
        window = 8.0
        time.sleep(window)
        fired = stack.worker.log().count("Executing task heartbeat") - before
    finally:
        second.stop()
    # every 2 s: at most one firing per 2-second slot, whichever scheduler claims it
    assert 2 <= fired <= window / 2 + 1, fired
    assert "Sending task heartbeat" in second.log() + stack.scheduler.log()


def test_unknown_task_id_is_404(stack: Stack) -> None:
    assert stack.status(uuid.uuid4().hex).status_code == 404
    assert stack.post(f"/cancel/{uuid.uuid4().hex}").status_code == 404


def test_progress_then_cancel_a_running_task(stack: Stack) -> None:
    task_id = stack.post("/long-running", {"steps": 35}).json()["task_id"]  # 3.5 s < 4 s

    def progressing() -> dict[str, Any] | None:
        body: dict[str, Any] = stack.status(task_id).json()
        return body if body["progress"] and body["progress"]["current"] > 0 else None

    progress = wait_until(progressing, 10, "long task reporting progress")["progress"]
    assert progress["total"] == 35
    assert progress["percent"] == progress["current"] * 100 // 35
    cancelled = stack.post(f"/cancel/{task_id}", params={"wait": 5})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": task_id, "cancelled": True, "status": "complete"}
    body = stack.status(task_id).json()
    assert body["success"] is False and body["error"] == "cancelled"
    again = stack.post(f"/cancel/{task_id}")
    assert again.status_code == 409 and again.json()["cancelled"] is True


def test_killed_worker_task_runs_again(stack: Stack) -> None:
    task_id = stack.post("/long-running", {"steps": 30}).json()["task_id"]  # 3 s

    def started() -> bool:
        body = stack.status(task_id).json()
        return body["status"] == "in_progress" and bool(body["progress"])

    wait_until(started, 10, "long task running with progress")
    os.killpg(stack.worker.popen.pid, signal.SIGKILL)  # the worker and its child process
    stack.worker.popen.wait(timeout=10)
    killed_at = time.monotonic()
    stack.worker = stack.start_worker("worker-2")
    body = stack.wait_status(task_id, "complete", REDELIVER_AFTER + 15)
    waited = time.monotonic() - killed_at
    assert body["success"] is True and body["result"] == {"steps": 30}
    assert body["tries"] == 2
    assert waited >= REDELIVER_AFTER - 2, waited  # not before the task was due back
    assert "taking over unacknowledged task" in stack.worker.log()


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
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
    ruff = str(bin_dir / "ruff")
    check = [ruff, "check", "--no-cache", "--select", RUFF_RULES, "--target-version", "py311"]
    _run([*check, "."], stack.project, {})
    _run([ruff, "format", "--check", "--no-cache", "."], stack.project, {})
    mypy = [str(bin_dir / "mypy"), "--strict", "--ignore-missing-imports"]
    _run([*mypy, "--cache-dir", str(stack.logs / "mypy-cache"), "."], stack.project, {})


def test_rabbitmq_broker_runs_tasks_and_redelivers_a_killed_workers_task(
    tmp_path: Path,
) -> None:
    """--broker rabbitmq: RabbitMQ hands a task back the moment its worker's connection
    drops, so the re-run needs no redelivery timeout."""
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    python = runner_python("taskiq")
    project = scaffold("layered", tmp_path, "--runner", "taskiq", "--broker", "rabbitmq")
    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server(tmp_path) as redis_url, smtp_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": RABBITMQ_URL,
            "BGTASKS_API_TOKEN": TOKEN,
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(api):
            stack = Stack(python, project, logs, env, sink, base, api, api)
            stack.worker = stack.start_worker("worker-1")
            try:
                done = stack.post("/process-data", {"data_id": 1, "values": [2, 4]})
                assert done.status_code == 202, done.text
                body = stack.wait_status(done.json()["task_id"], "complete", 20)
                assert body["result"]["mean"] == 3

                task_id = stack.post("/long-running", {"steps": 20}).json()["task_id"]
                stack.wait_status(task_id, "in_progress", 10)
                os.killpg(stack.worker.popen.pid, signal.SIGKILL)
                stack.worker.popen.wait(timeout=10)
                stack.worker = stack.start_worker("worker-2")
                body = stack.wait_status(task_id, "complete", 20)
                assert body["success"] is True and body["tries"] == 2
            finally:
                stack.worker.stop()
        out = _run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            project,
            {**env, "CI": "true"},
        )
        assert "passed" in out and "skipped" not in out, out

"""`init --runner celery` end to end, all over HTTP against real processes.

A private redis-server (broker and results), real `celery worker` processes (prefork),
`celery beat`, uvicorn serving the scaffolded `layered` example, and an SMTP sink. The
RabbitMQ flow uses the machine's RabbitMQ on 127.0.0.1:5672. The scaffolded project's
own tests, ruff and mypy run inside the celery environment (.venvs/celery).
"""

from __future__ import annotations

import os
import re
import subprocess
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
    AUTH,
    Proc,
    SmtpSink,
    add_task,
    free_port,
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

CELERY_APP = "app.tasks.celery_app"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"


def succeeded(status: dict[str, Any]) -> bool:
    return status["status"] == "complete" and status["success"] is True


def cancelled(status: dict[str, Any]) -> bool:
    return status["status"] == "complete" and bool(status["error"] == "cancelled")


def reports_progress(status: dict[str, Any]) -> bool:
    # in_progress with progress: the task has reported a step (Celery's PROGRESS)
    return status["status"] == "in_progress" and status["progress"] is not None


@dataclass
class Stack:
    """A scaffolded project served by uvicorn, with the settings it runs with."""

    python: Path
    project: Path
    env: dict[str, str]
    logs: Path
    sink: SmtpSink
    base: str = ""
    prefix: str = ""  # where the generated router is mounted, e.g. "/tasks"

    def url(self, path: str) -> str:
        return f"{self.base}{self.prefix}{path}"

    def queue(self, path: str, **kwargs: Any) -> str:
        response = httpx.post(self.url(path), headers=AUTH, timeout=10, **kwargs)
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def status(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(self.url(f"/status/{task_id}"), headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def cancel(self, task_id: str) -> httpx.Response:
        return httpx.post(self.url(f"/cancel/{task_id}"), headers=AUTH, timeout=10)

    def final(self, task_id: str, timeout: float = 30) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            status = self.status(task_id)
            return status if status["status"] == "complete" else None

        result: dict[str, Any] = wait_until(finished, timeout, f"task {task_id} to finish")
        return result

    def email(self, subject: str, to: str = "ada@example.com") -> str:
        payload = {"to": to, "subject": subject, "body": "Sent by the celery e2e suite."}
        return self.queue("/send-email", json=payload)

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.sink.messages]

    def beat(self, name: str, loglevel: str) -> Proc:
        """A real `celery beat` for this project, with a schedule file of its own."""
        return start_process(
            [
                str(self.python),
                "-m",
                "celery",
                "-A",
                CELERY_APP,
                "beat",
                f"--loglevel={loglevel}",
                "--schedule",
                str(self.logs / f"{name}-schedule"),
            ],
            cwd=self.project,
            log_path=self.logs / f"{name}.log",
            env=self.env,
        )

    def worker(self, name: str, concurrency: int = 1) -> Proc:
        """A real `celery worker` (prefork) for this project; returns once it is ready."""
        proc = start_process(
            [
                str(self.python),
                "-m",
                "celery",
                "-A",
                CELERY_APP,
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "--loglevel=info",
                "-n",
                f"e2e-{name}-{uuid.uuid4().hex[:6]}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=self.project,
            log_path=self.logs / f"worker-{name}.log",
            env=self.env,
        )

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"celery worker exited:\n{proc.log()}")
            return " ready." in proc.log()

        try:
            wait_until(ready, 30, f"celery worker {name} ready")
        except BaseException:
            proc.stop()
            raise
        return proc


def _router_prefix(base: str) -> str:
    """Find where the app mounted the generated router, from its OpenAPI document."""
    paths = httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    suffix = "/status/{task_id}"
    (status_path,) = [p for p in paths if p.endswith(suffix) and "/tasks" in p]
    return str(status_path[: -len(suffix)])


def _children(pid: int) -> list[int]:
    """Child pids of `pid`, read from /proc (no psutil in this environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def python() -> Path:
    return runner_python("celery")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery-e2e")


@pytest.fixture(scope="module")
def redis_url(workdir: Path) -> Iterator[str]:
    with redis_server(workdir) as url:
        yield url


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as server:
        yield server


def _env(broker_url: str, result_backend: str, sink: SmtpSink) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": result_backend,
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
        "SMTP_USER": "",
        "EMAIL_FROM": "shop@example.com",
    }


def _serve(stack: Stack) -> Proc:
    server, stack.base = serve_app(
        stack.python, stack.project, "app.main:app", stack.logs / "uvicorn.log", stack.env
    )
    stack.prefix = _router_prefix(stack.base)
    return server


@pytest.fixture(scope="module")
def stack(python: Path, workdir: Path, redis_url: str, sink: SmtpSink) -> Iterator[Stack]:
    """The layered example with the Redis broker, served by uvicorn (workers per test)."""
    project = scaffold("layered", workdir / "redis", "--runner", "celery")
    # grown by add-task before anything starts: a typed task with a route, a beat task
    add_task(project, "resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]")
    add_task(project, "heartbeat", "--every", "2", "--no-route")
    logs = workdir / "redis-logs"
    logs.mkdir()
    env = _env(f"{redis_url}/0", f"{redis_url}/1", sink)
    stack = Stack(python, project, env, logs, sink)
    server = _serve(stack)
    with running(server):
        yield stack


@pytest.fixture(scope="module")
def rabbit_stack(python: Path, workdir: Path, redis_url: str, sink: SmtpSink) -> Iterator[Stack]:
    """The layered example scaffolded with --broker rabbitmq; results still in Redis."""
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    project = scaffold(
        "layered", workdir / "rabbitmq", "--runner", "celery", "--broker", "rabbitmq"
    )
    logs = workdir / "rabbitmq-logs"
    logs.mkdir()
    env = _env(RABBITMQ_URL, f"{redis_url}/3", sink)
    stack = Stack(python, project, env, logs, sink)
    # The machine's RabbitMQ is shared: drop what earlier runs may have left queued.
    _run([str(python), "-m", "celery", "-A", CELERY_APP, "purge", "-f"], project, env, 60)
    server = _serve(stack)
    with running(server):
        yield stack


def test_send_email_progress_order_and_unknown_ids(stack: Stack) -> None:
    worker = stack.worker("main", concurrency=2)
    with running(worker):
        # 1. send-email: delivered to the sink, complete with success, no address in the status
        subject = f"Welcome {uuid.uuid4()}"
        email_id = stack.email(subject)
        final = stack.final(email_id)
        assert succeeded(final), (final, worker.log())
        assert "ada@example.com" not in str(final)
        (message,) = [m for m in stack.sink.messages if m["Subject"] == subject]
        assert message["To"] == "ada@example.com"
        assert message["From"] == "shop@example.com"

        # 2. long-running: progress with a rising percent, then success
        task_id = stack.queue("/long-running", json={"steps": 30})
        percents: list[int] = []
        deadline = time.monotonic() + 30
        while (status := stack.status(task_id))["status"] != "complete":
            assert time.monotonic() < deadline, f"long-running never finished: {status}"
            if reports_progress(status):
                progress = status["progress"]
                assert progress["total"] == 30 and 0 <= progress["current"] <= 30
                percents.append(progress["percent"])
            time.sleep(0.1)
        assert succeeded(status), (status, worker.log())
        assert status["result"] == {"status": "completed", "steps": 30}
        assert len(set(percents)) >= 3 and percents == sorted(percents), percents

        # 3. process-order: success with the order id in the result
        order_id = stack.queue("/process-order", json={"order_id": 777})
        final = stack.final(order_id)
        assert succeeded(final)
        assert final["result"]["order_id"] == 777

        # 4. ids this API never issued: 404 for status and cancel (Celery would say PENDING)
        unknown = str(uuid.uuid4())
        unknown_status = httpx.get(stack.url(f"/status/{unknown}"), headers=AUTH, timeout=10)
        assert unknown_status.status_code == 404
        assert stack.cancel(unknown).status_code == 404
        # finished tasks cannot be cancelled any more: 409 with the real outcome
        response = stack.cancel(order_id)
        assert response.status_code == 409
        assert response.json() == {"task_id": order_id, "cancelled": False, "status": "complete"}
        assert succeeded(stack.status(order_id))
    assert "Traceback" not in worker.log(), worker.log()


def test_cancelled_queued_tasks_never_run(stack: Stack) -> None:
    # (a) no worker is running: revoke() reaches nobody, the cancel flag must do it
    before_worker = f"cancelled before any worker {uuid.uuid4()}"
    first = stack.email(before_worker)
    response = stack.cancel(first)
    assert response.status_code == 200, response.text
    assert response.json() == {"task_id": first, "cancelled": True, "status": "complete"}
    assert cancelled(stack.status(first))

    worker = stack.worker("cancel", concurrency=1)
    with running(worker):
        # (b) the only pool process is busy: the email waits in the queue
        busy = stack.queue("/long-running", json={"steps": 30})
        wait_until(lambda: reports_progress(stack.status(busy)), 20, "the long task to start")
        while_busy = f"cancelled while queued {uuid.uuid4()}"
        second = stack.email(while_busy)
        response = stack.cancel(second)
        assert response.status_code == 200, response.text
        assert response.json() == {"task_id": second, "cancelled": True, "status": "complete"}
        # An email queued after both: once it is delivered, the worker has taken (and
        # dropped) the two cancelled ones before it, which sit earlier in the queue.
        marker = f"queued after the cancelled ones {uuid.uuid4()}"
        marker_id = stack.email(marker)
        assert succeeded(stack.final(marker_id)), worker.log()
        assert succeeded(stack.final(busy))
        log = worker.log()

    # The bodies never ran: nothing reached the SMTP sink, and the task never logged
    # its "sent" line; both stay cancelled.
    assert marker in stack.subjects()
    assert before_worker not in stack.subjects()
    assert while_busy not in stack.subjects()
    for task_id in (first, second):
        assert cancelled(stack.status(task_id))
        assert f"email of task {task_id} sent" not in log
        assert f"send_email[{task_id}] succeeded" not in log
    # Each was stopped by its own mechanism: the flag for the first (the worker was not
    # up for the revoke), revoke() for the second.
    assert f"send_email[{first}] cancelled" in log, log
    assert f"Discarding revoked task: app.tasks.tasks.send_email[{second}]" in log, log


def test_task_of_a_killed_pool_process_runs_again(stack: Stack) -> None:
    worker = stack.worker("kill", concurrency=1)
    with running(worker):
        task_id = stack.queue("/long-running", json={"steps": 40})

        def progressed() -> int:
            status = stack.status(task_id)
            if reports_progress(status) and status["progress"]["percent"] >= 20:
                return int(status["progress"]["percent"])
            return 0

        before_kill = wait_until(progressed, 20, "the task to be well under way")
        (child,) = _children(worker.popen.pid)
        subprocess.run(["kill", "-KILL", str(child)], check=True, timeout=10)

        states_seen: list[str] = []
        restarted_lower = False
        deadline = time.monotonic() + 40
        while (status := stack.status(task_id))["status"] != "complete":
            assert time.monotonic() < deadline, f"no re-run after the kill: {worker.log()}"
            states_seen.append(status["status"])
            if reports_progress(status) and status["progress"]["percent"] < before_kill:
                restarted_lower = True
            time.sleep(0.1)
        assert succeeded(status), (status, worker.log())
        log = worker.log()
    assert "WorkerLostError" in log, log
    # retried (task_retry_on_worker_lost), and the re-run started again from step one
    assert "retrying" in states_seen, states_seen
    assert restarted_lower, states_seen
    assert log.count(f"long_running[{task_id}] received") == 2, log


def test_unreachable_broker_is_a_quick_503_off_the_event_loop(stack: Stack) -> None:
    env = {**stack.env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    server, base = serve_app(
        stack.python, stack.project, "app.main:app", stack.logs / "uvicorn-dead.log", env
    )
    with running(server):
        outcome: dict[str, Any] = {}

        def publish() -> None:
            started = time.monotonic()
            url = f"{base}{stack.prefix}/process-order"
            response = httpx.post(url, headers=AUTH, json={"order_id": 1}, timeout=30)
            outcome["response"] = response
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(0.3)  # the publish is now retrying against the dead broker
        started = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        health_seconds = time.monotonic() - started
        thread.join(30)
    response = outcome["response"]
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "Task queue unavailable, try again later"}
    # bounded publish retries and socket timeouts: no request hangs on a dead broker
    assert outcome["seconds"] < 15, outcome
    # the blocking publish ran in the threadpool: the event loop kept serving
    assert health_seconds < 1.0, health_seconds


def test_beat_starts_with_the_generated_schedule(stack: Stack) -> None:
    beat = stack.beat("beat", loglevel="debug")
    with running(beat):
        wait_until(lambda: "beat: Starting" in beat.log() or not beat.alive(), 20, "beat")
        time.sleep(4)
        assert beat.alive(), beat.log()
        log = beat.log()
    for name in ("cleanup-expired-tokens", "send-daily-reports"):
        assert f"<ScheduleEntry: {name} " in log, log
    assert "<crontab: 0 9 * * * (m/h/dM/MY/d)>" in log, log
    for bad in ("Traceback", "ERROR", "CRITICAL"):
        assert bad not in log, log


def test_added_task_runs_with_its_arguments(stack: Stack) -> None:
    worker = stack.worker("added", concurrency=1)
    with running(worker):
        payload = {"image_id": 42, "sizes": [64, 128]}
        task_id = stack.queue("/resize-image", json=payload)
        final = stack.final(task_id)
        assert succeeded(final), worker.log()
        assert final["result"] == payload


def test_added_every_2_seconds_task_is_run_by_beat(stack: Stack) -> None:
    worker = stack.worker("heartbeat", concurrency=1)
    beat = stack.beat("beat-heartbeat", loglevel="info")
    with running(beat, worker):
        wait_until(
            lambda: re.search(r"app\.tasks\.tasks\.heartbeat\[[^\]]+\] succeeded", worker.log()),
            20,
            f"beat sending heartbeat and the worker running it\n{beat.log()[-2000:]}",
        )


def _generated_tests_pass(stack: Stack, env: dict[str, str]) -> None:
    # CI=true: a skipped test fails instead, since the broker is there
    output = _run(
        [str(stack.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        stack.project,
        {**env, "CI": "true"},
        timeout=150,
    )
    assert " passed" in output and "skipped" not in output, output


def test_generated_project_tests_pass(stack: Stack, redis_url: str) -> None:
    env = {**stack.env, "CELERY_BROKER_URL": f"{redis_url}/4"}
    env["CELERY_RESULT_BACKEND"] = f"{redis_url}/5"
    _generated_tests_pass(stack, env)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_generated_project_passes_ruff_and_mypy(broker: str, python: Path, workdir: Path) -> None:
    project = scaffold(
        "layered", workdir / f"lint-{broker}", "--runner", "celery", "--broker", broker
    )
    bin_dir = python.parent
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
        project,
    )
    _run([str(bin_dir / "ruff"), "format", "--check", "--no-cache", "."], project)
    _run(
        [
            str(python),
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--python-version",
            "3.11",
            "--cache-dir",
            str(workdir / f"mypy-{broker}"),
            "app",
            "tests",
        ],
        project,
    )


def test_rabbitmq_scaffold_defaults_to_an_amqp_broker(workdir: Path) -> None:
    project = scaffold(
        "layered", workdir / "defaults", "--runner", "celery", "--broker", "rabbitmq"
    )
    config = (project / "app" / "core" / "config.py").read_text()
    assert 'CELERY_BROKER_URL: str = "amqp://localhost:5672//"' in config, config


def test_rabbitmq_broker_email_and_order(rabbit_stack: Stack) -> None:
    stack = rabbit_stack
    worker = stack.worker("rabbitmq", concurrency=1)
    with running(worker):
        assert "amqp://guest:**@127.0.0.1:5672//" in worker.log()
        subject = f"Over RabbitMQ {uuid.uuid4()}"
        email_id = stack.email(subject)
        assert succeeded(stack.final(email_id)), worker.log()
        assert subject in stack.subjects()
        order_id = stack.queue("/process-order", json={"order_id": 31337})
        final = stack.final(order_id)
        assert succeeded(final), worker.log()
        assert final["result"]["order_id"] == 31337
    assert "Traceback" not in worker.log(), worker.log()


def test_rabbitmq_generated_project_tests_pass(rabbit_stack: Stack, redis_url: str) -> None:
    _generated_tests_pass(
        rabbit_stack, {**rabbit_stack.env, "CELERY_RESULT_BACKEND": f"{redis_url}/6"}
    )

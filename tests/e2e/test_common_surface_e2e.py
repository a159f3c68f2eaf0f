"""The common HTTP surface, end to end, on every queue runner: a fresh scaffold of the
`layered` example served by uvicorn, with its real worker and a private redis-server,
answers the same requests the same way.

Per runner: an email is accepted (202) and delivered, a long task queued with
{"steps": n} reports rising progress and ends complete with success, and a long task
cancelled with POST /cancel ends cancelled.
"""

from __future__ import annotations

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

QUEUE_RUNNERS = ["celery", "arq", "taskiq"]
WAIT_SECONDS = 60


def _worker_command(runner: str, python: Path) -> tuple[list[str], str]:
    """The runner's worker for the scaffolded project, and what its log says once it
    takes work."""
    if runner == "celery":
        argv = ["-m", "celery", "-A", "app.tasks.celery_app", "worker", "-P", "prefork"]
        argv += [
            "-c",
            "1",
            "--loglevel=info",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"{uuid.uuid4()}@%h",
        ]
        return [str(python), *argv], " ready."
    if runner == "arq":
        return [str(python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"], (
            "Starting worker"
        )
    broker, tasks = "app.tasks.taskiq_app:broker", "app.tasks.taskiq_tasks"
    command = [str(python.parent / "taskiq"), "worker", broker, tasks, "--workers", "1"]
    return command, "Listening started"


def _settings(runner: str, redis_url: str, sink: SmtpSink) -> dict[str, str]:
    queue = {
        "celery": {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url},
        "arq": {"REDIS_URL": redis_url},
        "taskiq": {"REDIS_URL": redis_url, "TASKIQ_BROKER_URL": redis_url},
    }[runner]
    return {
        **queue,
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_USER": "",
        "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
        "EMAIL_FROM": "shop@example.com",
    }


@dataclass
class Stack:
    runner: str
    base: str
    sink: SmtpSink
    worker: Proc

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/tasks{path}", headers=AUTH, timeout=40, **kwargs)

    def status(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/tasks/status/{task_id}", headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def queue(self, path: str, payload: dict[str, Any]) -> str:
        response = self.post(path, json=payload)
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "queued" and accepted["duplicate"] is False
        assert accepted["status_url"] == f"/tasks/status/{accepted['task_id']}"
        return str(accepted["task_id"])

    def complete(self, task_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.status(task_id)
            return body if body["status"] == "complete" else None

        found: dict[str, Any] = wait_until(
            done, WAIT_SECONDS, f"{self.runner} task {task_id}\n{self.worker.log()[-3000:]}"
        )
        return found


@pytest.fixture(scope="module", params=QUEUE_RUNNERS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    runner: str = request.param
    python = runner_python(runner)
    root = tmp_path_factory.mktemp(f"common-{runner}")
    project = scaffold("layered", root, "--runner", runner)
    logs = root / "logs"
    logs.mkdir()
    with redis_server(root) as redis_url, smtp_sink() as sink:
        env = {**_settings(runner, f"{redis_url}/0", sink), "PYTHONPATH": str(project)}
        command, ready = _worker_command(runner, python)
        worker = start_process(command, cwd=project, log_path=logs / "worker.log", env=env)
        with running(worker):
            wait_until(lambda: ready in worker.log() or not worker.alive(), 30, f"{runner} worker")
            assert worker.alive(), worker.log()
            api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
            with running(api):
                yield Stack(runner, base, sink, worker)


def test_an_email_is_accepted_and_delivered(stack: Stack) -> None:
    subject = f"common {uuid.uuid4().hex}"
    task_id = stack.queue(
        "/send-email", {"to": "ada@example.com", "subject": subject, "body": "Hi"}
    )
    final = stack.complete(task_id)
    assert final["success"] is True and final["error"] is None, final
    assert subject in [str(message["Subject"]) for message in stack.sink.messages]


def test_a_long_task_reports_progress_then_succeeds(stack: Stack) -> None:
    task_id = stack.queue("/long-running", {"steps": 20})
    seen: list[int] = []

    def finished() -> dict[str, Any] | None:
        body = stack.status(task_id)
        assert body["status"] in ("queued", "in_progress", "complete"), body
        if body["status"] == "in_progress" and body["progress"]:
            assert body["progress"]["total"] == 20
            seen.append(body["progress"]["percent"])
        return body if body["status"] == "complete" else None

    final: dict[str, Any] = wait_until(finished, WAIT_SECONDS, "the long task", interval=0.03)
    assert final["success"] is True, final
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen


def test_a_running_task_is_cancelled(stack: Stack) -> None:
    task_id = stack.queue("/long-running", {"steps": 600})
    wait_until(lambda: stack.status(task_id)["progress"], WAIT_SECONDS, "the long task to start")
    response = stack.post(f"/cancel/{task_id}", params={"wait": 20})
    assert response.status_code == 200, response.text
    assert response.json() == {"task_id": task_id, "cancelled": True, "status": "complete"}
    final = stack.status(task_id)
    assert (final["status"], final["success"], final["error"]) == ("complete", False, "cancelled")
    # finished: nothing left to stop, and the answer says how it ended
    again = stack.post(f"/cancel/{task_id}", params={"wait": 0})
    assert again.status_code == 409, again.text
    assert again.json()["cancelled"] is True


def test_an_unknown_task_is_404_on_status_and_cancel(stack: Stack) -> None:
    unknown = uuid.uuid4().hex
    status = httpx.get(f"{stack.base}/tasks/status/{unknown}", headers=AUTH, timeout=10)
    assert status.status_code == 404
    assert stack.post(f"/cancel/{unknown}").status_code == 404

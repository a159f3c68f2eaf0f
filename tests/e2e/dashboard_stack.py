"""A whole scaffolded stack of one queue runner, for the dashboard's end-to-end tests.

The `layered` example scaffolded with the runner (the dashboard is on by default), a
private redis-server, an SMTP sink that refuses every recipient until told otherwise, a
real worker, the runner's scheduler (celery beat, the taskiq scheduler; arq runs cron
jobs in its worker) and uvicorn serving the app, all from .venvs/<runner>.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.harness import (
    AUTH,
    Proc,
    RefusingSink,
    RestartableRedis,
    refusing_sink,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

WAIT = 30.0
RECIPIENT = "ada.lovelace@example.com"
# the stacks keep finished results this long (the generated default is an hour or a day)
RESULT_RETENTION = 120


def _commands(runner: str, python: Path, logs: Path) -> dict[str, list[str]]:
    """The worker's and the scheduler's command lines (no scheduler for arq)."""
    bin_dir = python.parent
    if runner == "celery":
        app = "app.tasks.celery_app"
        return {
            "worker": [
                *(str(python), "-m", "celery", "-A", app, "worker", "-P", "prefork"),
                *("-c", "2", "--loglevel=info", "-n", "dashboard@%h"),
                *("--without-mingle", "--without-gossip"),
            ],
            "scheduler": [
                *(str(python), "-m", "celery", "-A", app, "beat", "--loglevel=info"),
                *("--schedule", str(logs / "celerybeat-schedule")),
            ],
        }
    if runner == "arq":
        return {"worker": [str(bin_dir / "arq"), "app.tasks.arq_worker.WorkerSettings"]}
    broker, tasks = "app.tasks.taskiq_app:broker", "app.tasks.taskiq_tasks"
    return {
        "worker": [str(bin_dir / "taskiq"), "worker", broker, tasks, "--workers", "1"],
        "scheduler": [
            *(str(bin_dir / "taskiq"), "scheduler", "app.tasks.taskiq_app:scheduler"),
            *(tasks, "--update-interval", "1"),
        ],
    }


def _env(runner: str, redis_url: str, sink: RefusingSink) -> dict[str, str]:
    mail = {
        "BGTASKS_RESULT_RETENTION_SECONDS": str(RESULT_RETENTION),
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_USER": "",
        "SMTP_STARTTLS": "false",
        "EMAIL_FROM": "shop@example.com",
    }
    if runner == "celery":
        return {
            "CELERY_BROKER_URL": f"{redis_url}/0",
            "CELERY_RESULT_BACKEND": f"{redis_url}/1",
            **mail,
        }
    if runner == "arq":
        return {"REDIS_URL": f"{redis_url}/0", **mail}
    return {"REDIS_URL": f"{redis_url}/0", "TASKIQ_BROKER_URL": f"{redis_url}/0", **mail}


@dataclass
class DashboardStack:
    runner: str
    project: Path
    sink: RefusingSink
    base: str
    prefix: str
    worker: Proc
    scheduler: Proc | None
    redis: RestartableRedis
    bases: list[str] = field(default_factory=list)  # every web process, the first too

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def url(self, path: str) -> str:
        return f"{self.base}{self.prefix}{path}"

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url(path), headers=AUTH, json=body, timeout=10)

    def data(self, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", AUTH)
        return httpx.get(self.url("/dashboard/data"), headers=headers, timeout=10, **kwargs)

    def board(self) -> dict[str, Any]:
        response = self.data()
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def board_when(
        self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT
    ) -> dict[str, Any]:
        """The dashboard's data once `check` holds for it."""

        def ready() -> dict[str, Any] | None:
            body = self.board()
            return body if check(body) else None

        found: dict[str, Any] = wait_until(ready, timeout, what, interval=0.2)
        return found

    def long_task(self, steps: int) -> str:
        response = self.post("/long-running", {"steps": steps})
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def refused_email(self, subject: str) -> str:
        body = {"to": RECIPIENT, "subject": subject, "body": "From the dashboard e2e."}
        response = self.post("/send-email", body)
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def result_ttl(self, task_id: str) -> int:
        """Seconds the runner's Redis still keeps a finished task's result (or status)."""
        database, key = {
            "celery": (1, f"celery-task-meta-{task_id}"),
            "arq": (0, f"arq:result:{task_id}"),
            "taskiq": (0, f"bgtasks:taskiq:task:{task_id}"),
        }[self.runner]
        client = redis.Redis.from_url(f"{self.redis_url}/{database}")
        try:
            return int(client.ttl(key))
        finally:
            client.close()

    def logs(self) -> str:
        parts = [self.worker.log()] + ([self.scheduler.log()] if self.scheduler else [])
        return "\n".join(parts)[-6000:]


@contextlib.contextmanager
def dashboard_stack(
    runner: str, root: Path, *init_args: str, workers: int = 1, webs: int = 1
) -> Iterator[DashboardStack]:
    """The stack, scaffolded with `init_args` (e.g. "--with", "metrics"), with `workers`
    worker processes and `webs` web processes (each its own uvicorn)."""
    python = runner_python(runner)
    project = scaffold("layered", root, "--runner", runner, *init_args)
    assert list(project.rglob(f"{runner}_dashboard.py")), "the dashboard is on by default"
    logs = root / "logs"
    logs.mkdir()
    commands = _commands(runner, python, logs)
    with restartable_redis(root) as server, refusing_sink() as sink:
        env = {**_env(runner, server.url, sink), "PYTHONPATH": str(project)}
        worker_procs = []
        for number in range(workers):
            command = [
                arg.replace("dashboard@", f"dashboard{number}@") for arg in commands["worker"]
            ]
            log = logs / f"worker-{number}.log"
            worker_procs.append(start_process(command, project, log, env))
        scheduler = None
        if "scheduler" in commands:
            scheduler = start_process(commands["scheduler"], project, logs / "sched.log", env)
        apis, bases = [], []
        for number in range(webs):
            log = logs / f"uvicorn-{number}.log"
            api, web_base = serve_app(python, project, "app.main:app", log, env)
            apis.append(api)
            bases.append(web_base)
        procs = [p for p in (*apis, *worker_procs, scheduler) if p is not None]
        with running(*procs):
            base = bases[0]
            paths = httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
            (page,) = [p for p in paths if p.endswith("/dashboard")]
            stack = DashboardStack(
                runner,
                project,
                sink,
                base,
                page.removesuffix("/dashboard"),
                worker_procs[0],
                scheduler,
                server,
                bases,
            )
            for proc in procs:
                if not proc.alive():
                    pytest.fail(f"a process of the stack exited:\n{proc.log()}")
            yield stack


def csrf_of(page_html: str) -> str:
    """The CSRF token the signed-in page carries in its configuration."""
    found = re.search(r'"csrf": "([^"]*)"', page_html)
    assert found, page_html[:2000]
    return found.group(1)


def now() -> float:
    return time.time()

"""`bgtasks migrate --to taskiq` end to end: an arq project, moved, then run on taskiq.

The `layered` example is scaffolded for arq and grown by add-task (ping; resize with
arguments, whose body is then edited and uses arq's ctx; tick every 5 s). Its routes
are read from the arq app's OpenAPI (.venvs/arq) before the move and from the taskiq
app's (.venvs/taskiq) after it. Then a private redis-server, a real `taskiq worker`,
a `taskiq scheduler`, uvicorn and an SMTP sink run the moved project: every route
arq had queues its task and it completes, the schedule fires, and the edited body's
result comes back through the unchanged status route: a project scaffolded with the
common task API (`api_shape = "common"`) keeps answering it, under `/tasks`.
"""

from __future__ import annotations

import ast
import json
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tree_hashes
from tests.e2e.harness import (
    AUTH,
    Proc,
    SmtpSink,
    add_task,
    bgtasks,
    edit_task_body,
    openapi_routes,
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

APP = "app.main:app"
BROKER = "app.tasks.taskiq_app:broker"
SCHEDULER = "app.tasks.taskiq_app:scheduler"
TASKS = "app.tasks.taskiq_tasks"
ARQ_TASKS = "app/tasks/arq_tasks.py"
EVERY = 5  # tick's --every, seconds
ADDED = ("ping", "resize", "tick")
# resize's body after the user's edit: arq's ctx in it, a result that shows the edit
EDITED_BODY = [
    '    marker = {"edited": True, "job_id": ctx["job_id"], "try": ctx["job_try"]}',
    '    return {"width": width * 2, "name": name.upper(), **marker}',
]
ACCEPTED = {"task_id", "status", "status_url", "duplicate"}
STATUS = {"task_id", "status", "success", "result", "error", "tries", "progress"}


@dataclass
class Moved:
    project: Path
    arq_routes: set[tuple[str, str]]
    arq_files: list[str]  # what init/add-task generated for arq (.bgtasks.toml [files])


@dataclass
class Stack:
    moved: Moved
    sink: SmtpSink
    base: str
    worker: Proc
    scheduler: Proc
    scheduler_started: float
    queued: set[str] = field(default_factory=set)  # job ids the routes handed out

    def post(self, path: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return httpx.post(
            f"{self.base}/tasks{path}",
            json={} if payload is None else payload,
            headers=headers,
            timeout=30,
            **kwargs,
        )

    def status(self, job_id: str) -> httpx.Response:
        return httpx.get(f"{self.base}/tasks/status/{job_id}", headers=AUTH, timeout=10)

    def queue(self, path: str, payload: Any = None) -> str:
        response = self.post(path, payload)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == ACCEPTED and body["duplicate"] is False, body
        assert body["status_url"] == f"/tasks/status/{body['task_id']}", body
        job_id: str = body["task_id"]
        self.queued.add(job_id)
        return job_id

    def wait_complete(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.status(job_id).json()
            return body if body["status"] == "complete" else None

        body: dict[str, Any] = wait_until(
            done, timeout, f"job {job_id} complete\n--- worker\n{self.worker.log()[-3000:]}"
        )
        assert set(body) == STATUS, body
        return body


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Moved:
    arq_python = runner_python("arq")
    runner_python("taskiq")  # fail (CI) or skip before the slow part
    project = scaffold("layered", tmp_path_factory.mktemp("migrate-e2e"), "--runner", "arq")
    add_task(project, "ping")
    add_task(project, "resize", "--arg", "width:int", "--arg", "name:str")
    add_task(project, "tick", "--every", str(EVERY))
    edit_task_body(project / ARQ_TASKS, "resize", EDITED_BODY)
    arq_routes = openapi_routes(arq_python, project, APP)
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "arq"

    before = tree_hashes(project)
    dry = bgtasks(project, "migrate", "--to", "taskiq", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert tree_hashes(project) == before, "--dry-run wrote something"

    result = bgtasks(project, "migrate", "--to", "taskiq")
    assert result.returncode == 0, result.stdout + result.stderr
    return Moved(project, arq_routes, sorted(state["files"]))


@pytest.fixture(scope="module")
def stack(moved: Moved) -> Iterator[Stack]:
    python = runner_python("taskiq")
    project = moved.project
    logs = project.parent / "logs"
    logs.mkdir()
    taskiq = str(python.parent / "taskiq")
    with redis_server(project.parent) as redis_url, smtp_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": f"{redis_url}/0",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "TASKIQ_TASK_TIMEOUT": "10",
            "PYTHONPATH": str(project),
        }

        def start(name: str, ready: str, *argv: str) -> Proc:
            proc = start_process([taskiq, *argv], project, logs / f"{name}.log", env)
            wait_until(lambda: ready in proc.log() or not proc.alive(), 30, f"taskiq {name}")
            assert proc.alive(), proc.log()
            return proc

        worker = start("worker", "Listening started", "worker", BROKER, TASKS, "--workers", "1")
        with running(worker):
            scheduler_argv = ("scheduler", SCHEDULER, TASKS, "--update-interval", "1")
            scheduler = start("scheduler", "Startup completed", *scheduler_argv)
            started = time.monotonic()
            with running(scheduler):
                api, base = serve_app(python, project, APP, logs / "uvicorn.log", env)
                with running(api):
                    yield Stack(moved, sink, base, worker, scheduler, started)


def test_the_project_now_runs_taskiq_without_arq(moved: Moved) -> None:
    project = moved.project
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["runners"] == ["taskiq"]
    arq_files = [f for f in moved.arq_files if "arq" in Path(f).name]
    assert ARQ_TASKS in arq_files and "app/tasks/arq_worker.py" in arq_files
    assert [f for f in arq_files if (project / f).exists()] == []
    assert not any("arq" in f for f in state["files"]), state["files"]
    assert (project / "app/tasks/taskiq_tasks.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    names = [
        re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0] for d in pyproject["project"]["dependencies"]
    ]
    assert "arq" not in names and "taskiq" in names, names
    assert "arq" not in (project / "app/main.py").read_text()
    # wired and current for the commands that come after
    check = bgtasks(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_edited_body_is_kept_with_ctx_translated(moved: Moved) -> None:
    source = (moved.project / "app/tasks/taskiq_tasks.py").read_text()
    (node,) = (
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.AsyncFunctionDef) and n.name == "resize"
    )
    body = source.splitlines()[node.body[1].lineno - 1 : node.body[-1].end_lineno]
    translated = [
        line.replace('ctx["job_id"]', "control.task_id").replace('ctx["job_try"]', "control.tries")
        for line in EDITED_BODY
    ]
    assert body == translated
    assert "ctx" not in source.split("async def resize", 1)[1].split("\nasync def ", 1)[0]


def test_list_shows_the_three_added_tasks(moved: Moved) -> None:
    listed = bgtasks(moved.project, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    added = sorted(name for name, row in rows.items() if row["added_by"] == "add-task")
    assert added == sorted(ADDED), rows
    for name in ADDED:
        assert rows[name]["route"] == f"POST /tasks/{name}", rows[name]
    assert rows["tick"]["schedule"] and not rows["resize"]["schedule"]


def test_the_taskiq_app_has_every_route_the_arq_app_had(moved: Moved) -> None:
    routes = openapi_routes(runner_python("taskiq"), moved.project, APP)
    assert moved.arq_routes - routes == set()
    task_routes = {r for r in routes if r[0].startswith("/tasks/")}
    assert task_routes == {r for r in moved.arq_routes if r[0].startswith("/tasks/")}
    for name in ADDED:
        assert (f"/tasks/{name}", "post") in task_routes
    assert ("/tasks/status/{task_id}", "get") in task_routes
    assert ("/tasks/cancel/{task_id}", "post") in task_routes


def test_every_task_queued_through_its_route_completes(stack: Stack) -> None:
    queued = {
        "/send-email": {"to": "ada@example.com", "subject": "Moved", "body": "Hi"},
        "/process-data": {"data_id": 7, "values": [1, 2, 3]},
        "/long-running": {"steps": 3},
        "/ping": None,
        "/resize": {"width": 21, "name": "cat"},
        "/tick": None,
    }
    job_ids = {path: stack.queue(path, payload) for path, payload in queued.items()}
    results = {}
    for path, job_id in job_ids.items():
        body = stack.wait_complete(job_id)
        assert body["success"] is True and body["error"] is None, (path, body)
        assert body["task_id"] == job_id and body["tries"] == 1, (path, body)
        results[path] = body["result"]
    assert results["/process-data"]["mean"] == 2
    assert results["/long-running"] == {"steps": 3}
    assert results["/ping"] == {} and results["/tick"] == {}
    (message,) = stack.sink.messages
    assert message["To"] == "ada@example.com" and message["Subject"] == "Moved"
    # the edited body ran: doubled width, upper-case name, the marker, the job's own id
    assert results["/resize"] == {
        "width": 42,
        "name": "CAT",
        "edited": True,
        "job_id": job_ids["/resize"],
        "try": 1,
    }


def test_an_idempotency_key_answers_the_same_job(stack: Stack) -> None:
    key = {"Idempotency-Key": "migrate-e2e-1"}
    first = stack.post("/resize", {"width": 1, "name": "a"}, headers=key)
    assert first.status_code == 202, first.text
    second = stack.post("/resize", {"width": 1, "name": "a"}, headers=key)
    assert second.status_code == 200, second.text
    assert second.json()["duplicate"] is True
    assert second.json()["task_id"] == first.json()["task_id"]


def test_cancel_keeps_the_common_answer(stack: Stack) -> None:
    job_id = stack.queue("/long-running", {"steps": 80})  # 8 s < the 10 s time limit
    wait_until(
        lambda: stack.status(job_id).json()["status"] == "in_progress",
        10,
        f"long task running\n{stack.worker.log()[-2000:]}",
    )
    cancelled = stack.post(f"/cancel/{job_id}", params={"wait": 5})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": job_id, "cancelled": True, "status": "complete"}
    body = stack.status(job_id).json()
    assert body["success"] is False and body["error"] == "cancelled", body


def test_the_scheduler_fires_tick_every_5_seconds(stack: Stack) -> None:
    def scheduled() -> set[str]:
        # tick's own log line names its task id: those the routes did not queue
        return set(re.findall(r"tick task (\S+)", stack.worker.log())) - stack.queued

    wait_until(
        lambda: len(scheduled()) >= 2,
        3 * EVERY,
        f"two scheduled ticks\n--- scheduler\n{stack.scheduler.log()[-2000:]}"
        f"\n--- worker\n{stack.worker.log()[-2000:]}",
        interval=0.5,
    )
    elapsed = time.monotonic() - stack.scheduler_started
    # every 5 s, not faster: at most one firing per slot since the scheduler started
    assert len(scheduled()) <= elapsed / EVERY + 1, (len(scheduled()), elapsed)
    assert "Sending task tick" in stack.scheduler.log()


def test_migrate_again_has_nothing_to_do(moved: Moved) -> None:
    before = tree_hashes(moved.project)
    again = bgtasks(moved.project, "migrate", "--to", "taskiq")
    message = again.stdout + again.stderr
    assert "already runs taskiq" in message and "nothing to move" in message, message
    assert tree_hashes(moved.project) == before
    # like every command run twice (or after a crash recovery finished the move): exit 0
    assert again.returncode == 0, f"exit {again.returncode}: {message}"

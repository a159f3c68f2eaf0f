"""`bgtasks migrate --to arq|celery|taskiq` from a builtin scaffold, end to end.

The `layered` example is scaffolded with `--runner builtin` and grown by add-task (resize
with arguments, whose body is then edited to return a distinctive result and log a
marker; ping without any). Its routes are read from the builtin app's OpenAPI before
the move. Then, per target, the moved project runs for real: a private redis-server,
the target's worker, uvicorn and an SMTP sink. Every route the builtin app had
(POST /notifications/send-email, /process, /resize, /ping) still answers 202 with its
`detail`, now with the `task_id` of a task the worker runs: the status route shows each
complete, resize with the edited body's result, and the emails reach the sink. (On arq,
which runs coroutine functions only, the edited plain body runs in a thread.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
BUILTIN_TASKS = "app/tasks/notifications.py"
WAIT_SECONDS = 60
MARKER = "resize-edited-by-hand"
# resize after the user's edit: its own result, a log line the worker prints (a warning:
# arq's worker configures only its own loggers, Python's last resort prints warnings)
EDITED_RESIZE = f'''def resize(
    width: int,
    name: str,
) -> dict[str, object]:
    """Runs after the response that queued it. Replace the body with your work."""
    logger.warning("{MARKER} %s", name)
    return {{"width": width * 3, "name": name[::-1], "edited": True}}
'''
TASKS_MODULE = {
    "arq": "app/tasks/arq_tasks.py",
    "celery": "app/tasks/tasks.py",
    "taskiq": "app/tasks/taskiq_tasks.py",
}
ACCEPTED = {"status", "detail", "duplicate", "task_id", "status_url"}


def _worker_command(runner: str, python: Path) -> tuple[list[str], str]:
    """The target's worker for the moved project, and what its log says once ready."""
    if runner == "arq":
        worker = [str(python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"]
        return worker, "Starting worker"
    if runner == "celery":
        argv = ["-m", "celery", "-A", "app.tasks.celery_app", "worker", "-P", "prefork"]
        argv += ["-c", "1", "--loglevel=info", "--without-mingle", "--without-gossip"]
        return [str(python), *argv, "-n", f"{uuid.uuid4()}@%h"], " ready."
    broker, tasks = "app.tasks.taskiq_app:broker", "app.tasks.taskiq_tasks"
    command = [str(python.parent / "taskiq"), "worker", broker, tasks, "--workers", "1"]
    return command, "Listening started"


def _settings(runner: str, redis_url: str, sink: SmtpSink) -> dict[str, str]:
    queue = {
        "arq": {"REDIS_URL": redis_url},
        "celery": {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url},
        "taskiq": {"REDIS_URL": redis_url, "TASKIQ_BROKER_URL": redis_url},
    }[runner]
    # the builtin scaffold's variables, as the deployment already sets them
    return {
        **queue,
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_USER": "",
        "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
        "EMAIL_FROM": "shop@example.com",
    }


@dataclass
class Moved:
    runner: str
    project: Path
    builtin_routes: set[tuple[str, str]]
    builtin_files: list[str]
    output: str


@dataclass
class Stack:
    moved: Moved
    base: str
    sink: SmtpSink
    worker: Proc

    def post(self, path: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return httpx.post(
            f"{self.base}{path}",
            json={} if payload is None else payload,
            headers=headers,
            timeout=40,
            **kwargs,
        )

    def status(self, status_url: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}{status_url}", headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def complete(self, status_url: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.status(status_url)
            return body if body["status"] == "complete" else None

        found: dict[str, Any] = wait_until(
            done, WAIT_SECONDS, f"{status_url} complete\n--- worker\n{self.worker.log()[-3000:]}"
        )
        return found


@pytest.fixture(scope="module", params=["arq", "celery", "taskiq"])
def moved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Moved:
    runner: str = request.param
    python = runner_python(runner)  # fail (CI) or skip before the slow part
    project = scaffold(
        "layered", tmp_path_factory.mktemp(f"builtin-{runner}"), "--runner", "builtin"
    )
    add_task(project, "resize", "--arg", "width:int", "--arg", "name:str")
    add_task(project, "ping")
    path = project / BUILTIN_TASKS
    source = path.read_text()
    (node,) = (
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "resize"
    )
    lines = source.splitlines(keepends=True)
    lines[node.lineno - 1 : node.end_lineno] = [EDITED_RESIZE]
    path.write_text("".join(lines))
    builtin_routes = openapi_routes(python, project, APP)
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "builtin"

    before = tree_hashes(project)
    dry = bgtasks(project, "migrate", "--to", runner, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert tree_hashes(project) == before, "--dry-run wrote something"
    result = bgtasks(project, "migrate", "--to", runner)
    assert result.returncode == 0, result.stdout + result.stderr
    return Moved(runner, project, builtin_routes, sorted(state["files"]), result.stdout)


@pytest.fixture(scope="module")
def stack(moved: Moved) -> Iterator[Stack]:
    python = runner_python(moved.runner)
    project = moved.project
    logs = project.parent / "logs"
    logs.mkdir()
    with redis_server(project.parent) as redis_url, smtp_sink() as sink:
        env = {**_settings(moved.runner, f"{redis_url}/0", sink), "PYTHONPATH": str(project)}
        command, ready = _worker_command(moved.runner, python)
        worker = start_process(command, cwd=project, log_path=logs / "worker.log", env=env)
        with running(worker):
            wait_until(
                lambda: ready in worker.log() or not worker.alive(), 30, f"{moved.runner} worker"
            )
            assert worker.alive(), worker.log()
            api, base = serve_app(python, project, APP, logs / "uvicorn.log", env)
            with running(api):
                yield Stack(moved, base, sink, worker)


def test_the_project_now_runs_the_target_without_builtin(moved: Moved) -> None:
    project = moved.project
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == moved.runner and state["runners"] == [moved.runner]
    assert set(state["tasks"]) == {"process_notification", "resize", "ping"}
    assert {t["runner"] for t in state["tasks"].values()} == {moved.runner}
    # builtin's modules are gone, except the router, rewritten and no longer bgtasks'
    for rel in moved.builtin_files:
        if rel in ("app/api/v1/routes/notifications.py", "app/tasks/__init__.py"):
            continue
        if rel == "app/tasks/auth.py" and moved.runner == "taskiq":
            continue  # taskiq's own access module, at the same path
        assert not (project / rel).exists(), rel
    assert "app/api/v1/routes/notifications.py" not in state["files"]
    assert not (project / ".bgtasks/base/app/api/v1/routes/notifications.py.base").exists()
    main = (project / "app/main.py").read_text()
    assert "notifications_router" in main  # the include serves the kept routes
    check = bgtasks(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_edited_body_is_carried_line_for_line(moved: Moved) -> None:
    source = (moved.project / TASKS_MODULE[moved.runner]).read_text()
    functions = {
        n.name: n
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    # a plain def stays one, with its own annotation: the task itself on celery and taskiq
    # (taskiq runs it in its thread pool), on arq (coroutines only) a private function
    # the task awaits in a thread
    node = functions["_resize_sync" if moved.runner == "arq" else "resize"]
    assert isinstance(node, ast.FunctionDef)
    body = source.splitlines()[node.end_lineno - 2 : node.end_lineno]
    assert body == EDITED_RESIZE.splitlines()[-2:]
    assert node.returns is not None and ast.unparse(node.returns) == "dict[str, object]"
    if moved.runner == "arq":
        task = functions["resize"]
        assert isinstance(task, ast.AsyncFunctionDef)
        assert task.returns is not None and ast.unparse(task.returns) == "dict[str, object]"
        call = "return await asyncio.to_thread(_resize_sync, width, name)"
        assert ast.unparse(task.body[-1]) == call


def test_the_moved_project_passes_ruff(moved: Moved) -> None:
    ruff = [sys.executable, "-m", "ruff"]
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        result = subprocess.run(
            [*ruff, *command, "app", "tests"],
            cwd=moved.project,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_builtin_route_is_still_served(moved: Moved) -> None:
    routes = openapi_routes(runner_python(moved.runner), moved.project, APP)
    assert moved.builtin_routes - routes == set()
    for path in ("send-email", "process", "resize", "ping"):
        assert (f"/notifications/{path}", "post") in moved.builtin_routes
    # and the target's common routes beside them
    for path in ("send-email", "process-notification", "resize", "ping"):
        assert (f"/tasks/{path}", "post") in routes
    assert ("/tasks/status/{task_id}", "get") in routes


def test_every_route_queues_a_task_the_worker_runs(stack: Stack) -> None:
    queued = {
        "/notifications/send-email": {"to": "ada@example.com", "subject": "Moved", "body": "Hi"},
        "/notifications/process": {"user_id": 7, "message": "Hello", "email": "bob@example.com"},
        "/notifications/resize": {"width": 7, "name": "cat"},
        "/notifications/ping": None,
    }
    answers = {}
    for path, payload in queued.items():
        response = stack.post(path, payload)
        assert response.status_code == 202, (path, response.text)
        body = response.json()
        # builtin's answer, as clients read it, plus the task's id and status route
        assert set(body) == ACCEPTED, body
        assert body["status"] == "accepted" and body["duplicate"] is False, body
        assert body["detail"], body
        assert body["status_url"].endswith(f"/status/{body['task_id']}"), body
        answers[path] = body
    results = {}
    for path, body in answers.items():
        status = stack.complete(body["status_url"])
        assert status["success"] is True and status["error"] is None, (path, status)
        results[path] = status["result"]
    # the edited body ran on the worker: its result and its log line
    assert results["/notifications/resize"] == {"width": 21, "name": "tac", "edited": True}
    assert f"{MARKER} cat" in stack.worker.log()
    assert results["/notifications/process"] == {"user_id": 7, "message": "Hello"}
    assert results["/notifications/ping"] == {}
    wait_until(lambda: len(stack.sink.messages) >= 2, WAIT_SECONDS, "both emails at the sink")
    sent = {(m["To"], m["Subject"]) for m in stack.sink.messages}
    assert sent == {("ada@example.com", "Moved"), ("bob@example.com", "New notification")}


def test_an_idempotency_key_still_answers_the_first_task(stack: Stack) -> None:
    key = {"Idempotency-Key": f"builtin-move-{stack.moved.runner}"}
    first = stack.post("/notifications/resize", {"width": 1, "name": "a"}, headers=key)
    assert first.status_code == 202, first.text
    again = stack.post("/notifications/resize", {"width": 1, "name": "a"}, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["task_id"] == first.json()["task_id"]


def test_list_shows_the_carried_tasks(moved: Moved) -> None:
    listed = bgtasks(moved.project, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    added = sorted(name for name, row in rows.items() if row["added_by"] == "add-task")
    assert added == ["ping", "process_notification", "resize"], rows


def test_migrate_again_has_nothing_to_do(moved: Moved) -> None:
    before = tree_hashes(moved.project)
    again = bgtasks(moved.project, "migrate", "--to", moved.runner)
    message = again.stdout + again.stderr
    assert again.returncode == 0, message
    assert "nothing to move" in message, message
    assert tree_hashes(moved.project) == before

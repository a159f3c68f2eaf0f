"""`bgtasks migrate --to taskiq` from a celery scaffold, end to end.

The `layered` example is scaffolded for celery and grown by add-task (ping; resize with
arguments, whose body is then edited to read the bound task's `self.request.id` and
`self.request.retries` and return a distinctive result; tick every 5 s). The celery
app's OpenAPI document is read (.venvs/celery) before the move and the taskiq app's
(.venvs/taskiq) after it. Then the moved project runs for real: a private redis-server,
a `taskiq worker`, one `taskiq scheduler`, uvicorn and an SMTP sink, configured by the
variables a celery deployment already sets (CELERY_BROKER_URL, CELERY_RESULT_BACKEND)
and no taskiq one. Every route queues its task and the worker completes it (resize with
the edited body's result), the email reaches the sink, tick fires once per period and
no more, and status and cancel answer with the paths and fields celery's did.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tree_hashes
from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    Proc,
    SmtpSink,
    add_task,
    bgtasks,
    edit_task_body,
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

APP = "app.main:app"
BROKER = "app.tasks.taskiq_app:broker"
SCHEDULER = "app.tasks.taskiq_app:scheduler"
TASKS = "app.tasks.taskiq_tasks"
CELERY_TASKS = "app/tasks/tasks.py"
EVERY = 5  # tick's --every, seconds
ADDED = ("ping", "resize", "tick")
# resize's body after the user's edit: the bound task's request in it
EDITED_BODY = [
    '    marker = {"edited": True, "id": self.request.id, "retries": self.request.retries}',
    '    return {"width": width * 2, "name": name.upper(), **marker}',
]
ACCEPTED = {"task_id", "status", "status_url", "duplicate"}
STATUS = {"task_id", "status", "success", "result", "error", "tries", "progress"}
# what only celery's status answer has (a running task whose worker died): optional there
CELERY_ONLY_STATUS = {"lost", "redelivery_due_at"}
STATUS_ROUTE = ("/tasks/status/{task_id}", "get")
CANCEL_ROUTE = ("/tasks/cancel/{task_id}", "post")

# the app's whole OpenAPI document, as the runner's interpreter imports it
_OPENAPI = """
import importlib, json, sys
module, _, name = sys.argv[1].partition(":")
print(json.dumps(getattr(importlib.import_module(module), name).openapi()))
"""


def openapi(python: Path, project: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-c", _OPENAPI, APP],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "BGTASKS_API_TOKEN": API_TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def answer_fields(document: dict[str, Any], route: tuple[str, str]) -> tuple[set[str], set[str]]:
    """(the fields, the required ones) of the route's 200 answer."""
    operation = document["paths"][route[0]][route[1]]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rpartition("/")[2]
    model = document["components"]["schemas"][name]
    return set(model["properties"]), set(model.get("required", []))


def parameters(document: dict[str, Any], route: tuple[str, str]) -> set[tuple[str, str]]:
    """The route's (name, where) parameters, the Authorization header aside."""
    operation = document["paths"][route[0]][route[1]]
    return {
        (p["name"], p["in"])
        for p in operation.get("parameters", [])
        if p["name"].lower() != "authorization"
    }


@dataclass
class Moved:
    project: Path
    celery_api: dict[str, Any]
    celery_files: list[str]  # what init/add-task generated for celery (.bgtasks.toml [files])


@dataclass
class Stack:
    moved: Moved
    sink: SmtpSink
    base: str
    worker: Proc
    scheduler: Proc
    scheduler_started: float
    redis_url: str  # the private redis-server's, without a database
    queued: set[str] = field(default_factory=set)  # task ids the routes handed out

    def post(self, path: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return httpx.post(
            f"{self.base}/tasks{path}",
            json={} if payload is None else payload,
            headers=headers,
            timeout=30,
            **kwargs,
        )

    def status(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/tasks/status/{task_id}", headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def queue(self, path: str, payload: Any = None) -> str:
        response = self.post(path, payload)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == ACCEPTED and body["duplicate"] is False, body
        assert body["status_url"] == f"/tasks/status/{body['task_id']}", body
        task_id: str = body["task_id"]
        self.queued.add(task_id)
        return task_id

    def wait_complete(self, task_id: str, timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.status(task_id)
            return body if body["status"] == "complete" else None

        body: dict[str, Any] = wait_until(
            done, timeout, f"task {task_id} complete\n--- worker\n{self.worker.log()[-3000:]}"
        )
        assert set(body) == STATUS, body
        return body


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Moved:
    celery_python = runner_python("celery")
    runner_python("taskiq")  # fail (CI) or skip before the slow part
    project = scaffold("layered", tmp_path_factory.mktemp("migrate-celery"), "--runner", "celery")
    add_task(project, "ping")
    add_task(project, "resize", "--arg", "width:int", "--arg", "name:str")
    add_task(project, "tick", "--every", str(EVERY))
    edit_task_body(project / CELERY_TASKS, "resize", EDITED_BODY)
    celery_api = openapi(celery_python, project)
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "celery" and state["layout"]["api_shape"] == "common"

    before = tree_hashes(project)
    dry = bgtasks(project, "migrate", "--to", "taskiq", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert tree_hashes(project) == before, "--dry-run wrote something"

    result = bgtasks(project, "migrate", "--to", "taskiq")
    assert result.returncode == 0, result.stdout + result.stderr
    return Moved(project, celery_api, sorted(state["files"]))


@pytest.fixture(scope="module")
def stack(moved: Moved) -> Iterator[Stack]:
    python = runner_python("taskiq")
    project = moved.project
    logs = project.parent / "logs"
    logs.mkdir()
    taskiq = str(python.parent / "taskiq")
    with redis_server(project.parent) as redis_url, smtp_sink() as sink:
        env = {
            # a celery deployment's variables, unchanged by the move: taskiq's fields of
            # the same meaning read them
            "CELERY_BROKER_URL": f"{redis_url}/0",
            "CELERY_RESULT_BACKEND": f"{redis_url}/1",
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "TASKIQ_TASK_TIMEOUT": "15",
            "PYTHONPATH": str(project),
        }
        # nothing taskiq-named from outside: only the celery variables may reach Redis
        assert not any(k.startswith("TASKIQ_BROKER") or k == "REDIS_URL" for k in os.environ)

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
                    yield Stack(moved, sink, base, worker, scheduler, started, redis_url)


def test_the_project_now_runs_taskiq_without_celery(moved: Moved) -> None:
    project = moved.project
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["runners"] == ["taskiq"]
    assert CELERY_TASKS in moved.celery_files and "app/tasks/celery_app.py" in moved.celery_files
    gone = [f for f in moved.celery_files if f != "app/tasks/__init__.py"]
    assert [f for f in gone if (project / f).exists()] == []
    assert not any("celery" in f for f in state["files"]), state["files"]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    names = [
        re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0] for d in pyproject["project"]["dependencies"]
    ]
    assert "celery" not in names and "taskiq" in names, names
    assert "celery" not in (project / "Procfile").read_text()
    assert "celery" not in (project / "app/main.py").read_text()
    check = bgtasks(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_edited_body_is_kept_with_the_request_translated(moved: Moved) -> None:
    source = (moved.project / "app/tasks/taskiq_tasks.py").read_text()
    (node,) = (
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "resize"
    )
    body = source.splitlines()[node.body[1].lineno - 1 : node.body[-1].end_lineno]
    translated = [
        line.replace("self.request.id", "control.task_id").replace(
            "self.request.retries", "(control.tries - 1)"
        )
        for line in EDITED_BODY
    ]
    assert body == translated
    assert [a.arg for a in node.args.args] == ["width", "name", "control"]


def test_the_moved_project_passes_ruff_and_mypy(moved: Moved, tmp_path: Path) -> None:
    python = runner_python("taskiq")
    commands = [
        [sys.executable, "-m", "ruff", "check", "--no-cache", "app", "tests"],
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "app", "tests"],
        [str(python.parent / "mypy"), "--strict", "--ignore-missing-imports"]
        + ["--cache-dir", str(tmp_path / "mypy-cache"), "app", "tests"],
    ]
    for command in commands:
        result = subprocess.run(
            command, cwd=moved.project, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_status_and_cancel_keep_celerys_paths_and_fields(moved: Moved) -> None:
    after = openapi(runner_python("taskiq"), moved.project)
    before = moved.celery_api
    for route in (STATUS_ROUTE, CANCEL_ROUTE, ("/tasks/send-email", "post")):
        assert route in routes(before) and route in routes(after), route
        assert parameters(after, route) == parameters(before, route), route
    fields, required = answer_fields(after, STATUS_ROUTE)
    celery_fields, celery_required = answer_fields(before, STATUS_ROUTE)
    assert fields == celery_fields - CELERY_ONLY_STATUS == STATUS
    assert required == celery_required
    assert answer_fields(after, CANCEL_ROUTE) == answer_fields(before, CANCEL_ROUTE)
    # the added tasks' routes are where celery served them
    for name in ADDED:
        assert (f"/tasks/{name}", "post") in routes(before) & routes(after), name


def test_every_task_queued_through_its_route_completes(stack: Stack) -> None:
    queued = {
        "/send-email": {"to": "ada@example.com", "subject": "Moved", "body": "Hi"},
        "/process-data": {"data_id": 7, "values": [1, 2, 3]},
        "/long-running": {"steps": 3},
        "/ping": None,
        "/resize": {"width": 21, "name": "cat"},
        "/tick": None,
    }
    task_ids = {path: stack.queue(path, payload) for path, payload in queued.items()}
    results = {}
    for path, task_id in task_ids.items():
        body = stack.wait_complete(task_id)
        assert body["success"] is True and body["error"] is None, (path, body)
        assert body["task_id"] == task_id and body["tries"] == 1, (path, body)
        results[path] = body["result"]
    assert results["/process-data"]["mean"] == 2
    assert results["/long-running"] == {"steps": 3}
    assert results["/ping"] == {} and results["/tick"] == {}
    wait_until(lambda: len(stack.sink.messages) >= 1, 20, "the email at the sink")
    (message,) = stack.sink.messages
    assert message["To"] == "ada@example.com" and message["Subject"] == "Moved"
    # the edited body ran: doubled width, upper-case name, the task's own id, no retry
    assert results["/resize"] == {
        "width": 42,
        "name": "CAT",
        "edited": True,
        "id": task_ids["/resize"],
        "retries": 0,
    }


def keys_naming(python: Path, url: str, text: str) -> list[str]:
    """The keys of the Redis database at `url` whose name holds `text`."""
    script = "import redis, sys; print(*redis.Redis.from_url(sys.argv[1]).keys(sys.argv[2]))"
    result = subprocess.run(
        [str(python), "-c", script, url, f"*{text}*"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def test_taskiq_uses_the_redis_the_celery_variables_name(stack: Stack) -> None:
    """Another Redis may answer on localhost:6379: the task's status must be in the one
    CELERY_RESULT_BACKEND names (database 1), its queue in CELERY_BROKER_URL's (0)."""
    python = runner_python("taskiq")
    task_id = stack.queue("/ping")
    stack.wait_complete(task_id)
    assert keys_naming(python, f"{stack.redis_url}/1", task_id), "no status in database 1"
    assert keys_naming(python, f"{stack.redis_url}/0", task_id) == []
    assert keys_naming(python, f"{stack.redis_url}/0", "taskiq"), "no taskiq queue in database 0"


def test_cancel_answers_as_celerys_did(stack: Stack) -> None:
    task_id = stack.queue("/long-running", {"steps": 100})  # 10 s < the 15 s time limit

    def reporting() -> dict[str, Any] | None:
        body = stack.status(task_id)
        return body if body["status"] == "in_progress" and body["progress"] else None

    # running and past its first progress write (none is there before it)
    running_status: dict[str, Any] = wait_until(
        reporting, 15, f"long task reporting progress\n{stack.worker.log()[-2000:]}"
    )
    assert set(running_status) == STATUS, running_status
    cancelled = stack.post(f"/cancel/{task_id}", params={"wait": 8})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": task_id, "cancelled": True, "status": "complete"}
    body = stack.status(task_id)
    assert body["success"] is False and body["error"] == "cancelled", body


def test_the_scheduler_fires_tick_once_per_period(stack: Stack) -> None:
    def scheduled() -> list[str]:
        # tick's own log line names its task id: those the routes did not queue
        found = re.findall(r"tick task (\S+)", stack.worker.log())
        return [task_id for task_id in found if task_id not in stack.queued]

    wait_until(
        lambda: len(scheduled()) >= 3,
        5 * EVERY,
        f"three scheduled ticks\n--- scheduler\n{stack.scheduler.log()[-2000:]}"
        f"\n--- worker\n{stack.worker.log()[-2000:]}",
        interval=0.5,
    )
    elapsed = time.monotonic() - stack.scheduler_started
    fired = scheduled()
    # each firing runs once (no id twice), and no more often than one per period since
    # the one scheduler started
    assert len(fired) == len(set(fired)), fired
    assert len(fired) <= elapsed / EVERY + 1, (len(fired), elapsed)
    assert "Sending task tick" in stack.scheduler.log()


def test_migrate_again_has_nothing_to_do(moved: Moved) -> None:
    before = tree_hashes(moved.project)
    again = bgtasks(moved.project, "migrate", "--to", "taskiq")
    message = again.stdout + again.stderr
    assert again.returncode == 0, message
    assert "already runs taskiq" in message and "nothing to move" in message, message
    assert tree_hashes(moved.project) == before


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
# deletes what the test declared on the machine's RabbitMQ (its queue, its exchange)
_DELETE_QUEUE = """
import asyncio, sys
import aio_pika

async def main() -> None:
    connection = await aio_pika.connect_robust(sys.argv[1])
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(sys.argv[2])
        await channel.exchange_delete(sys.argv[2])

asyncio.run(main())
"""


def test_a_rabbitmq_project_moves_onto_taskiqs_rabbitmq_broker(tmp_path: Path) -> None:
    """`--broker rabbitmq`: the moved project queues on RabbitMQ with taskiq-aio-pika,
    reached through the CELERY_BROKER_URL the deployment set, results in Redis."""
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    python = runner_python("taskiq")
    project = scaffold("layered", tmp_path, "--runner", "celery", "--broker", "rabbitmq")
    add_task(project, "resize", "--arg", "width:int", "--arg", "name:str")
    edit_task_body(project / CELERY_TASKS, "resize", EDITED_BODY)
    result = bgtasks(project, "migrate", "--to", "taskiq")
    assert result.returncode == 0, result.stdout + result.stderr
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["layout"]["broker"] == "rabbitmq"
    app = project / "app/tasks/taskiq_app.py"
    assert "AioPikaBroker(" in app.read_text()
    # a queue of this test's own on the shared RabbitMQ: no other run's worker takes
    # its tasks, and its worker takes no other run's
    queue = f"bgtasks.taskiq.migrate-e2e-{uuid.uuid4().hex[:12]}"
    app.write_text(app.read_text().replace('name="bgtasks.taskiq"', f'name="{queue}"'))
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with redis_server(tmp_path) as redis_url, smtp_sink() as sink:
            env = {
                "CELERY_BROKER_URL": RABBITMQ_URL,
                "CELERY_RESULT_BACKEND": f"{redis_url}/1",
                "SMTP_HOST": sink.host,
                "SMTP_PORT": str(sink.port),
                "SMTP_USER": "",
                "SMTP_STARTTLS": "false",
                "EMAIL_FROM": "shop@example.com",
                "PYTHONPATH": str(project),
            }
            taskiq = str(python.parent / "taskiq")
            worker = start_process(
                [taskiq, "worker", BROKER, TASKS, "--workers", "1"],
                project,
                logs / "worker.log",
                env,
            )
            with running(worker):
                wait_until(
                    lambda: "Listening started" in worker.log() or not worker.alive(),
                    30,
                    "taskiq worker on RabbitMQ",
                )
                assert worker.alive(), worker.log()
                api, base = serve_app(python, project, APP, logs / "uvicorn.log", env)
                with running(api):
                    stack = Stack(
                        Moved(project, {}, []), sink, base, worker, worker, 0.0, redis_url
                    )
                    resize = stack.queue("/resize", {"width": 4, "name": "dog"})
                    email = stack.queue(
                        "/send-email", {"to": "ada@example.com", "subject": "Rabbit", "body": "Hi"}
                    )
                    body = stack.wait_complete(resize)
                    assert body["result"] == {
                        "width": 8,
                        "name": "DOG",
                        "edited": True,
                        "id": resize,
                        "retries": 0,
                    }
                    assert stack.wait_complete(email)["success"] is True
                    wait_until(lambda: len(sink.messages) >= 1, 20, "the email at the sink")
                    assert sink.messages[0]["Subject"] == "Rabbit"
                    # the broker URL they reached it by: the celery variable (taskiq's
                    # default names localhost, not 127.0.0.1)
                    script = (
                        "from app.core.config import settings; print(settings.TASKIQ_BROKER_URL)"
                    )
                    read = subprocess.run(
                        [str(python), "-c", script],
                        cwd=project,
                        env={**os.environ, **env},
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    assert read.stdout.strip() == RABBITMQ_URL, read.stdout + read.stderr
    finally:
        subprocess.run(
            [str(python), "-c", _DELETE_QUEUE, RABBITMQ_URL, queue],
            capture_output=True,
            timeout=30,
        )

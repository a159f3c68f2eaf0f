"""`bgtasks adopt`'s rewrite: the fixture project (tests/fixtures/adopt_project),
scaffolded with celery and with taskiq, adopted through the command itself.

What must hold: every movable call queues its task now (awaited in an async def, a
blocking call in a plain def), every other call is left byte for byte, the generated
module and the edited ones pass ruff, the app serves the same OpenAPI document, a dry
run writes nothing, a second run has nothing to adopt, and the tasks are recorded and
listed. A smaller project (`shapes`) covers the argument shapes the fixture lacks:
tuples, lists of models, aliases, positional-only parameters, and calls left for this
module's own reasons.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bgtasks_gen.adopt import AdoptionScan, scan_project
from bgtasks_gen.cli_adopt import register
from tests.e2e.harness import runner_python

FIXTURE = Path(__file__).parent / "fixtures" / "adopt_project"
STUBS = ".stubs"  # the fixture's import stand-in for SQLAlchemy
RUNNERS = ("celery", "taskiq")
RUFF = [sys.executable, "-m", "ruff"]
BGTASKS = [sys.executable, "-m", "bgtasks_gen"]
HOOKS = {"celery": "app/tasks/celery_app.py", "taskiq": "app/tasks/taskiq_tasks.py"}
# (file, route) of each movable call, and whether the route is an `async def`
MOVED_ROUTES = {
    ("app/routes/orders.py", "audit", False),
    ("app/routes/users.py", "create_user", False),
    ("app/routes/users.py", "refresh_user", True),
    ("app/routes/users.py", "receipt", True),
    ("app/services.py", "queue_welcome", False),
}


def adopt_app() -> typer.Typer:
    """The `bgtasks` command as cli.py builds it, with `adopt` registered the same way."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """bgtasks"""

    register(app)
    return app


def adopt(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(adopt_app(), ["adopt", "-p", str(project), *args])
    return result.exit_code, result.output


def init(project: Path, runner: str) -> None:
    done = subprocess.run(
        [*BGTASKS, "init", str(project), "--runner", runner, "--no-deps"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture scaffolded once per runner; tests work on copies of it."""
    root = tmp_path_factory.mktemp("adopt_scaffolded")
    found = {}
    for runner in RUNNERS:
        project = root / runner
        shutil.copytree(FIXTURE, project)
        init(project, runner)
        found[runner] = project
    return found


@pytest.fixture(params=RUNNERS)
def runner(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def project(scaffolded: dict[str, Path], runner: str, tmp_path: Path) -> Path:
    copy = tmp_path / runner
    shutil.copytree(scaffolded[runner], copy)
    return copy


def tree(root: Path) -> dict[str, str]:
    """Every file's content hash (the journal, caches and locks left out)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = Path(folder, name)
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def call_text(root: Path, file: str, line: int, end_line: int) -> str:
    lines = (root / file).read_text(encoding="utf-8").splitlines()
    return "\n".join(lines[line - 1 : end_line])


def refused_texts(root: Path, scan: AdoptionScan) -> list[tuple[str, str, str]]:
    return sorted(
        (c.file, c.reason_code, call_text(root, c.file, c.line, c.end_line)) for c in scan.refused
    )


def test_movable_calls_queue_tasks_and_the_others_stay_byte_for_byte(project: Path) -> None:
    before = scan_project(project)
    assert len(before.movable) == 7
    code, output = adopt(project)
    assert code == 0, output
    after = scan_project(project)
    assert after.movable == ()
    # the refused calls: the same ones, each line as it was
    assert refused_texts(project, after) == refused_texts(FIXTURE, scan_project(FIXTURE))
    for file, route, is_async in MOVED_ROUTES:
        text = (project / file).read_text(encoding="utf-8")
        body = text[text.index(f"def {route}(") :]
        body = body[: body.find("\n\n\n")] if "\n\n\n" in body else body
        assert "add_task" not in body, body
        if is_async:
            assert "await adopted.enqueue(\n" in body or "await adopted.enqueue(" in body
            assert "enqueue_blocking" not in body
        else:
            assert "adopted.enqueue_blocking(" in body and "await" not in body
    users = (project / "app/routes/users.py").read_text(encoding="utf-8")
    # positional arguments go by the parameter's name, every argument as written
    assert "email=payload.email, name=payload.name" in users
    assert 'key=f"user:{user_id}", ttl=60' in users
    assert "adopted.adopted_app_jobs_record_signup, payload=payload" in users
    # the signature keeps its BackgroundTasks; imports used only by moved calls go
    assert "background_tasks: BackgroundTasks" in users
    assert "send_welcome" not in users.split("router =")[0]
    assert "from app import jobs" in users  # log_signup still uses it
    assert "from app.tasks import adopted\n" in users
    orders = (project / "app/routes/orders.py").read_text(encoding="utf-8")
    assert "import app.jobs\n" not in orders  # only `app.jobs.audit_order` used it
    assert "from app import jobs\n" in orders  # the calls left there use it


def test_the_adopted_module_and_the_worker_hook(project: Path, runner: str) -> None:
    code, output = adopt(project)
    assert code == 0, output
    module = (project / "app/tasks/adopted.py").read_text(encoding="utf-8")
    names = [
        "adopted_app_jobs_audit_order",
        "adopted_app_jobs_send_welcome",  # one task for both of its calls
        "adopted_app_jobs_record_signup",
        "adopted_app_routes_users_log_signup",
        "adopted_app_jobs_refresh_cache",
        "adopted_app_jobs_send_receipt",
    ]
    for name in names:
        assert module.count(f"def {name}(") == 1, name
    assert 'arguments["payload"] = SignupIn.model_validate(arguments["payload"])' in module
    hook = (project / HOOKS[runner]).read_text(encoding="utf-8")
    if runner == "celery":
        assert 'name="adopted.app.jobs.send_welcome"' in module
        assert "asyncio.run(refresh_cache(**arguments))" in module
        assert 'include=["app.tasks.tasks", "app.tasks.adopted"]' in hook
    else:
        assert 'task_name="adopted.app.jobs.send_welcome"' in module
        assert "await refresh_cache(**arguments)" in module
        assert "await asyncio.to_thread(send_welcome, **arguments)" in module
        assert "from app.tasks import adopted  # noqa: F401" in hook


def test_the_code_passes_ruff_and_the_untouched_files_stay(project: Path, runner: str) -> None:
    before = tree(project)
    code, output = adopt(project)
    assert code == 0, output
    after = tree(project)
    changed = {rel for rel in after if before.get(rel) != after[rel]}
    assert changed == {
        "app/tasks/adopted.py",
        "app/routes/orders.py",
        "app/routes/users.py",
        "app/services.py",
        HOOKS[runner],
        ".bgtasks.toml",
    }
    python = sorted(rel for rel in changed if rel.endswith(".py"))
    check = subprocess.run(
        [*RUFF, "check", "--isolated", "--no-cache", *python],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout
    # formatted: the new module, and each edited one that was before (orders.py was not)
    formatted = [rel for rel in python if rel != "app/routes/orders.py"]
    fmt = subprocess.run(
        [*RUFF, "format", "--check", "--isolated", "--no-cache", *formatted],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_a_project_with_a_ruff_configuration_gets_its_style(project: Path) -> None:
    (project / "ruff.toml").write_text('line-length = 100\n\n[format]\nquote-style = "single"\n')
    code, output = adopt(project)
    assert code == 0, output
    module = project / "app/tasks/adopted.py"
    assert "name='adopted.app.jobs.send_welcome'" in module.read_text(encoding="utf-8")
    fmt = subprocess.run(
        [*RUFF, "format", "--check", "--no-cache", "--config", "ruff.toml", str(module)],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


OPENAPI = """
import json
from app.main import app
print(json.dumps(app.openapi(), sort_keys=True))
"""


def openapi(python: Path, project: Path) -> object:
    env = {
        **os.environ,
        "PYTHONPATH": f"{project / STUBS}{os.pathsep}{project}",
        "BGTASKS_API_TOKEN": "unit-test",
    }
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


def test_the_openapi_document_is_unchanged(project: Path, runner: str) -> None:
    python = runner_python(runner)
    before = openapi(python, project)
    code, output = adopt(project)
    assert code == 0, output
    assert openapi(python, project) == before


def test_dry_run_writes_nothing_and_shows_the_diff(project: Path) -> None:
    before = tree(project)
    code, output = adopt(project, "--dry-run")
    assert code == 0, output
    assert tree(project) == before
    assert "+from app.tasks import adopted" in output
    assert "+++ b/app/tasks/adopted.py" in output
    assert "nothing written" in output
    code, output = adopt(project, "--check")
    assert code == 1 and tree(project) == before


def test_a_second_run_has_nothing_to_adopt(project: Path) -> None:
    assert adopt(project)[0] == 0
    before = tree(project)
    code, output = adopt(project)
    assert code == 0, output
    assert "nothing to adopt" in output
    assert tree(project) == before
    code, output = adopt(project, "--json")
    report = json.loads(output)
    assert report["moved"] == [] and report["nothing_to_adopt"] is True
    assert len(report["left"]) == 10


def test_json_lists_moved_and_left_calls(project: Path, runner: str) -> None:
    code, output = adopt(project, "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["runner"] == runner and report["written"] is True
    moved = {(m["file"], m["line"]): m for m in report["moved"]}
    assert len(moved) == 7
    assert {m["enqueue"] for m in moved.values() if m["route"] in ("refresh_user", "receipt")} == {
        "await adopted.enqueue"
    }
    welcome = [m for m in moved.values() if m["function"] == "app.jobs.send_welcome"]
    assert {m["task"] for m in welcome} == {"adopted_app_jobs_send_welcome"}
    left = {(entry["file"], entry["reason_code"]) for entry in report["left"]}
    assert ("app/routes/orders.py", "lambda") in left
    assert ("app/routes/orders.py", "not-route-param") in left
    remind = next(e for e in report["left"] if e["callable"] == "jobs.remind_at")
    assert remind["line"] == 56 and "ISO 8601" in remind["fix"]
    # app/services.py's helper is no route: on taskiq its blocking call needs a thread
    helper_note = [note for note in report["notes"] if "`queue_welcome` is not a route" in note]
    assert len(helper_note) == (1 if runner == "taskiq" else 0)


def test_the_tasks_are_recorded_and_listed(project: Path) -> None:
    assert adopt(project)[0] == 0
    state = tomllib.loads((project / ".bgtasks.toml").read_text(encoding="utf-8"))
    record = state["adopted"]["adopted_app_jobs_record_signup"]
    assert record["source"] == "app.jobs.record_signup"
    assert record["queue_name"] == "adopted.app.jobs.record_signup"
    done = subprocess.run(
        [*BGTASKS, "list", str(project), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    row = rows["adopted_app_routes_users_log_signup"]
    assert row["added_by"] == "adopt (app.routes.users.log_signup)"
    assert rows["send_email"]["added_by"] == "init"  # the others as before


def test_an_import_other_modules_read_from_the_route_module_stays(project: Path) -> None:
    tests = project / "tests" / "test_signup.py"
    tests.write_text(
        'from unittest import mock\n\npatched = mock.patch("app.routes.users.send_welcome")\n',
        encoding="utf-8",
    )
    code, output = adopt(project, "--json")
    assert code == 0, output
    users = (project / "app/routes/users.py").read_text(encoding="utf-8")
    assert "from app.jobs import send_welcome\n" in users  # mock.patch needs it there
    assert "from ..jobs import record_signup" not in users  # nobody else reads that one
    notes = json.loads(output)["notes"]
    assert any("`send_welcome` stays imported" in note for note in notes), notes


def test_a_tampered_adopted_record_is_refused(project: Path) -> None:
    assert adopt(project)[0] == 0
    state = project / ".bgtasks.toml"
    text = state.read_text(encoding="utf-8")
    state.write_text(
        text.replace('source = "app.jobs.audit_order"', 'source = "../../etc/passwd"'), "utf-8"
    )
    code, output = adopt(project)
    assert code == 2
    assert "adopted.adopted_app_jobs_audit_order.source" in output


def test_a_file_changed_after_the_plan_is_a_conflict(project: Path) -> None:
    from bgtasks_gen.adopt.adoption import plan_adopt
    from bgtasks_gen.apply import apply
    from bgtasks_gen.errors import ConflictError

    adoption = plan_adopt(project)
    users = project / "app/routes/users.py"
    users.write_text(users.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    before = tree(project)
    with pytest.raises(ConflictError):
        apply(adoption.plan)
    assert tree(project) == before


def test_a_file_changed_since_the_scan_is_a_conflict(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgtasks_gen.adopt import adoption

    def scan_then_edit(root: Path) -> AdoptionScan:
        found = scan_project(root)
        services = root / "app/services.py"
        services.write_text("# moved\n" + services.read_text(encoding="utf-8"), "utf-8")
        return found

    monkeypatch.setattr(adoption, "scan_project", scan_then_edit)
    code, output = adopt(project)
    assert code == 1, output
    assert "app/services.py" in output
    assert not (project / "app/tasks/adopted.py").exists()


def test_a_module_of_that_name_not_written_by_adopt_is_refused(project: Path) -> None:
    (project / "app/tasks/adopted.py").write_text("MINE = 1\n", encoding="utf-8")
    before = tree(project)
    code, output = adopt(project)
    assert code == 1
    assert "was not written by `bgtasks adopt`" in output
    assert tree(project) == before


def test_a_later_run_adds_only_the_new_tasks(project: Path) -> None:
    assert adopt(project)[0] == 0
    module = project / "app/tasks/adopted.py"
    first = module.read_text(encoding="utf-8")
    (project / "app/routes/extra.py").write_text(
        textwrap.dedent(
            """\
            from fastapi import APIRouter, BackgroundTasks

            from app.jobs import audit_order, send_welcome

            router = APIRouter()


            @router.post("/extra")
            async def extra(background_tasks: BackgroundTasks) -> None:
                background_tasks.add_task(audit_order, 1, "extra")
                background_tasks.add_task(send_welcome, "dee@example.com", "Dee")
            """
        ),
        encoding="utf-8",
    )
    code, output = adopt(project, "--json")
    assert code == 0, output
    report = json.loads(output)
    assert {m["task"]: m["new_task"] for m in report["moved"]} == {
        "adopted_app_jobs_audit_order": False,
        "adopted_app_jobs_send_welcome": False,
    }
    assert module.read_text(encoding="utf-8") == first  # nothing to add
    extra = (project / "app/routes/extra.py").read_text(encoding="utf-8")
    assert "from app.jobs import" not in extra  # both names moved
    flat = " ".join(extra.split())
    assert (
        'await adopted.enqueue( adopted.adopted_app_jobs_audit_order, order_id=1, action="extra"'
        in flat
    )


@pytest.mark.parametrize("other", ["builtin"])
def test_runners_without_a_queue_worker_to_move_to_are_refused(tmp_path: Path, other: str) -> None:
    project = tmp_path / other
    shutil.copytree(FIXTURE, project)
    init(project, other)
    before = tree(project)
    code, output = adopt(project)
    assert code == 2
    assert f"this project's runner is {other}" in output
    assert "--runner celery" in output
    assert tree(project) == before


# -- the argument shapes the fixture has not -------------------------------------------

SHAPES = {
    "app/__init__.py": "",
    "app/main.py": """
        from fastapi import FastAPI

        from app.routes import router

        app = FastAPI()
        app.include_router(router)
    """,
    "app/models.py": """
        from pydantic import BaseModel, Field


        class Point(BaseModel):
            x: int
            label: str = Field(alias="name")
    """,
    "app/jobs.py": """
        import json
        import os

        from app.models import Point


        def place(
            at: tuple[int, int], /, points: list[Point] | None = None, *, tag: Point | None = None
        ) -> None:
            seen = {
                "at": [type(at).__name__, list(at)],
                "points": [type(p).__name__ for p in points or []],
                "tag": [type(tag).__name__, tag.label if tag else None],
            }
            with open(os.environ["ADOPT_RECORD_FILE"], "a", encoding="utf-8") as handle:
                handle.write(json.dumps(seen) + "\\n")


        def ping() -> None:
            pass


        def greet(name: str) -> None:
            pass
    """,
    "app/routes.py": """
        from fastapi import APIRouter, BackgroundTasks

        from app.jobs import greet, ping, place
        from app.models import Point

        router = APIRouter()


        @router.post("/place")
        async def place_route(background_tasks: BackgroundTasks) -> dict[str, bool]:
            background_tasks.add_task(
                place, (1, 2), [Point(x=1, name="a")], tag=Point(x=2, name="b")
            )
            return {"queued": True}


        @router.post("/ping")
        def ping_route(background_tasks: BackgroundTasks) -> None:
            done = background_tasks.add_task(ping)
            print(done)


        @router.post("/greet")
        def greet_route(background_tasks: BackgroundTasks) -> None:
            background_tasks.add_task(greet)
    """,
}

# runs in the runner's environment: the route side's message, through JSON, to the task
ROUND_TRIP = """
import asyncio, inspect, json, sys
from app.models import Point
from app.tasks import adopted

# a function's parameter may be called `task`: the enqueue functions take theirs by position
for enqueue in (adopted.enqueue, adopted.enqueue_blocking):
    inspect.signature(enqueue).bind(adopted.adopted_app_jobs_place, task="x", arguments=1)

message = adopted.as_message(
    {"at": (1, 2), "points": [Point(x=1, name="a")], "tag": Point(x=2, name="b")}
)
print(json.dumps(message))
task = adopted.adopted_app_jobs_place
wire = json.loads(json.dumps(message))
if sys.argv[1] == "celery":
    task(**wire)
else:
    asyncio.run(task.original_func(**wire))
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("adopt_shapes")
    found = {}
    for runner in RUNNERS:
        project = root / runner
        for rel, text in SHAPES.items():
            path = project / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        init(project, runner)
        found[runner] = project
    yield found


def test_tuples_models_and_aliases_are_rebuilt_on_the_worker(
    shapes: dict[str, Path], runner: str, tmp_path: Path
) -> None:
    project = tmp_path / "shapes"
    shutil.copytree(shapes[runner], project)
    code, output = adopt(project, "--json")
    assert code == 0, output
    module = (project / "app/tasks/adopted.py").read_text(encoding="utf-8")
    assert "TypeAdapter(tuple[int, int])" in module
    assert "TypeAdapter(list[Point] | None)" in module
    assert 'if "tag" in arguments:' in module  # optional: rebuilt when passed
    assert 'arguments["tag"] = TypeAdapter(Point | None).validate_python(' in module
    assert "*positional, **arguments" in module  # `at` is positional-only
    records = tmp_path / "records.jsonl"
    done = subprocess.run(
        [str(runner_python(runner)), "-c", ROUND_TRIP, runner],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "ADOPT_RECORD_FILE": str(records)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout.splitlines()[-1])
    # models travel by alias, which is what model_validate reads back
    assert message == {
        "at": [1, 2],
        "points": [{"x": 1, "name": "a"}],
        "tag": {"x": 2, "name": "b"},
    }
    seen = json.loads(records.read_text(encoding="utf-8"))
    assert seen == {"at": ["tuple", [1, 2]], "points": ["Point"], "tag": ["Point", "b"]}


def test_calls_adopt_cannot_rewrite_are_left_with_a_reason(
    shapes: dict[str, Path], runner: str, tmp_path: Path
) -> None:
    project = tmp_path / "shapes"
    shutil.copytree(shapes[runner], project)
    routes = project / "app/routes.py"
    original = routes.read_text(encoding="utf-8")
    code, output = adopt(project, "--json")
    assert code == 0, output
    left = {entry["callable"]: entry for entry in json.loads(output)["left"]}
    assert left["ping"]["reason_code"] == "not-a-statement"
    assert left["greet"]["reason_code"] == "arguments"
    assert "does not pass `name`" in left["greet"]["reason"]
    text = routes.read_text(encoding="utf-8")
    for line in (
        "    done = background_tasks.add_task(ping)",
        "    background_tasks.add_task(greet)",
    ):
        assert line in original and line in text
    # `place` moved, so its import went; the others' stay
    assert "from app.jobs import greet, ping\n" in text
    assert "from app.models import Point\n" in text


def test_pydantic_v1_projects_get_its_parsing_functions() -> None:
    from bgtasks_gen.adopt.scan import Target, TargetParam, TypeRef
    from bgtasks_gen.adopt.task_code import RunnerCall, task_code

    model = TypeRef("Signup", "app.schemas.Signup", project="model")
    pair = TypeRef("tuple[int, int]", "builtins.tuple", (TypeRef("int", "builtins.int"),) * 2)
    params = (
        TargetParam("signup", "Signup", "positional", False, model),
        TargetParam("pair", "tuple[int, int]", "positional", True, pair),
    )
    target = Target("app.jobs", "register", "app/jobs.py", 1, True, params)
    code = task_code(target, "adopted_app_jobs_register", RunnerCall(False), pydantic_v1=True)
    body = "\n".join(code.body)
    assert 'arguments["signup"] = Signup.parse_obj(arguments["signup"])' in body
    assert 'arguments["pair"] = parse_obj_as(tuple[int, int], arguments["pair"])' in body
    assert "asyncio.run(register(**arguments))" in body
    assert body.startswith("import asyncio\n\nfrom pydantic import parse_obj_as\n\n")

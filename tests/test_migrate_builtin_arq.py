"""`bgtasks migrate --to arq` from a builtin scaffold (in process, plus ruff and mypy in
arq's environment; tests/e2e/test_migrate_builtin_e2e.py runs the moved project on a
real arq worker).

arq runs coroutine functions only: an edited plain `def` body is kept line for line in
a private function beside the task, which awaits it in a thread; an `async def` body is
carried as it is."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, invoke, tree_hashes
from tests.e2e.harness import runner_python
from tests.test_migrate_builtin import BUILTIN_FILES, BUILTIN_TASKS, RESIZE, ROUTER, _edit

ARQ_TASKS = "app/tasks/arq_tasks.py"
ARQ_WORKER = "app/tasks/arq_worker.py"
# resize edited as a plain def: its own result, annotation and comment
RESIZE_BODY = '    # tripled on purpose\n    return {"width": width * 3, "name": name}\n'
EDITED_RESIZE = RESIZE.replace(") -> None:", ") -> dict[str, object]:").replace(
    '    logger.info("resize ran with %d argument(s)", 2)\n', RESIZE_BODY
)
NOTIFICATION = (
    '    logger.info("notification for user %s (%d characters)", user_id, len(message))\n'
)
NOTIFICATION_BODY = '    logger.info("stored for %s: %s", user_id, message)\n'
# an async def body: carried as it is, under arq's signature
TICK_BODY = '    logger.info("tick, on the event loop")\n    return {}\n'


@dataclass
class Moved:
    project: Path
    dry_output: str
    output: str
    tasks: str  # arq's tasks module after the move


def _function(source: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    (node,) = (
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
    )
    return node


def _builtin_project(folder: Path) -> Path:
    project = folder / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    for args in (["resize", "--arg", "width:int", "--arg", "name:str"], ["ping"], ["tick"]):
        code, output = invoke("add-task", *args, "-p", str(project))
        assert code == 0, output
    return project


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Moved:
    """resize and process_notification edited as plain defs, tick as an async def."""
    project = _builtin_project(tmp_path_factory.mktemp("builtin-arq"))
    _edit(project, BUILTIN_TASKS, RESIZE, EDITED_RESIZE)
    _edit(project, BUILTIN_TASKS, NOTIFICATION, NOTIFICATION_BODY)
    text = (project / BUILTIN_TASKS).read_text()
    tick = _function(text, "tick")
    lines = text.splitlines(keepends=True)
    header = "".join(lines[tick.lineno - 1 : tick.body[0].lineno - 1])
    lines[tick.lineno - 1 : tick.end_lineno] = [
        "async " + header.replace(") -> None:", ") -> dict[str, int]:") + TICK_BODY
    ]
    (project / BUILTIN_TASKS).write_text("".join(lines))
    before = tree_hashes(project)
    code, dry_output = invoke("migrate", str(project), "--to", "arq", "--dry-run")
    assert code == 0, dry_output
    assert tree_hashes(project) == before  # a dry run writes nothing
    code, output = invoke("migrate", str(project), "--to", "arq")
    assert code == 0, output
    return Moved(project, dry_output, output, (project / ARQ_TASKS).read_text())


def test_the_plan_shows_the_whole_move(moved: Moved) -> None:
    for line in ("create", ARQ_TASKS, ARQ_WORKER, "delete", BUILTIN_TASKS, ROUTER):
        assert line in moved.dry_output, line
    assert "4 task(s) carried over" in moved.output
    assert "is already here" not in moved.output  # builtin's own files are not "another system"


def test_the_project_runs_arq_without_builtin(moved: Moved) -> None:
    project = moved.project
    for rel in BUILTIN_FILES:
        assert not (project / rel).exists(), rel
        assert not (project / f".bgtasks/base/{rel}.base").exists(), rel
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "arq" and state["runners"] == ["arq"]
    assert state["layout"]["api_shape"] == "common"
    assert set(state["tasks"]) == {"process_notification", "resize", "ping", "tick"}
    assert {t["runner"] for t in state["tasks"].values()} == {"arq"}
    assert not any(rel in state["files"] for rel in [*BUILTIN_FILES, ROUTER])
    # every carried task registered with the worker, with its retries and timeout
    worker = (project / ARQ_WORKER).read_text()
    for name in state["tasks"]:
        registered = rf'arq_tasks\.{name},\s+name="{name}",\s+timeout=capped_timeout\(300\),'
        assert re.search(registered + r"\s+max_tries=4,", worker), name
    # builtin's routes kept at their paths, queueing through arq's router
    kept = (project / ROUTER).read_text()
    assert 'prefix="/notifications"' in kept and "from app.api.v1.routes import arq_tasks" in kept
    for path in ("/send-email", "/process", "/resize", "/ping", "/tick"):
        assert f'"{path}"' in kept, path
    assert "notifications_router" in (project / "app/main.py").read_text()
    pyproject = (project / "pyproject.toml").read_text()
    assert '"arq>=0.28,<0.29"' in pyproject


def test_a_plain_body_runs_in_a_thread_line_for_line(moved: Moved) -> None:
    tasks = moved.tasks
    helper, task = _function(tasks, "_resize_sync"), _function(tasks, "resize")
    # the user's function, line for line, under its own name's private twin
    assert isinstance(helper, ast.FunctionDef)
    assert f") -> dict[str, object]:\n{RESIZE_BODY}\n\nasync def resize(" in tasks
    assert [a.arg for a in helper.args.args] == ["width", "name"]
    # the arq task: arq's signature, the body's return annotation, the body in a thread
    assert isinstance(task, ast.AsyncFunctionDef)
    assert [a.arg for a in task.args.args] == ["ctx", "width", "name"]
    assert task.returns is not None and ast.unparse(task.returns) == "dict[str, object]"
    assert ast.unparse(task.body[-1]) == "return await asyncio.to_thread(_resize_sync, width, name)"
    # a body returning None is awaited, not returned
    notification = _function(tasks, "process_notification")
    assert ast.unparse(notification.body[-1]) == (
        "await asyncio.to_thread(_process_notification_sync, user_id, message)"
    )
    assert NOTIFICATION_BODY in tasks
    # an unedited task is arq's own
    ping = _function(tasks, "ping")
    assert isinstance(ping, ast.AsyncFunctionDef) and "_ping_sync" not in tasks


def test_an_async_body_is_carried_as_it_is(moved: Moved) -> None:
    tick = _function(moved.tasks, "tick")
    assert isinstance(tick, ast.AsyncFunctionDef)
    assert [a.arg for a in tick.args.args] == ["ctx"]
    assert f") -> dict[str, int]:\n{TICK_BODY}" in moved.tasks
    assert "_tick_sync" not in moved.tasks


def test_the_carried_tasks_are_add_tasks(moved: Moved) -> None:
    code, output = invoke("list", str(moved.project), "--json")
    assert code == 0, output
    listed = {t["name"]: t for t in json.loads(output)}
    assert listed["resize"]["route"] == "POST /tasks/resize"
    assert listed["resize"]["added_by"] == "add-task"
    assert "_resize_sync" not in listed  # a helper, not a task
    # an edited body is the user's: remove-task asks; the route and test are add-task's
    code, output = invoke("remove-task", "resize", "-p", str(moved.project), "--dry-run")
    assert code == 1 and "the body" in output and "the test" not in output, output
    code, output = invoke("remove-task", "ping", "-p", str(moved.project), "--dry-run")
    assert code == 0, output


def test_a_second_run_has_nothing_to_move(moved: Moved) -> None:
    before = tree_hashes(moved.project)
    code, output = invoke("migrate", str(moved.project), "--to", "arq")
    assert code == 0 and "nothing to move" in output, output
    assert tree_hashes(moved.project) == before


def test_the_moved_project_passes_ruff_and_mypy(moved: Moved, tmp_path: Path) -> None:
    bin_dir = runner_python("arq").parent
    commands = [
        [str(bin_dir / "ruff"), "check", "--no-cache", "app", "tests"],
        [str(bin_dir / "ruff"), "format", "--check", "--no-cache", "app", "tests"],
        [str(bin_dir / "mypy"), "--strict", "--ignore-missing-imports"]
        + ["--cache-dir", str(tmp_path / "mypy-cache"), "app", "tests"],
    ]
    for command in commands:
        done = subprocess.run(
            command, cwd=moved.project, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("body", "needle", "expected"),
    [
        ("    requests.get(name)", "requests.get(name)", "uses `requests`"),
        ('    logger.info("try %d", ctx["job_try"])', "ctx[", "uses `ctx`"),
    ],
    ids=["module-import", "arq-context"],
)
def test_refuses_a_name_arqs_module_does_not_define_naming_the_line(
    tmp_path: Path, body: str, needle: str, expected: str
) -> None:
    project = _builtin_project(tmp_path)
    new = RESIZE.replace('    logger.info("resize ran with %d argument(s)", 2)', body)
    _edit(project, BUILTIN_TASKS, RESIZE, new)
    lines = (project / BUILTIN_TASKS).read_text().splitlines()
    line = next(number for number, text in enumerate(lines, 1) if needle in text)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "arq")
    assert code == 1, output
    assert f"{BUILTIN_TASKS}:{line}" in output and expected in output, output
    assert "import it inside the function first" in output and "nothing was written" in output
    assert tree_hashes(project) == before


def test_api_shape_new_and_a_call_too_long_for_one_line(tmp_path: Path) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    args = ["customer_identifier:int", "document_template:str", "language_code:str"]
    code, output = invoke(
        "add-task", "render_invoice", *(f"--arg={a}" for a in args), "-p", str(project)
    )
    assert code == 0, output
    _edit(project, BUILTIN_TASKS, 'ran with %d argument(s)", 3', 'edited", 3')
    code, output = invoke("migrate", str(project), "--to", "arq", "--api-shape", "new")
    assert code == 0, output
    assert not (project / ROUTER).exists()
    main = (project / "app/main.py").read_text()
    assert "notifications" not in main and "arq_tasks_router" in main
    # the call, exploded as ruff writes it (the project configures no ruff of its own)
    tasks = (project / ARQ_TASKS).read_text()
    assert "    await asyncio.to_thread(\n        _render_invoice_sync,\n" in tasks
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ARQ_TASKS],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr

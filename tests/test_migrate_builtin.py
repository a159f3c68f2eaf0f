"""`bgtasks migrate --to celery|taskiq` from a builtin scaffold: what moves, what goes,
what is refused (in process; tests/test_migrate_builtin_arq.py has the move to arq,
tests/e2e/test_migrate_builtin_e2e.py runs the moved project on real workers)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, invoke, tree_hashes, write_tree
from tests.e2e.test_day_one_e2e import TEMPLATE_SHAPED

BUILTIN_TASKS = "app/tasks/notifications.py"
ROUTER = "app/api/v1/routes/notifications.py"
BUILTIN_FILES = [
    "app/tasks/email.py",
    "app/tasks/notifications.py",
    "tests/test_bgtasks_builtin.py",
]
TARGET_TASKS = {"celery": "app/tasks/tasks.py", "taskiq": "app/tasks/taskiq_tasks.py"}
TARGETS = list(TARGET_TASKS)
RESIZE = '''def resize(
    width: int,
    name: str,
) -> None:
    """Runs after the response that queued it. Replace the body with your work."""
    logger.info("resize ran with %d argument(s)", 2)
'''


def _builtin_project(tmp_path: Path) -> Path:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    for args in (["resize", "--arg", "width:int", "--arg", "name:str"], ["ping"]):
        code, output = invoke("add-task", *args, "-p", str(project))
        assert code == 0, output
    return project


def _edit(project: Path, rel: str, old: str, new: str) -> None:
    path = project / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new, 1))


def _line_of(project: Path, rel: str, needle: str) -> int:
    lines = (project / rel).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if needle in line)


def _function(source: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    (node,) = (
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
    )
    return node


@pytest.mark.parametrize("target", TARGETS)
def test_moves_the_project_keeping_the_routes_and_the_edited_body(
    tmp_path: Path, target: str
) -> None:
    project = _builtin_project(tmp_path)
    _edit(
        project,
        BUILTIN_TASKS,
        RESIZE,
        RESIZE.replace(") -> None:", ") -> dict[str, int]:").replace(
            '    logger.info("resize ran with %d argument(s)", 2)\n',
            '    # doubled on purpose\n    return {"width": width * 2}\n',
        ),
    )
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", target, "--dry-run")
    assert code == 0, output
    assert tree_hashes(project) == before  # a dry run writes nothing
    code, output = invoke("migrate", str(project), "--to", target)
    assert code == 0, output
    assert "is already here" not in output  # builtin's own files are not "another system"

    for rel in BUILTIN_FILES:
        assert not (project / rel).exists(), rel
        assert not (project / f".bgtasks/base/{rel}.base").exists(), rel
    tasks = (project / TARGET_TASKS[target]).read_text()
    resize = _function(tasks, "resize")
    # the edited body line for line, under the target's signature with its own annotation
    assert ('    # doubled on purpose\n    return {"width": width * 2}\n') in tasks
    assert isinstance(resize, ast.FunctionDef)  # a plain def stays one, on taskiq too
    assert resize.returns is not None and ast.unparse(resize.returns) == "dict[str, int]"
    # the unedited ones are the target's own; process_notification moved as an added task
    assert isinstance(_function(tasks, "ping"), ast.FunctionDef | ast.AsyncFunctionDef)
    assert isinstance(
        _function(tasks, "process_notification"), ast.FunctionDef | ast.AsyncFunctionDef
    )

    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == target and state["runners"] == [target]
    assert state["layout"]["api_shape"] == "common"
    assert set(state["tasks"]) == {"process_notification", "resize", "ping"}
    assert state["tasks"]["process_notification"]["args"] == ["user_id:int", "message:str"]
    assert {t["runner"] for t in state["tasks"].values()} == {target}
    assert not any(rel in state["files"] for rel in [*BUILTIN_FILES, ROUTER])

    # builtin's router module: the same paths, queueing through the target's router
    kept = (project / ROUTER).read_text()
    assert 'prefix="/notifications"' in kept
    for path in ("/send-email", "/process", "/resize", "/ping"):
        assert f'"{path}"' in kept, path
    assert "detail: str" in kept and "task_id: str" in kept and "status_url: str" in kept
    main = (project / "app/main.py").read_text()
    assert "notifications_router" in main  # its include serves the kept routes
    settings = (project / "app/core/config.py").read_text()
    # builtin's fields are the target's too: the variables a deployment sets keep working
    for name in ("SMTP_HOST", "EMAIL_FROM", "BGTASKS_API_TOKEN"):
        assert re.search(rf"^    {name}: ", settings, re.M), name
    pyproject = (project / "pyproject.toml").read_text()
    assert "email-validator>=2.0" in pyproject and "fastapi" in pyproject

    # the carried tasks are add-task's: listed so, and the edited one refused by remove-task
    code, output = invoke("list", str(project), "--json")
    assert code == 0, output
    listed = {t["name"]: t for t in json.loads(output)}
    assert listed["resize"]["route"] == "POST /tasks/resize"
    code, output = invoke("remove-task", "resize", "-p", str(project))
    assert code == 1 and "body" in output
    # running it again has nothing left to do
    after = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", target)
    assert code == 0 and "nothing to move" in output, output
    assert tree_hashes(project) == after


def test_an_edited_process_notification_is_carried(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    _edit(
        project,
        BUILTIN_TASKS,
        '    logger.info("notification for user %s (%d characters)", user_id, len(message))',
        '    logger.info("stored for %s", user_id)\n    return None',
    )
    code, output = invoke("migrate", str(project), "--to", "celery")
    assert code == 0, output
    tasks = (project / TARGET_TASKS["celery"]).read_text()
    function = _function(tasks, "process_notification")
    assert function.returns is not None and ast.unparse(function.returns) == "None"
    assert '    logger.info("stored for %s", user_id)\n    return None\n' in tasks


def test_api_shape_new_takes_the_builtin_routes_out(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--api-shape", "new")
    assert code == 0, output
    assert not (project / ROUTER).exists()
    main = (project / "app/main.py").read_text()
    assert "notifications" not in main and "taskiq_tasks_router" in main
    # taskiq writes its own access module where builtin's was
    assert "task_id" in (project / "app/tasks/auth.py").read_text()


@pytest.mark.parametrize(
    ("target", "body", "expected"),
    [
        ("celery", "    await helper(width)", "an `async def`"),
        ("taskiq", "    requests.get(name)", "uses `requests`"),
        ("celery", "    safely(print)(name)", "uses `safely`"),
    ],
    ids=["async-on-celery", "module-import", "builtin-helper"],
)
def test_refuses_a_body_that_cannot_run_on_the_target_naming_the_line(
    tmp_path: Path, target: str, body: str, expected: str
) -> None:
    project = _builtin_project(tmp_path)
    new = RESIZE.replace('    logger.info("resize ran with %d argument(s)", 2)', body)
    if "await" in body:
        new = new.replace("def resize(", "async def resize(")
    _edit(project, BUILTIN_TASKS, RESIZE, new)
    needle = "async def resize(" if "await" in body else body.strip()
    line = _line_of(project, BUILTIN_TASKS, needle)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", target, "--force")
    assert code == 1, output
    assert f"{BUILTIN_TASKS}:{line}" in output and expected in output, output
    assert tree_hashes(project) == before


def test_refuses_changed_arguments_naming_the_line(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    _edit(project, BUILTIN_TASKS, "    name: str,\n) -> None:", "    label: str,\n) -> None:")
    code, output = invoke("migrate", str(project), "--to", "celery", "--force")
    assert code == 1 and "its arguments changed" in output, output
    assert f"{BUILTIN_TASKS}:{_line_of(project, BUILTIN_TASKS, 'def resize(')}" in output


def test_refuses_edits_the_move_would_lose_unless_forced(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    _edit(project, "app/tasks/email.py", "DATA_REPLY_TIMEOUT = 600.0", "DATA_REPLY_TIMEOUT = 60.0")
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "celery")
    assert code == 1 and "app/tasks/email.py: line(s)" in output, output
    assert "--force" in output and tree_hashes(project) == before
    code, output = invoke("migrate", str(project), "--to", "celery", "--force")
    assert code == 0, output
    assert not (project / "app/tasks/email.py").exists()


def test_refuses_when_the_projects_own_code_imports_a_builtin_module(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    (project / "app/services.py").write_text("from app.tasks.email import send_email\n")
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1, output
    assert "app/services.py:1 imports app.tasks.email" in output and "builtin" in output


def test_refuses_moves_it_does_not_know(tmp_path: Path) -> None:
    project = _builtin_project(tmp_path)
    code, output = invoke("migrate", str(project), "--to", "dramatiq")
    assert code == 2, output
    for move in ("builtin -> arq", "builtin -> celery", "builtin -> taskiq"):
        assert move in output, move
    code, output = invoke("migrate", str(project), "--to", "celery", "--api-shape", "old")
    assert code == 2 and "kept or new" in output, output


def test_a_field_added_beside_the_projects_own_keeps_its_variable(tmp_path: Path) -> None:
    """A Settings with `SMTP_HOST: str | None` made builtin's init add BUILTIN_SMTP_HOST;
    after the move the target reads that same field (the variable the deployment sets)."""
    project = write_tree(tmp_path / "project", TEMPLATE_SHAPED)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    config = (project / "app/core/config.py").read_text()
    assert re.search(r"^\s+BUILTIN_SMTP_HOST: str", config, re.M), config
    code, output = invoke("migrate", str(project), "--to", "celery")
    assert code == 0, output
    config = (project / "app/core/config.py").read_text()
    assert re.search(r"^\s+BUILTIN_SMTP_HOST: str", config, re.M), config
    assert "CELERY_SMTP_HOST" not in config
    mailer = (project / "app/tasks/mailer.py").read_text()
    assert "BUILTIN_SMTP_HOST" in mailer

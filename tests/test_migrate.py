"""`bgtasks migrate --to taskiq`: what moves, what goes, and what is refused (in process;
tests/e2e/test_migrate_e2e.py runs the moved project for real)."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from bgtasks_gen.apply import apply
from bgtasks_gen.scaffold import plan_init
from tests.conftest import EXAMPLES, invoke, tree_hashes

ARQ_FILES = [
    "app/tasks/arq_tasks.py",
    "app/tasks/arq_worker.py",
    "app/tasks/pool.py",
    "app/api/v1/routes/arq_tasks.py",
    "tests/test_bgtasks_arq.py",
]


def _arq_project(tmp_path: Path, old_surface: bool = False) -> Path:
    """An arq project as `init` scaffolds it now (the common HTTP surface), or as it did
    before that surface existed (`old_surface`: arq's own routes, no api_shape kept)."""
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    if old_surface:
        apply(plan_init(project, "arq", api_shape=""))
    else:
        assert invoke("init", str(project), "--runner", "arq")[0] == 0
    for args in (
        ["ping"],
        ["resize", "--arg", "width:int", "--arg", "name:str"],
        ["tick", "--every", "5"],
    ):
        code, output = invoke("add-task", *args, "-p", str(project))
        assert code == 0, output
    return project


def _edit(project: Path, rel: str, old: str, new: str) -> None:
    path = project / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new, 1))


RESIZE_BODY = """    logger.info("resize: try %d", ctx["job_try"])
    return {
        "width": width,
        "name": name,
    }"""


# (the project's surface before the move, the prefix its clients use, api_shape after)
SURFACES = [(True, "/arq-tasks", "arq"), (False, "/tasks", "common")]


@pytest.mark.parametrize(("old_surface", "prefix", "shape"), SURFACES)
def test_moves_the_project_and_keeps_the_edited_body(
    tmp_path: Path, old_surface: bool, prefix: str, shape: str
) -> None:
    project = _arq_project(tmp_path, old_surface)
    _edit(
        project,
        "app/tasks/arq_tasks.py",
        RESIZE_BODY,
        """    logger.info("job %s, try %d", ctx["job_id"], ctx["job_try"])
    # doubled on purpose
    return {"width": width * 2, "name": name}""",
    )
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--dry-run")
    assert code == 0, output
    assert tree_hashes(project) == before  # a dry run writes nothing
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    assert f"curl -X POST http://127.0.0.1:8000{prefix}/send-email" in output
    assert "is already here" not in output  # arq's own files are not "another system"

    for rel in ARQ_FILES:
        assert not (project / rel).exists(), rel
        assert not (project / f".bgtasks/base/{rel}.base").exists(), rel
    tasks = (project / "app/tasks/taskiq_tasks.py").read_text()
    # the edited body, line for line, with arq's job context spelled the taskiq way
    assert (
        '    logger.info("job %s, try %d", control.task_id, control.tries)\n'
        "    # doubled on purpose\n"
        '    return {"width": width * 2, "name": name}\n'
    ) in tasks
    assert "ctx[" not in tasks
    # the unedited ones are taskiq's own, the schedule a label of the task
    assert 'task_name="ping"' in tasks and 'schedule=[{"interval": 5}]' in tasks

    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["runners"] == ["taskiq"]
    assert state["layout"]["api_shape"] == shape
    assert {t["runner"] for t in state["tasks"].values()} == {"taskiq"}
    assert not any("arq" in rel for rel in state["files"])

    router = (project / "app/api/v1/routes/taskiq_tasks.py").read_text()
    assert f'prefix="{prefix}"' in router and '"/resize"' in router
    main = (project / "app/main.py").read_text()
    assert "arq_tasks" not in main and "taskiq_tasks_router" in main
    pyproject = (project / "pyproject.toml").read_text()
    assert '"arq' not in pyproject and "redis[hiredis]>=5.0.1,<6" not in pyproject
    assert "taskiq-redis" in pyproject
    settings = (project / "app/core/config.py").read_text()
    assert "ARQ_JOB_TIMEOUT" not in settings and "TASKIQ_BROKER_URL" in settings
    procfile = (project / "Procfile").read_text()
    assert "arq " not in procfile and "worker: taskiq worker" in procfile
    assert "scheduler: taskiq scheduler" in procfile
    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    assert not any("arq " in str(service.get("command")) for service in compose.values())
    # the web service arq's init wrote queues on taskiq's broker now: its environment
    # is the added worker's (nothing left for the user to copy by hand)
    assert compose["web"]["environment"] == compose["worker"]["environment"]
    assert compose["web"]["environment"]["TASKIQ_BROKER_URL"] == "redis://redis:6379/0"
    assert "same environment" not in output

    # the carried tasks are add-task's: listed so, and the edited one refused by remove-task
    code, output = invoke("list", str(project), "--json")
    assert code == 0, output
    listed = {t["name"]: t for t in json.loads(output)}
    assert {n for n, t in listed.items() if t["added_by"] == "add-task"} == {
        "ping",
        "resize",
        "tick",
    }
    assert listed["resize"]["route"] == f"POST {prefix}/resize"
    code, output = invoke("remove-task", "resize", "-p", str(project))
    assert code == 1 and "body" in output
    # running it again has nothing left to do
    after = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0 and "nothing to move" in output, output
    assert tree_hashes(project) == after


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('    await ctx["redis"].set("k", width)\n    return {}', 'ctx["redis"]'),
        ("    helper(ctx)\n    return {}", "helper(ctx)"),
        ("    raise Retry(defer=5)", "Retry"),
    ],
    ids=["redis", "passed-on", "retry"],
)
def test_refuses_arq_only_uses_naming_the_line(tmp_path: Path, body: str, expected: str) -> None:
    project = _arq_project(tmp_path)
    _edit(project, "app/tasks/arq_tasks.py", RESIZE_BODY, body)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--force")
    assert code == 1, output
    assert "app/tasks/arq_tasks.py:" in output and expected in output, output
    assert tree_hashes(project) == before


def test_refuses_edits_the_move_would_lose_unless_forced(tmp_path: Path) -> None:
    project = _arq_project(tmp_path)
    _edit(
        project, "app/tasks/arq_worker.py", "class WorkerSettings:", "class WorkerSettings:  # mine"
    )
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1 and "app/tasks/arq_worker.py: line(s)" in output, output
    assert "--force" in output and tree_hashes(project) == before
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--force")
    assert code == 0, output
    assert not (project / "app/tasks/arq_worker.py").exists()


def test_refuses_when_the_projects_own_code_imports_an_arq_module(tmp_path: Path) -> None:
    project = _arq_project(tmp_path)
    (project / "app/services.py").write_text("from app.tasks.pool import TaskQueue\n")
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--force")
    assert code == 1, output
    assert "app/services.py:1 imports app.tasks.pool" in output


def test_refuses_other_moves(tmp_path: Path) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    code, output = invoke("migrate", str(project), "--to", "arq")
    assert code == 2 and "arq -> taskiq" in output and "builtin -> celery" in output, output


def test_a_second_init_does_not_take_its_own_code_for_another_system(tmp_path: Path) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "taskiq")[0] == 0
    code, output = invoke("init", str(project), "--runner", "taskiq")
    assert code == 0, output
    assert "nothing to do" in output.lower() or "identical" in output
    assert "is already here" not in output, output

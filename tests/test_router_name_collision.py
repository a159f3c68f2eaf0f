"""A module of the project's own under the name bgtasks' router would take (celery's
`tasks.py` beside the project's routers) is not a conflict to force over: init gives the
router a free name (`celery_tasks.py`), says so, records it in the state file, and every
later command finds the router there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke, tree_hashes, write_tree

SETTINGS = (
    "from pydantic_settings import BaseSettings\n\n\n"
    'class Settings(BaseSettings):\n    name: str = "x"\n\n\nsettings = Settings()\n'
)
ROUTER = "from fastapi import APIRouter\n\nrouter = APIRouter()\n"
OWN_ROUTER = ROUTER + '\n\n@router.get("/mine")\ndef mine() -> dict[str, str]:\n    return {}\n'
MAIN = (
    "from fastapi import FastAPI\n\nfrom svc.config import settings\n"
    "from svc.routers import items, {own}\n\n"
    "app = FastAPI(title=settings.name)\n"
    "app.include_router(items.router)\napp.include_router({own}.router)\n"
)
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"


def _project(root: Path, own: str = "tasks") -> Path:
    """A project whose routes package has a router module of its own named `own`."""
    return write_tree(
        root,
        {
            "svc/__init__.py": "",
            "svc/config.py": SETTINGS,
            "svc/main.py": MAIN.format(own=own),
            "svc/routers/__init__.py": "",
            "svc/routers/items.py": ROUTER,
            f"svc/routers/{own}.py": OWN_ROUTER,
        },
    )


def _ok(*args: str) -> str:
    code, output = invoke(*args)
    assert code == 0, output
    return output


def _ruff_and_mypy_clean(project: Path) -> None:
    ruff = [sys.executable, "-m", "ruff"]
    mypy = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--python-version", "3.11"]
    for command in (
        [*ruff, "check", "--no-cache", "--select", RUFF_RULES, "--target-version", "py311", "."],
        [*ruff, "format", "--check", "--no-cache", "."],
        [*mypy, "--cache-dir", str(project.parent / ".mypy"), "svc", "tests"],
    ):
        result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def test_celery_router_takes_a_free_name_and_every_command_reads_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    own = (project / "svc/routers/tasks.py").read_bytes()

    output = _ok("init", str(project), "--runner", "celery", "--no-deps")
    assert "svc/routers/tasks.py is yours: the celery router is svc/routers/celery_tasks.py" in (
        output
    )
    assert "--force" not in output
    assert (project / "svc/routers/tasks.py").read_bytes() == own
    assert "router = APIRouter(" in (project / "svc/routers/celery_tasks.py").read_text()
    main = (project / "svc/main.py").read_text()
    assert "from svc.routers.celery_tasks import router as celery_tasks_router" in main
    assert "app.include_router(celery_tasks_router)" in main
    assert "app.include_router(tasks.router)" in main
    assert 'router_file = "celery_tasks"' in (project / ".bgtasks.toml").read_text()
    tests = (project / "tests/test_bgtasks_celery.py").read_text()
    assert "from svc.routers import celery_tasks as task_routes" in tests

    assert "wired and current" in _ok("check", str(project))
    after_init = tree_hashes(project)
    assert "nothing to do" in _ok("init", str(project), "--runner", "celery", "--no-deps")
    assert tree_hashes(project) == after_init

    _ok("add-task", "resize_image", "-p", str(project), "--arg", "image_id:int")
    assert '"/resize-image"' in (project / "svc/routers/celery_tasks.py").read_text()
    assert (project / "svc/routers/tasks.py").read_bytes() == own
    assert "nothing to do" in _ok("update", str(project))
    assert "wired and current" in _ok("check", str(project))
    rows = {row["name"]: row for row in json.loads(_ok("list", "-p", str(project), "--json"))}
    assert rows["resize_image"]["route"] == "POST /tasks/resize-image"
    _ruff_and_mypy_clean(project)

    _ok("remove-task", "resize_image", "-p", str(project))
    assert tree_hashes(project) == after_init


def test_the_dry_run_shows_no_conflict_and_writes_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = tree_hashes(project)
    output = _ok("init", str(project), "--runner", "celery", "--no-deps", "--dry-run", "--json")
    report = json.loads(output)
    actions = {f["path"]: f["action"] for f in report["files"]}
    assert "conflict" not in actions.values()
    assert actions["svc/routers/celery_tasks.py"] == "create"
    assert "svc/routers/tasks.py" not in actions
    assert tree_hashes(project) == before


@pytest.mark.parametrize(
    ("runner", "own", "chosen"),
    [
        ("arq", "arq_tasks", "bgtasks_arq_tasks"),
        ("taskiq", "taskiq_tasks", "bgtasks_taskiq_tasks"),
        ("builtin", "notifications", "builtin_notifications"),
    ],
)
def test_every_runner_leaves_the_projects_module_alone(
    tmp_path: Path, runner: str, own: str, chosen: str
) -> None:
    project = _project(tmp_path, own)
    mine = (project / f"svc/routers/{own}.py").read_bytes()
    output = _ok("init", str(project), "--runner", runner, "--no-deps")
    assert f"svc/routers/{own}.py is yours: the {runner} router is svc/routers/{chosen}.py" in (
        output
    )
    assert (project / f"svc/routers/{own}.py").read_bytes() == mine
    assert f"from svc.routers.{chosen} import router" in (project / "svc/main.py").read_text()
    assert f'router_file = "{chosen}"' in (project / ".bgtasks.toml").read_text()
    assert "wired and current" in _ok("check", str(project))


def test_both_names_taken_is_refused_naming_both(tmp_path: Path) -> None:
    project = _project(tmp_path)
    write_tree(project, {"svc/routers/celery_tasks.py": ROUTER})
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery", "--no-deps")
    assert code == 2, output
    assert "svc/routers/tasks.py" in output and "svc/routers/celery_tasks.py" in output
    assert "routes-module" in output and "--force" not in output
    assert tree_hashes(project) == before
    # the way out the hint names
    write_tree(project, {"pyproject.toml": '[tool.bgtasks]\nroutes-module = "svc.jobs_api"\n'})
    _ok("init", str(project), "--runner", "celery", "--no-deps")
    assert (project / "svc/jobs_api/tasks.py").is_file()
    assert "router_file" not in (project / ".bgtasks.toml").read_text()


def test_a_package_of_the_projects_own_takes_the_name_too(tmp_path: Path) -> None:
    project = _project(tmp_path, "tasks")
    (project / "svc/routers/tasks.py").unlink()
    write_tree(project, {"svc/routers/tasks/__init__.py": OWN_ROUTER})
    output = _ok("init", str(project), "--runner", "celery", "--no-deps")
    assert "svc/routers/tasks/ is yours: the celery router is svc/routers/celery_tasks.py" in (
        output
    )
    assert not (project / "svc/routers/tasks.py").exists()


def test_the_tasks_package_takes_the_name_of_a_router_beside_it(tmp_path: Path) -> None:
    """Routers at the top of the package: celery's `svc/tasks.py` would be shadowed by the
    tasks package `svc/tasks/` generated in the same run."""
    project = write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": SETTINGS,
            "svc/items.py": ROUTER,
            "svc/users.py": ROUTER,
            "svc/main.py": (
                "from fastapi import FastAPI\n\nfrom svc import items, users\n\n"
                "app = FastAPI()\napp.include_router(items.router)\n"
                "app.include_router(users.router)\n"
            ),
        },
    )
    output = _ok("init", str(project), "--runner", "celery", "--no-deps")
    assert "svc.tasks is the tasks package: the celery router is svc/celery_tasks.py" in output
    assert not (project / "svc/tasks.py").exists()
    assert "wired and current" in _ok("check", str(project))


def test_migrate_gives_the_target_router_a_free_name(tmp_path: Path) -> None:
    project = _project(tmp_path)
    own = (project / "svc/routers/tasks.py").read_bytes()
    _ok("init", str(project), "--runner", "builtin", "--no-deps")
    assert "router_file" not in (project / ".bgtasks.toml").read_text()
    _ok("add-task", "ping", "-p", str(project), "--arg", "host:str")
    _ok("migrate", "--to", "celery", "-p", str(project), "--api-shape", "new")
    assert (project / "svc/routers/tasks.py").read_bytes() == own
    assert '"/ping"' in (project / "svc/routers/celery_tasks.py").read_text()
    assert 'router_file = "celery_tasks"' in (project / ".bgtasks.toml").read_text()
    assert "wired and current" in _ok("check", str(project))


def test_a_router_file_that_is_no_module_name_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _ok("init", str(project), "--runner", "celery", "--no-deps")
    state = project / ".bgtasks.toml"
    state.write_text(state.read_text().replace('"celery_tasks"', '"x.y"', 1))
    code, output = invoke("check", str(project))
    assert code == 2, output
    assert "layout.router_file" in output

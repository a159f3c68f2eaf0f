"""add-task / remove-task / list on a scaffolded project (builtin runner here; the queue
runners have their own tests and snapshots)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import invoke, tree_hashes

cli = CliRunner()


@pytest.fixture
def project(example) -> Path:  # type: ignore[no-untyped-def]
    root: Path = example("layered")
    code, output = invoke("init", str(root), "--runner", "builtin")
    assert code == 0, output
    return root


def test_add_then_remove_is_byte_identical(project: Path) -> None:
    before = tree_hashes(project)
    code, output = invoke(
        "add-task",
        "resize_image",
        "-p",
        str(project),
        "--arg",
        "image_id:int",
        "--arg",
        "sizes:list[int]",
    )
    assert code == 0, output
    tasks = (project / "app/tasks/notifications.py").read_text()
    assert "def resize_image(\n    image_id: int,\n    sizes: list[int],\n) -> None:" in tasks
    router = (project / "app/api/v1/routes/notifications.py").read_text()
    assert '@router.post(\n    "/resize-image",\n    status_code=202,' in router
    assert 'summary="Queue resize image"' in router
    assert "class ResizeImageRequest(BaseModel):" in router
    assert (
        "def test_resize_image_runs_after_the_response("
        in (project / "tests/test_bgtasks_builtin.py").read_text()
    )
    code, output = invoke("remove-task", "resize_image", "-p", str(project))
    assert code == 0, output
    assert tree_hashes(project) == before


def test_same_again_is_a_no_op_other_options_a_conflict(project: Path) -> None:
    args = ("add-task", "ping", "-p", str(project), "--arg", "host:str")
    assert invoke(*args)[0] == 0
    after = tree_hashes(project)
    code, output = invoke(*args)
    assert code == 0 and "nothing to do" in output
    assert tree_hashes(project) == after
    code, output = invoke("add-task", "ping", "-p", str(project), "--arg", "port:int")
    assert code == 1 and "--force" in output
    assert tree_hashes(project) == after
    code, output = invoke("add-task", "ping", "-p", str(project), "--arg", "port:int", "--force")
    assert code == 0, output
    tasks = (project / "app/tasks/notifications.py").read_text()
    assert "port: int" in tasks and "host: str" not in tasks


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("class", "keyword"),
        ("__init__", "dunder"),
        ("list", "builtin"),
        ("../x", "not a Python identifier"),
        ("{{ 7*7 }}", "not a Python identifier"),
        ("Resize", "lower_case"),
        ("process_notification", "already defined"),
        ("x" * 40, "longer than"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_touched(
    project: Path, name: str, reason: str
) -> None:
    before = tree_hashes(project)
    code, output = invoke("add-task", name, "-p", str(project))
    assert code == 2, output
    assert reason in output
    assert tree_hashes(project) == before


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--every", "5"], "cannot schedule"),
        (["--cron", "0 9 * * *"], "cannot schedule"),
        (["--retries", "2"], "never retry"),
        (["--arg", "when:datetime"], "not supported"),
        (["--arg", "a:int", "--arg", "a:str"], "repeat"),
    ],
)
def test_options_the_runner_cannot_honour(project: Path, options: list[str], reason: str) -> None:
    code, output = invoke("add-task", "nightly", "-p", str(project), *options)
    assert code == 2 and reason in output


def test_project_without_a_runner_points_to_init(tmp_path: Path) -> None:
    code, output = invoke("add-task", "ping", "-p", str(tmp_path))
    assert code == 2 and "bgtasks init" in output


def test_remove_refuses_an_edited_body_unless_forced(project: Path) -> None:
    assert invoke("add-task", "ping", "-p", str(project))[0] == 0
    tasks = project / "app/tasks/notifications.py"
    tasks.write_text(tasks.read_text().replace('"ping ran with', '"ping (edited) ran with'))
    edited = tree_hashes(project)
    code, output = invoke("remove-task", "ping", "-p", str(project))
    assert code == 1 and "changed" in output
    assert tree_hashes(project) == edited
    code, _ = invoke("remove-task", "ping", "-p", str(project), "--force")
    assert code == 0
    assert "def ping(" not in tasks.read_text()


def test_remove_only_removes_what_add_task_added(project: Path) -> None:
    code, output = invoke("remove-task", "process_notification", "-p", str(project))
    assert code == 2 and "was not added by" in output


def test_list_includes_hand_written_tasks(project: Path) -> None:
    tasks = project / "app/tasks/notifications.py"
    tasks.write_text(tasks.read_text() + "\n\ndef mine(x: int) -> None:\n    pass\n")
    assert invoke("add-task", "ping", "-p", str(project))[0] == 0
    code, output = invoke("list", "-p", str(project), "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["process_notification"]["added_by"] == "init"
    assert rows["ping"]["added_by"] == "add-task"
    assert rows["ping"]["route"] == "POST /notifications/ping"
    assert rows["mine"]["added_by"] == "you"


def _collected(project: Path) -> int:
    """How many tests the scaffolded project's pytest collects."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = re.search(r"(\d+) tests? collected", result.stdout)
    assert found, result.stdout + result.stderr
    return int(found.group(1))


def test_fifty_tasks_keep_the_project_clean(project: Path) -> None:
    scaffold_tests = _collected(project)
    for index in range(50):
        args = ["--arg", f"value_{index}:int"] if index % 2 else ["--no-route"]
        code, output = invoke("add-task", f"task_{index:02d}", "-p", str(project), *args)
        assert code == 0, output
    for cmd in (
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E,F,W,I,B,UP", "."],
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", "."],
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
    ):
        result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    # the scaffold's own tests + one per added task
    assert f"{scaffold_tests + 50} passed" in result.stdout


def test_init_again_after_add_task_changes_nothing(project: Path) -> None:
    assert invoke("add-task", "ping", "-p", str(project), "--arg", "host:str")[0] == 0
    after = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0 and "nothing to do" in output, output
    assert tree_hashes(project) == after


def test_newer_python_syntax_in_the_tasks_module(project: Path) -> None:
    """A module this interpreter's `ast` cannot read (Python 3.14's `except A, B:`) is
    located with libcst instead; add and remove still work and keep it as it is."""
    tasks = project / "app/tasks/notifications.py"
    tasks.write_text(
        tasks.read_text()
        + "\n\ndef tolerant() -> None:\n    try:\n        pass\n"
        + "    except ValueError, TypeError:\n        pass\n"
    )
    before = tree_hashes(project)
    code, output = invoke("add-task", "ping", "-p", str(project), "--arg", "host:str")
    assert code == 0, output
    assert "except ValueError, TypeError:" in tasks.read_text()
    assert tasks.read_text().index("def tolerant") < tasks.read_text().index("def ping")
    assert invoke("remove-task", "ping", "-p", str(project))[0] == 0
    assert tree_hashes(project) == before


def test_syntax_error_in_a_generated_module_is_reported(project: Path) -> None:
    tasks = project / "app/tasks/notifications.py"
    tasks.write_text(tasks.read_text() + "\ndef broken(:\n")
    before = tree_hashes(project)
    code, output = invoke("add-task", "ping", "-p", str(project))
    assert code == 2 and "notifications.py" in output and "syntax error" in output
    assert tree_hashes(project) == before


@pytest.mark.parametrize("runner", ["arq", "celery"])
def test_remove_the_first_of_several_added_tasks_without_force(
    example,  # type: ignore[no-untyped-def]
    runner: str,
) -> None:
    """Registration entries of added tasks are identical but for their names: the first
    one's lines must be read from its own span, not from a diff, or its last line and the
    next entry's first line look edited (and remove-task refuses)."""
    root: Path = example("layered")
    assert invoke("init", str(root), "--runner", runner)[0] == 0
    before = tree_hashes(root)
    for name in ("first", "second", "third"):
        code, output = invoke("add-task", name, "-p", str(root), "--every", "60")
        assert code == 0, output
    for name in ("first", "second", "third"):
        code, output = invoke("remove-task", name, "-p", str(root))
        assert code == 0, (name, output)
    after = tree_hashes(root)
    assert {k: v for k, v in after.items() if k != ".bgtasks.toml"} == {
        k: v for k, v in before.items() if k != ".bgtasks.toml"
    }


@pytest.mark.parametrize("runner", ["arq", "celery", "taskiq"])
def test_remove_task_in_a_project_with_its_own_ruff_style(
    example,  # type: ignore[no-untyped-def]
    runner: str,
) -> None:
    """The project's ruff restyles the inserted parts (single quotes, its line length):
    remove-task still sees them as add-task wrote them, and takes them out again."""
    root: Path = example("layered")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.ruff]\nline-length = 99\n\n[tool.ruff.format]\nquote-style = "single"\n'
    )
    assert invoke("init", str(root), "--runner", runner)[0] == 0
    before = tree_hashes(root)
    code, output = invoke("add-task", "resize", "-p", str(root), "--arg", "width:int")
    assert code == 0, output
    code, output = invoke("add-task", "tick", "-p", str(root), "--every", "60")
    assert code == 0, output
    tasks = next(p for p in (root / "app/tasks").glob("*tasks.py"))
    assert "'width': width" in tasks.read_text()  # in the project's quote style
    for name in ("resize", "tick"):
        code, output = invoke("remove-task", name, "-p", str(root))
        assert code == 0, output
    after = tree_hashes(root)
    assert {k: v for k, v in after.items() if k != ".bgtasks.toml"} == {
        k: v for k, v in before.items() if k != ".bgtasks.toml"
    }

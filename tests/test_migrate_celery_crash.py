"""SIGKILL at every rename of `migrate --to taskiq` from a celery scaffold grown by
add-task (an edited body, a schedule): the next run ends in exactly the tree an
uninterrupted move leaves (the harness of test_crash.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bgtasks_gen.journal import TEMP_PREFIX
from tests.conftest import EXAMPLES, invoke, tree_hashes
from tests.test_crash import (
    Command,
    Reference,
    _assert_recovers,
    _bgtasks,
    _killed_copies,
    _leftovers,
    _need_strace,  # noqa: F401 - the module's autouse fixture: skip or fail without strace
    _renames,
)

MOVE = Command(lambda p: ["migrate", str(p), "--to", "taskiq"])
RESIZE_BODY = """    logger.info("resize: attempt %d", self.request.retries + 1)
    return {
        "width": width,
        "name": name,
    }"""


def _grown_celery_project(folder: Path) -> Path:
    project = folder / "before"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    for args in (["resize", "--arg", "width:int", "--arg", "name:str"], ["tick", "--every", "5"]):
        code, output = invoke("add-task", *args, "-p", str(project))
        assert code == 0, output
    tasks = project / "app/tasks/tasks.py"
    text = tasks.read_text()
    assert RESIZE_BODY in text
    edited = '    logger.info("task %s", self.request.id)\n    return {"width": width * 2}'
    tasks.write_text(text.replace(RESIZE_BODY, edited, 1))
    return project


def _reference(tmp_path: Path) -> Reference:
    """The grown project, and what an uninterrupted move makes of it (as test_crash's
    `_reference`, from a project add-task grew rather than a bare init)."""
    before = _grown_celery_project(tmp_path)
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(before, uninterrupted)
    trace = tmp_path / "trace"
    result = _bgtasks(MOVE.args(uninterrupted), trace=trace)
    assert result.returncode == 0, result.stdout + result.stderr
    sources = _renames(trace)
    assert sources and all(Path(s).name.startswith(TEMP_PREFIX) for s in sources), sources
    assert _leftovers(uninterrupted) == []
    # the move did happen: celery's tasks module gone, the edited body on taskiq
    assert not (uninterrupted / "app/tasks/tasks.py").exists()
    moved = (uninterrupted / "app/tasks/taskiq_tasks.py").read_text()
    assert 'logger.info("task %s", control.task_id)' in moved
    return Reference(before, tree_hashes(before), tree_hashes(uninterrupted), len(sources))


def test_sigkill_at_every_rename_of_a_celery_move_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no render cache: a cache write is a rename of its own, made by the first run only,
    # which would shift the positions of the write's renames between runs
    unusable = tmp_path / "no-cache"
    unusable.write_text("a file, not a folder: the cache is skipped\n")
    monkeypatch.setenv("BGTASKS_CACHE_DIR", str(unusable))
    reference = _reference(tmp_path)
    # celery's modules are deleted between the renames: undo puts them back, finishing
    # removes them
    assert reference.renames > 10
    for position, project in _killed_copies(
        reference.before, MOVE.args, range(1, reference.renames + 1), tmp_path / "killed"
    ):
        _assert_recovers(MOVE, project, reference, f"celery -> taskiq, killed at rename {position}")
    print(f"celery -> taskiq: killed at each of {reference.renames} renames")

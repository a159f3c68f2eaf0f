"""`bgtasks failed`: its commands are there, and a project without an inbox is told so
in one message (exit 2) before anything runs in the project's interpreter."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import EXAMPLES, invoke


def test_the_commands_are_listed_in_help() -> None:
    code, out = invoke("failed", "--help")
    assert code == 0
    for command in ("list", "show", "replay", "discard"):
        assert command in out


def test_builtin_has_no_inbox(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "builtin", "--no-deps")[0] == 0
    code, out = invoke("failed", "list", str(project))
    assert code == 2, out
    assert "no failed-task inbox" in out


def test_a_deleted_inbox_module_is_named_with_its_fix(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "arq", "--no-deps")[0] == 0
    (project / "app" / "tasks" / "arq_inbox.py").unlink()
    code, out = invoke("failed", "show", "some-id", str(project))
    assert code == 2, out
    assert "app/tasks/arq_inbox.py is missing" in out and "bgtasks update" in out

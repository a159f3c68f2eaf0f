"""Bad input gets one clear message and exit 2 with nothing written; odd but valid files
(CRLF, tabs, a BOM, 5,000 lines) are patched with their style kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import invoke, is_subsequence, tree_hashes

cli = CliRunner()


def test_non_utf8_settings_module(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    config = project / "app/core/config.py"
    config.write_bytes(config.read_bytes().replace(b"Layered Shop", "Caf\xe9".encode("latin-1")))
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 2 and "config.py is not UTF-8" in output
    assert tree_hashes(project) == before


def test_state_file_edited_into_nonsense(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    state = project / ".bgtasks.toml"
    for nonsense in ("runner = [1, 2\n", "runner = 3\n", "just words\n"):
        state.write_text(nonsense)
        before = tree_hashes(project)
        for args in (
            ["add-task", "ping", "-p", str(project)],
            ["init", str(project), "-r", "builtin"],
        ):
            code, output = invoke(*args)
            assert code == 2, output
            assert ".bgtasks.toml" in output and "hint:" in output
        assert tree_hashes(project) == before


@pytest.mark.parametrize(
    "expression",
    ["* * * *", "61 * * * *", "0 25 * * *", "0 9 * * 8", "*/0 * * * *", "a b c d e", "5-1 * * * *"],
)
def test_invalid_cron_expressions(example, expression: str) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", "arq")[0] == 0
    before = tree_hashes(project)
    code, output = invoke("add-task", "nightly", "-p", str(project), "--cron", expression)
    assert code == 2 and "--cron" in output
    assert tree_hashes(project) == before


@pytest.mark.parametrize("style", ["crlf", "tabs", "bom"])
def test_odd_but_valid_files_keep_their_style(example, style: str) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    config = project / "app/core/config.py"
    text = config.read_text()
    if style == "tabs":
        text = text.replace("    ", "\t")
    data = text.encode()
    if style == "crlf":
        data = text.replace("\n", "\r\n").encode()
    if style == "bom":
        data = b"\xef\xbb\xbf" + data
    config.write_bytes(data)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    patched = config.read_bytes()
    # every original line is still there, in order (only lines were added)
    assert is_subsequence(data.splitlines(), patched.splitlines())
    if style == "crlf":
        assert b"\n" not in patched.replace(b"\r\n", b"")
        assert b'\r\n    SMTP_HOST: str = "localhost"\r\n' in patched
    if style == "tabs":
        assert b'\n\tSMTP_HOST: str = "localhost"\n' in patched
    if style == "bom":
        assert patched.startswith(b"\xef\xbb\xbf")
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0 and "nothing to do" in output


def test_a_5000_line_settings_module(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    config = project / "app/core/config.py"
    fields = "".join(f"    FIELD_{i:04d}: str = 'value {i}'\n" for i in range(5000))
    text = config.read_text().replace("    DATABASE_URL:", fields + "    DATABASE_URL:")
    config.write_text(text)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    patched = config.read_text()
    assert is_subsequence(text.splitlines(), patched.splitlines())
    assert patched.count("SMTP_HOST") == 1
    assert patched.index("FIELD_4999") < patched.index("SMTP_HOST")


def test_current_folder_deleted_under_the_shell(example, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    fresh = example("factory")
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    before = {path: tree_hashes(path) for path in (project, fresh)}
    gone = tmp_path / "gone"
    gone.mkdir()
    home = Path.cwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        # init: bad input (2); check reports every problem as a finding (1)
        outcomes = [
            (2, invoke("init", str(fresh), "--runner", "celery")),
            (1, invoke("check", "--project", str(project))),
        ]
    finally:
        os.chdir(home)
    for expected, (code, output) in outcomes:
        assert code == expected and "current folder no longer exists" in output, output
    assert {path: tree_hashes(path) for path in (project, fresh)} == before


def test_non_utf8_tasks_module_for_add_task_and_list(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    tasks = project / "app/tasks/notifications.py"
    tasks.write_bytes(tasks.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    before = tree_hashes(project)
    for args in (["add-task", "ping", "-p", str(project)], ["list", "-p", str(project)]):
        code, output = invoke(*args)
        assert code == 2, output
        assert "notifications.py is not UTF-8" in output and "hint:" in output
        assert "Traceback" not in output
    assert tree_hashes(project) == before


@pytest.mark.parametrize("runner", ["builtin", "celery", "arq"])
def test_a_pydantic_1_project_is_told_to_move_first(tmp_path: Path, runner: str) -> None:
    from tests.conftest import write_tree

    project = write_tree(
        tmp_path / "p",
        {
            "svc/__init__.py": "",
            "svc/config.py": "from pydantic import BaseSettings\n\n\n"
            "class Settings(BaseSettings):\n    name: str = 'x'\n\n\nsettings = Settings()\n",
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
        },
    )
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", runner)
    assert code == 2 and "need pydantic 2" in output and "pydantic_settings" in output
    assert tree_hashes(project) == before

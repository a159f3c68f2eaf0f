"""No command runs a binary the project ships: the project's ruff configuration is applied
by bgtasks' own ruff (or the one $BGTASKS_RUFF names), never by the project's venv ruff
or whatever `ruff` comes first on PATH."""

from __future__ import annotations

import io
import os
import stat
import tokenize
from pathlib import Path

import pytest

from bgtasks_gen import ruff_style
from bgtasks_gen.errors import BadInput
from bgtasks_gen.ruff_style import OWN, RUFF_VARIABLE, ProjectStyle, find_ruff
from tests.conftest import invoke, tree_hashes

SINGLE_QUOTES = '[format]\nquote-style = "single"\n'


def _fake_ruff(path: Path, marker: Path, then: str = "exit 1") -> Path:
    """An executable `ruff` that leaves a trace in `marker`, then does `then`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> "{marker}"\n{then}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _plain_double_quoted(source: str) -> list[str]:
    """Single-line strings in double quotes that the single quote style would convert
    (ruff keeps double quotes around a string holding a single quote)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING:
            continue
        body = token.string.lstrip("rRbBuUfF")
        if body.startswith('"') and not body.startswith('"""') and "'" not in body:
            found.append(token.string)
    return found


def _single_quoted(source: str) -> int:
    return sum(
        1
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.STRING and token.string.lstrip("rRbBuUfF").startswith("'")
    )


@pytest.fixture
def hostile_project(
    example,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Path]:
    """A project that configures ruff and ships ruff binaries in both venv folders, with
    a third one first on PATH; (project, marker file the binaries would write)."""
    root: Path = example("layered")
    (root / "ruff.toml").write_text(SINGLE_QUOTES)
    marker = tmp_path / "project-binary-ran"
    for folder in (".venv", "venv"):
        _fake_ruff(root / folder / "bin" / "ruff", marker)
    path_bin = tmp_path / "path-bin"
    _fake_ruff(path_bin / "ruff", marker)
    monkeypatch.setenv("PATH", f"{path_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv(RUFF_VARIABLE, raising=False)
    return root, marker


def test_no_command_runs_the_projects_ruff_yet_its_configuration_applies(
    hostile_project: tuple[Path, Path],
) -> None:
    root, marker = hostile_project
    commands = [
        (("init", str(root), "--runner", "arq", "--dry-run"), 0),
        (("init", str(root), "--runner", "arq", "--check"), 1),  # everything would change
        (("init", str(root), "--runner", "arq"), 0),
        (("check", str(root)), 0),
        (("list", str(root)), 0),
        (("update", str(root), "--dry-run"), 0),
        (("add-task", "x", "-p", str(root), "--dry-run"), 0),
        (("add-task", "x", "-p", str(root)), 0),
        (("check", str(root)), 0),
    ]
    for args, expected in commands:
        code, output = invoke(*args)
        assert code == expected, (args, output)
        assert not marker.exists(), (args, marker.read_text())

    modules = sorted((root / "app" / "tasks").glob("*.py"))
    assert any(p.name == "arq_tasks.py" for p in modules)
    for module in modules:
        source = module.read_text()
        assert _plain_double_quoted(source) == [], module.name
    tasks = (root / "app" / "tasks" / "arq_tasks.py").read_text()
    assert "async def x(" in tasks
    assert _single_quoted(tasks) > 0


def test_the_note_names_the_ruff_that_formatted(hostile_project: tuple[Path, Path]) -> None:
    root, marker = hostile_project
    code, output = invoke("init", str(root), "--runner", "arq", "--dry-run", "--json")
    assert code == 0, output
    own = find_ruff()
    assert own is not None and own.origin == OWN
    note = next(n for n in _json_notes(output) if "formatted with ruff" in n)
    assert f"(bgtasks' own: {own.path})" in note and note.endswith("using the project's ruff.toml")
    assert not own.path.startswith(str(root)) and not marker.exists()


def _json_notes(output: str) -> list[str]:
    import json

    notes = json.loads(output)["notes"]
    assert isinstance(notes, list)
    return [str(note) for note in notes]


def test_a_ruff_named_in_the_environment_is_the_one_that_runs(
    hostile_project: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, marker = hostile_project
    own = find_ruff()
    assert own is not None
    named_marker = tmp_path / "named-ruff-ran"
    named = _fake_ruff(tmp_path / "tools" / "ruff", named_marker, f'exec "{own.path}" "$@"')
    monkeypatch.setenv(RUFF_VARIABLE, str(named))
    code, output = invoke("init", str(root), "--runner", "arq", "--dry-run", "--json")
    assert code == 0, output
    assert "format" in named_marker.read_text() and not marker.exists()
    note = next(n for n in _json_notes(output) if "formatted with ruff" in n)
    assert f"(${RUFF_VARIABLE}: {named})" in note


@pytest.mark.parametrize("kind", ["missing", "not executable"])
def test_a_named_ruff_that_cannot_run_is_an_error_and_nothing_is_written(
    hostile_project: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    root, marker = hostile_project
    named = tmp_path / "nowhere" / "ruff"
    if kind == "not executable":
        named.parent.mkdir()
        named.write_text("#!/bin/sh\nexit 0\n")
    monkeypatch.setenv(RUFF_VARIABLE, str(named))
    before = tree_hashes(root)
    code, output = invoke("init", str(root), "--runner", "arq")
    assert code == 2, output
    assert RUFF_VARIABLE in output and "unset it" in " ".join(output.split())
    assert tree_hashes(root) == before and not marker.exists()


def test_find_ruff_never_looks_in_the_project_or_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without bgtasks' own ruff there is no ruff at all, whatever PATH offers."""
    marker = tmp_path / "ran"
    _fake_ruff(tmp_path / "bin" / "ruff", marker)
    _fake_ruff(tmp_path / ".venv" / "bin" / "ruff", marker)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(ruff_style, "_own_ruff", lambda: None)
    assert find_ruff({}) is None
    (tmp_path / "ruff.toml").write_text(SINGLE_QUOTES)
    style = ProjectStyle(tmp_path, environ={})
    assert not style.active
    assert style.apply("a.py", 'x = "a"\n') == 'x = "a"\n'
    assert "bgtasks' own ruff is missing" in style.notes[0] and RUFF_VARIABLE in style.notes[0]
    assert not marker.exists()


def test_find_ruff_takes_the_named_one_first(tmp_path: Path) -> None:
    named = _fake_ruff(tmp_path / "ruff", tmp_path / "ran")
    found = find_ruff({RUFF_VARIABLE: str(named)})
    assert found is not None and (found.path, found.origin) == (str(named), f"${RUFF_VARIABLE}")
    with pytest.raises(BadInput, match=RUFF_VARIABLE):
        find_ruff({RUFF_VARIABLE: str(tmp_path / "missing")})


def test_bgtasks_own_ruff_is_the_ruff_packages_binary() -> None:
    from ruff import find_ruff_bin  # type: ignore[import-untyped]

    found = find_ruff({})
    assert found is not None
    assert (found.path, found.origin) == (str(find_ruff_bin()), OWN)


def test_a_ruff_that_answers_nothing_leaves_the_code_in_the_default_style(
    tmp_path: Path,
) -> None:
    """ruff echoes its input; a binary that prints nothing must not empty the modules."""
    (tmp_path / "ruff.toml").write_text(SINGLE_QUOTES)
    silent = _fake_ruff(tmp_path / "tools" / "ruff", tmp_path / "ran")
    style = ProjectStyle(tmp_path, environ={RUFF_VARIABLE: str(silent)})
    assert style.apply("a.py", 'x = "a"\n') == 'x = "a"\n'
    assert (tmp_path / "ran").exists() and not style.active
    assert style.notes == [
        f"{silent} answered nothing for a.py; the generated code is in ruff's default style"
    ]


def test_python_m_bgtasks_gen_does_not_import_the_projects_modules(
    example,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Run from inside the project, `python -m` would put it first on sys.path: a module of
    the project named like one of bgtasks' dependencies must not be imported."""
    import subprocess
    import sys

    root: Path = example("layered")
    marker = tmp_path / "project-module-ran"
    (root / "typer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    done = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "list", "."],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not marker.exists(), done.stderr
    assert "bgtasks init" in done.stdout + done.stderr  # not a bgtasks project yet

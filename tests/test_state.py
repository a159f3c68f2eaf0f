"""A tampered .bgtasks.toml is refused where it is read: one message naming the key,
exit 2, and not one file outside the project opened first."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from bgtasks_gen.state import STATE_FILE, read_state
from tests.conftest import EXAMPLES, invoke

SENTINEL = "SENTINEL-c0ffee-outside-the-project"
# commands that read the state; the check is the one CI runs
COMMANDS = (
    ("check",),
    ("list",),
    ("add-task", "thumbnail", "--arg", "size:int"),
    ("remove-task", "resize"),
    ("update",),
)


# -- watching for reads outside the project


_outside: list[Path] = []  # folders no open() may reach while a test watches
_opened: list[str] = []
_busy = threading.local()


def _audit(event: str, args: tuple[object, ...]) -> None:
    if not _outside or event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    target = args[0]
    if not isinstance(target, str | bytes | os.PathLike) or getattr(_busy, "on", False):
        return
    _busy.on = True
    try:
        real = Path(os.path.realpath(os.fsdecode(target)))
        if any(real.is_relative_to(folder) for folder in _outside):
            _opened.append(str(real))
    finally:
        _busy.on = False


_audit_installed: list[bool] = []


@pytest.fixture
def watch_reads() -> Iterator[Callable[[Path], list[str]]]:
    """watch(folder) -> the live list of files opened under folder from now on."""
    if not _audit_installed:
        sys.addaudithook(_audit)  # cannot be removed: it idles while _outside is empty
        _audit_installed.append(True)

    def watch(folder: Path) -> list[str]:
        _outside.append(folder.resolve())
        return _opened

    yield watch
    _outside.clear()
    _opened.clear()


# -- a scaffolded project with one added task, and a sentinel beside it


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scaffolded") / "project"
    shutil.copytree(EXAMPLES / "layered", root)
    assert invoke("init", str(root), "--runner", "celery")[0] == 0
    assert invoke("add-task", "resize", "--arg", "x:int", "-p", str(root))[0] == 0
    return root


@pytest.fixture
def project(scaffolded: Path, tmp_path: Path) -> Path:
    """A copy of the scaffolded project, with tmp_path/outside beside it: a copy of its
    own code whose every file holds the sentinel."""
    root = tmp_path / "project"
    shutil.copytree(scaffolded, root)
    outside = tmp_path / "outside"
    shutil.copytree(root / "app", outside / "app")
    for path in outside.rglob("*"):
        if path.is_file():
            path.write_text(f"{SENTINEL}\n")
    (outside / "secret.py").write_text(f"{SENTINEL}\n")
    return root


def _state(root: Path) -> str:
    return (root / STATE_FILE).read_text()


def _write_state(root: Path, text: str) -> None:
    (root / STATE_FILE).write_text(text)


def _set_line(root: Path, starts: str, line: str) -> None:
    """Replace the one line of the state that starts with `starts`."""
    lines = _state(root).splitlines()
    found = [i for i, text in enumerate(lines) if text.startswith(starts)]
    assert len(found) == 1, (starts, lines)
    lines[found[0]] = line
    _write_state(root, "\n".join(lines) + "\n")


def _add_under(root: Path, header: str, lines: str) -> None:
    text = _state(root)
    assert f"{header}\n" in text
    _write_state(root, text.replace(f"{header}\n", f"{header}\n{lines}", 1))


def _run(*args: str) -> tuple[int, str, dict[str, object]]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, result.output, json.loads(result.stdout)


def _with_project(command: tuple[str, ...], root: Path) -> list[str]:
    return [*command, "-p", str(root)]


def _files_key_through_a_link(root: Path) -> None:
    (root / "vendor").symlink_to(root.parent / "outside")
    _add_under(root, "[files]", f'"vendor/secret.py" = "sha256:{"0" * 64}"\n')


def _set_runner(root: Path, value: str) -> None:
    text = _state(root)
    assert 'runner = "celery"\nrunners' in text
    _write_state(root, text.replace('runner = "celery"\nrunners', f"runner = {value}\nrunners"))


def _tasks_package_as_a_link(root: Path) -> None:
    shutil.rmtree(root / "app/tasks")
    (root / "app/tasks").symlink_to(root.parent / "outside/app/tasks")


# each tamper: (what it does to the project, the key the message must name)
Tamper = Callable[[Path], None]

TAMPERS: dict[str, tuple[Tamper, str]] = {
    "files key with ..": (
        lambda p: _add_under(p, "[files]", f'"../outside/secret.py" = "sha256:{"0" * 64}"\n'),
        'files."../outside/secret.py"',
    ),
    "absolute files key": (
        lambda p: _add_under(
            p, "[files]", f'"{p.parent / "outside/secret.py"}" = "sha256:{"0" * 64}"\n'
        ),
        "an absolute path",
    ),
    "files key through a link": (_files_key_through_a_link, 'files."vendor/secret.py"'),
    "tests_dir with ..": (
        lambda p: _set_line(p, "tests_dir =", 'tests_dir = "../outside"'),
        "layout.tests_dir",
    ),
    "absolute source_root": (
        lambda p: _set_line(p, "source_root =", f'source_root = "{p.parent / "outside"}"'),
        "layout.source_root",
    ),
    "tasks package replaced by a link": (_tasks_package_as_a_link, "layout.tasks_module"),
    "tasks_module that is not a module name": (
        lambda p: _set_line(p, "tasks_module =", 'tasks_module = "app/../../outside"'),
        "layout.tasks_module",
    ),
    "10 MB string": (
        lambda p: _set_line(p, "tasks_module =", f'tasks_module = "{"a" * 10_000_000}"'),
        "layout.tasks_module is 10,000,000 characters long",
    ),
    "100,000 files": (
        lambda p: _add_under(
            p,
            "[files]",
            "".join(f'"app/f{i}.py" = "sha256:{"0" * 64}"\n' for i in range(100_000)),
        ),
        "files has 100,0",  # 100,000 added to what init recorded: "... entries (at most 1000)"
    ),
    "100,000 arguments": (
        lambda p: _set_line(
            p, "args =", "args = [" + ", ".join(f'"a{i}:int"' for i in range(100_000)) + "]"
        ),
        "tasks.resize.args has 100,000 items",
    ),
    "runner of the wrong type": (lambda p: _set_runner(p, "3"), "runner must be a string"),
    "unknown runner": (lambda p: _set_runner(p, '"rq"'), "runner is 'rq', not one of"),
    "layout that is not a table": (
        lambda p: _write_state(p, _state(p).replace("[layout]\n", 'layout = "x"\n[layout2]\n')),
        "layout must be a table",
    ),
    "flag that is a string": (
        lambda p: _set_line(p, "pydantic_v1 =", 'pydantic_v1 = "no"'),
        "layout.pydantic_v1 must be true or false",
    ),
    "broker that is a date": (
        lambda p: _set_line(p, "broker =", "broker = 1979-05-27"),
        "layout.broker must be a string",
    ),
    "retries that is a string": (
        lambda p: _set_line(p, "retries =", 'retries = "three"'),
        "tasks.resize.retries must be a whole number",
    ),
    "timeout out of range": (
        lambda p: _set_line(p, "timeout =", "timeout = -5"),
        "tasks.resize.timeout is -5",
    ),
    "cron that does not parse": (
        lambda p: _set_line(p, "cron =", 'cron = "every day"'),
        "tasks.resize.cron is invalid",
    ),
    "argument of an unknown type": (
        lambda p: _set_line(p, "args =", 'args = ["x:object"]'),
        "tasks.resize.args[0] is invalid",
    ),
    "task name that is not one": (
        lambda p: _write_state(p, _state(p).replace("[tasks.resize]", '[tasks."os.system"]')),
        'tasks."os.system" is not a task name',
    ),
    "file hash that is a number": (
        lambda p: _set_line(p, '"app/tasks/tasks.py" =', '"app/tasks/tasks.py" = 5'),
        'files."app/tasks/tasks.py" must be a string',
    ),
}
HEAVY = {"10 MB string", "100,000 files", "100,000 arguments"}  # ~1 s to parse each


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_state_is_refused_naming_the_key_before_reading_outside(
    project: Path, tamper: str, watch_reads: Callable[[Path], list[str]]
) -> None:
    change, key = TAMPERS[tamper]
    change(project)
    opened = watch_reads(project.parent / "outside")
    commands = COMMANDS[:2] if tamper in HEAVY else COMMANDS
    for command in commands:
        code, output, payload = _run(*_with_project(command, project))
        assert code == 2, (command, output)
        assert payload["exit_code"] == 2
        assert key in str(payload["error"]), (command, payload)
        assert str(payload["error"]).count("\n") == 0 and len(str(payload["error"])) < 400
        assert SENTINEL not in output
        assert opened == [], (command, opened)


def test_the_state_file_as_a_link_outside_is_refused(
    project: Path, watch_reads: Callable[[Path], list[str]]
) -> None:
    outside = project.parent / "outside" / STATE_FILE
    outside.write_text(_state(project).replace('runner = "celery"', f"# {SENTINEL}\nrunner = 1"))
    (project / STATE_FILE).unlink()
    (project / STATE_FILE).symlink_to(outside)
    opened = watch_reads(project.parent / "outside")
    for command in COMMANDS:
        code, output, payload = _run(*_with_project(command, project))
        assert code == 2 and "a link to a file outside the project" in str(payload["error"])
        assert SENTINEL not in output
    assert opened == []


def test_an_untampered_state_reads_back(scaffolded: Path) -> None:
    state = read_state(scaffolded)
    assert state["runner"] == "celery"
    assert isinstance(state["tasks"], dict) and set(state["tasks"]) == {"resize"}
    assert invoke("check", "-p", str(scaffolded))[0] == 0


def test_unknown_keys_of_a_later_version_are_kept_when_small(project: Path) -> None:
    _add_under(project, "[layout]", 'queue_prefix = "jobs"\n')
    assert read_state(project)["layout"]["queue_prefix"] == "jobs"  # type: ignore[index]
    _add_under(project, "[layout]", f'huge = "{"x" * 5000}"\n')
    with pytest.raises(Exception, match="layout.huge is 5,000 characters long"):
        read_state(project)


def test_a_state_larger_than_the_limit_is_refused_unparsed(project: Path) -> None:
    with (project / STATE_FILE).open("a") as handle:
        handle.write("# " + "x" * (17 * 1024 * 1024) + "\n")
    code, _, payload = _run("check", "-p", str(project))
    assert code == 2 and "is larger than 16 MB" in str(payload["error"])


# -- check on something that is not a bgtasks project


def test_check_on_a_folder_without_a_state_exits_2(tmp_path: Path) -> None:
    code, output = invoke("check", "-p", str(tmp_path))
    assert code == 2 and "no .bgtasks.toml" in output and "bgtasks init" in output


def test_check_on_a_file_or_a_missing_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    for target in (tmp_path / "notes.txt", tmp_path / "missing"):
        code, output = invoke("check", "-p", str(target))
        assert code == 2 and "is not a project folder" in output, output

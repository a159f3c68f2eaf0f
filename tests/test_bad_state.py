"""Broken files in the project (its compose file, Procfile, .bgtasks.toml, the journal)
and inputs the state cannot hold: exit 2, one message with a hint, nothing written;
never a traceback, a hang, or a half-written project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.cron_check import refuse_unkept_interval
from bgtasks_gen.errors import BadInput
from bgtasks_gen.journal import JOURNAL
from bgtasks_gen.runners import get_runner
from bgtasks_gen.state import MAX_ARGS, STATE_FILE
from tests.conftest import REPO, invoke, tree_hashes

DEEP = 100_000  # far past the parsers' recursion limit


def _refused(output: str, *needles: str) -> None:
    """One user-facing error: the message, a hint, and no traceback."""
    assert output.count("error:") == 1 and "hint:" in output, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


# -- the project's own compose file and Procfile


MALFORMED_COMPOSE = {
    "a bare scalar": ("just words\n", "the file is a text"),
    "services as a list": ("services:\n  - web\n  - redis\n", "`services` is a list"),
    "a service as a scalar": ("services:\n  web: nginx\n", "the service 'web' is a text"),
    "a syntax error": ("services:\n  web:\n    image: [a\n", "is not valid YAML"),
    "flow style": ("services: {web: {image: nginx}}\n", "cannot add its services"),
    "nested past the parser": ("services: " + "[" * 100_000 + "\n", "nests too deeply"),
}


@pytest.mark.parametrize("case", list(MALFORMED_COMPOSE))
def test_a_malformed_compose_file_is_refused_naming_it(example, case: str) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    text, problem = MALFORMED_COMPOSE[case]
    (project / "docker-compose.yml").write_text(text)
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 2, output
    _refused(output, "docker-compose.yml", problem)
    assert tree_hashes(project) == before


def test_a_non_utf8_procfile_is_refused(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    (project / "Procfile").write_bytes(b"web: \xff\xfe\n")
    before = tree_hashes(project)
    for extra in ([], ["--dry-run"]):
        code, output = invoke("init", str(project), "--runner", "celery", *extra)
        assert code == 2, output
        _refused(output, "Procfile is not UTF-8")
    assert tree_hashes(project) == before


# -- state file and journal nested past the parsers' limits


COMMANDS = (
    ("check",),
    ("list",),
    ("add-task", "ping"),
    ("init", "--runner", "celery"),
)


@pytest.fixture
def scaffolded(example) -> Path:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    return project


@pytest.mark.parametrize(
    "nesting", ["a = " + "[" * DEEP, "a = " + "{b = " * DEEP, "a = " + "[" * DEEP + "]" * DEEP]
)
def test_a_deeply_nested_state_file_exits_2_for_every_command(
    scaffolded: Path, nesting: str
) -> None:
    (scaffolded / STATE_FILE).write_text(nesting)
    before = tree_hashes(scaffolded)
    for command in COMMANDS:
        code, output = invoke(*command, "-p", str(scaffolded))
        assert code == 2, (command, output)
        _refused(output, STATE_FILE, "nest too deeply")
    assert tree_hashes(scaffolded) == before


def test_a_deeply_nested_journal_exits_2_for_every_command(scaffolded: Path) -> None:
    (scaffolded / JOURNAL).parent.mkdir(exist_ok=True)
    (scaffolded / JOURNAL).write_text("[" * DEEP)
    before = tree_hashes(scaffolded)
    for command in (*COMMANDS, ("init", "--runner", "celery", "--dry-run")):
        code, output = invoke(*command, "-p", str(scaffolded))
        assert code == 2, (command, output)
        _refused(output, "journal.json is not a journal bgtasks wrote")
    assert tree_hashes(scaffolded) == before


# -- a journal path that is not a regular file: never opened


def _bgtasks(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own: a command that blocks is killed, not waited on."""
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_journal_that_is_not_a_file_is_refused_without_opening_it(
    scaffolded: Path, kind: str
) -> None:
    journal = scaffolded / JOURNAL
    journal.parent.mkdir(exist_ok=True)
    if kind == "folder":
        journal.mkdir()
    else:
        os.mkfifo(journal)
    expected = "a folder" if kind == "folder" else "a named pipe (FIFO)"
    for command in (("list",), ("check",), ("add-task", "ping")):
        # a read of the FIFO would wait for a writer forever: the timeout turns it into
        # a failure instead of a hung test run
        result = _bgtasks(*command, "-p", str(scaffolded))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        _refused(output, f"journal.json is {expected}")
    assert journal.exists() and not (scaffolded / "app/tasks/ping.py").exists()


# -- a link out of the project is refused while planning


@pytest.mark.parametrize("mode", [["--dry-run"], ["--check"], []])
def test_env_example_linked_outside_is_refused_in_every_mode(
    example,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    mode: list[str],
) -> None:
    project: Path = example("layered")
    outside = tmp_path / "outside.env"
    outside.write_text("SECRET_FROM_OUTSIDE=1\n")
    (project / ".env.example").symlink_to(outside)
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery", *mode)
    assert code == 2, output
    _refused(output, ".env.example", "outside the project")
    assert "SECRET_FROM_OUTSIDE" not in output
    assert tree_hashes(project) == before
    assert outside.read_text() == "SECRET_FROM_OUTSIDE=1\n"


# -- add-task inputs the state file cannot hold


def test_more_args_than_the_state_holds_are_refused_before_writing(scaffolded: Path) -> None:
    args = [f"--arg=a{i}:int" for i in range(MAX_ARGS + 1)]
    before = tree_hashes(scaffolded)
    code, output = invoke("add-task", "wide", "-p", str(scaffolded), *args)
    assert code == 2, output
    _refused(output, f"at most {MAX_ARGS} arguments")
    assert tree_hashes(scaffolded) == before
    # the limit itself is accepted, and the state still reads afterwards
    code, output = invoke("add-task", "wide", "-p", str(scaffolded), *args[:MAX_ARGS])
    assert code == 0, output
    assert invoke("list", "-p", str(scaffolded))[0] == 0


@pytest.mark.parametrize(
    ("runner", "schedule_file", "schedule"),
    [
        ("celery", "app/tasks/celery_app.py", '"schedule": timedelta(seconds=7)'),
        ("taskiq", "app/tasks/taskiq_tasks.py", 'schedule=[{"interval": 7}]'),
    ],
)
def test_every_7_seconds_on_runners_that_take_any_interval(
    example,  # type: ignore[no-untyped-def]
    runner: str,
    schedule_file: str,
    schedule: str,
) -> None:
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", runner)[0] == 0
    code, output = invoke("add-task", "heartbeat", "--every", "7", "-p", str(project))
    assert code == 0, output
    assert schedule in (project / schedule_file).read_text()


def test_every_7_seconds_is_refused_on_arq_with_the_reason(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    assert invoke("init", str(project), "--runner", "arq")[0] == 0
    before = tree_hashes(project)
    code, output = invoke("add-task", "heartbeat", "--every", "7", "-p", str(project))
    assert code == 2, output
    _refused(output, "--every 7", "seconds that divide a minute")
    assert tree_hashes(project) == before
    code, output = invoke("add-task", "heartbeat", "--every", "15", "-p", str(project))
    assert code == 0, output


@pytest.mark.parametrize(
    ("seconds", "kept"),
    [(1, True), (15, True), (60, True), (120, True), (1800, True), (7200, True), (86400, True)]
    + [(7, False), (90, False), (5400, False), (172800, False)],
)
def test_the_interval_rule_is_the_runner_spec_s(seconds: int, kept: bool) -> None:
    assert get_runner("celery").every_clock_periods == ()
    assert get_runner("taskiq").every_clock_periods == ()
    refuse_unkept_interval("celery", seconds)
    refuse_unkept_interval("taskiq", seconds)
    if kept:
        refuse_unkept_interval("arq", seconds)
    else:
        with pytest.raises(BadInput, match=f"--every {seconds}: arq cannot"):
            refuse_unkept_interval("arq", seconds)


# -- module names Python would import as other names


FULLWIDTH_MAIN = "app.\uff4d\uff41\uff49\uff4e"  # `app.main` in fullwidth letters


@pytest.mark.parametrize(
    "option",
    [
        ["--app-module", FULLWIDTH_MAIN],
        ["--app-module", f"{FULLWIDTH_MAIN}:app"],
        ["--app-module", "app.main:\uff41pp"],
        ["--settings-module", "app.core.\uff43onfig"],
        ["--app-module", "app.caf\u00e9"],
    ],
)
def test_a_module_option_that_is_not_ascii_is_refused(example, option: list[str]) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery", *option)
    assert code == 2, output
    _refused(output, option[0], "is not an ASCII module path")
    assert tree_hashes(project) == before


def test_a_fullwidth_tasks_module_in_pyproject_is_refused(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + '\n[tool.bgtasks]\ntasks-module = "app.\uff4aobs"\n'
    )
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 2, output
    _refused(output, "[tool.bgtasks] tasks-module", "which Python reads as 'app.jobs'")
    assert tree_hashes(project) == before


def test_a_fullwidth_module_in_the_state_is_refused_by_check(scaffolded: Path) -> None:
    state = scaffolded / STATE_FILE
    text = state.read_text()
    assert 'tasks_module = "app.tasks"' in text
    state.write_text(text.replace('tasks_module = "app.tasks"', 'tasks_module = "app.\uff54asks"'))
    code, output = invoke("check", "-p", str(scaffolded))
    assert code == 2, output
    _refused(output, "layout.tasks_module", "not an ASCII module path")

"""`bgtasks dev` restarts the processes that import the task code when it changes: the
watcher (one report per burst of writes), the supervisor's restart (only those
processes, and broken code does not take the stack down), and what add-task says."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bgtasks_gen.addtask import restart_hint
from bgtasks_gen.dev_watch import ChangeWatcher, python_files
from bgtasks_gen.devstack import ProcessSpec, StackPlan, _Stack
from bgtasks_gen.runners import get_runner, runner_names
from tests.conftest import invoke, write_tree


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def touch(path: Path, text: str) -> None:
    """Write `text` with an mtime one second later than the file had: a change even on
    a file system whose clock ticks coarsely."""
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def polls(watcher: ChangeWatcher, clock: FakeClock, seconds: float) -> list[list[Path]]:
    """Each non-empty report of a poll every second for `seconds`."""
    reports = []
    for _ in range(int(seconds)):
        clock.now += 1.0
        report = watcher.poll()
        if report:
            reports.append(report)
    return reports


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path,
        {
            "app/tasks/__init__.py": "",
            "app/tasks/tasks.py": "def send() -> None: ...\n",
            "app/tasks/notes.txt": "not code\n",
        },
    )


def test_a_burst_of_writes_is_reported_once_when_it_is_over(tasks: Path) -> None:
    clock = FakeClock()
    watcher = ChangeWatcher([tasks / "app/tasks"], clock=clock)
    assert polls(watcher, clock, 5) == [], "nothing changed: nothing reported"

    # add-task: the tasks file, a new module, over two polls
    touch(tasks / "app/tasks/tasks.py", "def send() -> None: ...\ndef resize() -> None: ...\n")
    clock.now += 1.0
    assert watcher.poll() == [], "still being written: not yet"
    touch(tasks / "app/tasks/resize.py", "X = 1\n")
    clock.now += 1.0
    assert watcher.poll() == [], "still being written: not yet"
    reports = polls(watcher, clock, 5)
    assert reports == [[tasks / "app/tasks/resize.py", tasks / "app/tasks/tasks.py"]]

    # a removed module is a change; a file that is not Python is not
    (tasks / "app/tasks/resize.py").unlink()
    touch(tasks / "app/tasks/notes.txt", "still not code\n")
    assert polls(watcher, clock, 5) == [[tasks / "app/tasks/resize.py"]]
    touch(tasks / "app/tasks/notes.txt", "again\n")
    assert polls(watcher, clock, 5) == []


def test_polls_come_no_faster_than_the_interval(tasks: Path) -> None:
    clock = FakeClock()
    watcher = ChangeWatcher([tasks / "app/tasks"], interval=1.0, quiet=0.5, clock=clock)
    touch(tasks / "app/tasks/tasks.py", "changed = True\n")
    clock.now += 0.5
    assert watcher.poll() == [] and not watcher.changed, "too early: the tree was not read"
    clock.now += 0.6
    assert watcher.poll() == [] and watcher.changed, "read: the change is pending"
    clock.now += 1.0
    assert watcher.poll() == [tasks / "app/tasks/tasks.py"]


def test_a_folder_that_is_a_module_file_and_pycache_are_handled(tmp_path: Path) -> None:
    write_tree(tmp_path, {"jobs.py": "", "pkg/__pycache__/x.cpython-311.pyc": "", "pkg/a.py": ""})
    found = python_files([tmp_path / "jobs.py", tmp_path / "pkg", tmp_path / "gone"])
    assert sorted(found) == [tmp_path / "jobs.py", tmp_path / "pkg/a.py"]


# -- the supervisor ----------------------------------------------------------------------

# prints its start, then a line per second; exits 3 at once when the flag file says so
CHILD = (
    "import pathlib, sys, time\n"
    "flag = pathlib.Path(sys.argv[1])\n"
    "if flag.exists() and flag.read_text() == 'broken':\n"
    "    print('broken code', flush=True); sys.exit(3)\n"
    "print(sys.argv[2], 'up', flush=True)\n"
    "while True: time.sleep(0.2)\n"
)


class RunningStack:
    def __init__(self, stack: _Stack, output: io.StringIO) -> None:
        self.stack = stack
        self.output = output
        self.code: int | None = None

    def text(self) -> str:
        return self.output.getvalue()

    def wait_for(self, predicate: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.text()}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    """A supervisor over three small processes: `worker` and `beat` import the task
    code (they are restarted), `web` reloads itself (it is not)."""
    write_tree(tmp_path, {"app/tasks/tasks.py": "", "flag": ""})
    flag = str(tmp_path / "flag")
    python = [sys.executable, "-c", CHILD, flag]
    env = dict(os.environ)
    project = cast(Any, SimpleNamespace(root=tmp_path))
    plan = StackPlan(
        project,
        cast(Any, None),
        "http://127.0.0.1:1",
        processes=[
            ProcessSpec("web", [*python, "web"], env),
            ProcessSpec("worker", [*python, "worker"], env, reloads=True),
            ProcessSpec("beat", [*python, "beat"], env, reloads=True),
        ],
        watched=[tmp_path / "app/tasks"],
    )
    output = io.StringIO()
    running = RunningStack(_Stack(plan, output), output)
    running.stack.watcher = ChangeWatcher(plan.watched, interval=0.2, quiet=0.3)

    def run() -> None:
        running.code = running.stack.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stack.signals.append("SIGTERM")
        thread.join(timeout=30)
        assert not thread.is_alive(), running.text()


def started(text: str, name: str) -> int:
    return text.count(f"{name} started (pid ")


def test_changed_task_code_restarts_the_worker_and_beat_only(
    stack: RunningStack, tmp_path: Path
) -> None:
    stack.wait_for(lambda: stack.text().count(" up") == 3, "three processes up")
    touch(tmp_path / "app/tasks/tasks.py", "def resize() -> None: ...\n")
    touch(tmp_path / "app/tasks/resize.py", "")
    stack.wait_for(lambda: stack.text().count("worker up") == 2, "the worker restarted")
    stack.wait_for(lambda: stack.text().count("beat up") == 2, "beat restarted")
    text = stack.text()
    (line,) = [line for line in text.splitlines() if "tasks changed" in line]
    assert line.endswith(
        "tasks changed: restarting worker, beat (app/tasks/resize.py, app/tasks/tasks.py)"
    ), line
    assert started(text, "web") == 1, "the web app reloads itself: left running"
    assert "exited with code" not in text and not stack.stack.failure, text

    # code that breaks the worker: it exits, the stack stays up, the next save heals it
    (tmp_path / "flag").write_text("broken")
    touch(tmp_path / "app/tasks/tasks.py", "broken(\n")
    stack.wait_for(
        lambda: "worker exited with code 3 after the change" in stack.text(), "the broken worker"
    )
    assert not stack.stack.stopping, stack.text()
    (tmp_path / "flag").write_text("")
    touch(tmp_path / "app/tasks/tasks.py", "def resize() -> None: ...\n")
    stack.wait_for(lambda: stack.text().count("worker up") == 3, "the worker running again")

    stack.stack.signals.append("SIGINT")
    stack.wait_for(lambda: stack.code is not None, "the stack to stop")
    assert stack.code == 0, stack.text()
    assert "every process stopped" in stack.text()


def test_without_watched_folders_nothing_is_restarted(tmp_path: Path) -> None:
    plan = StackPlan(cast(Any, SimpleNamespace(root=tmp_path)), cast(Any, None), "http://x")
    assert _Stack(plan, io.StringIO()).watcher is None


# -- what add-task and the CLI say ---------------------------------------------------------


@pytest.mark.parametrize("name", runner_names())
def test_add_task_says_dev_restarts_the_worker_and_what_to_restart_otherwise(name: str) -> None:
    spec = get_runner(name)
    for scheduled in (False, True):
        hint = restart_hint(spec, scheduled=scheduled)
        if spec.restart is None:
            assert hint.startswith("restart: nothing to restart"), hint
            continue
        processes = spec.restart[1] if scheduled else spec.restart[0]
        assert hint.startswith(f"restart {processes} (under `bgtasks dev` that happens by"), hint
        assert "stop it and start it again" not in hint
        assert "--no-reload" in hint


def test_dev_help_names_the_reload_switch() -> None:
    code, output = invoke("dev", "--help")
    assert code == 0
    assert "--no-reload" in output

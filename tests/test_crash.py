"""SIGKILL at every rename of the write phase: the next command ends in exactly the tree an
uninterrupted run leaves.

A real `bgtasks` process runs under strace, which kills it on entry to its Nth rename(2)
(`-e inject=...:signal=SIGKILL:when=N`; os.replace is rename(2) here), for every N an
uninterrupted run has. SIGKILL cannot be caught, so this is what a power cut or the OOM
killer does to the process. Only the main process is traced: copier's git children rename
their own lock files and are no part of the write.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from bgtasks_gen.journal import JOURNAL, TEMP_PREFIX
from tests.conftest import EXAMPLES, REPO, invoke, tree_hashes

RENAMES = "rename,renameat,renameat2"
RENAME_CALL = re.compile(r'^rename(?:at2?)?\((?:(?:AT_FDCWD|\d+), )?"(?P<source>[^"]+)"')
PARALLEL = 2  # killed runs at once: the machine has two cores


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(
        ["strace", "-qq", "-e", "trace=none", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.fixture(scope="module", autouse=True)
def _need_strace() -> None:
    if _strace_works():
        return
    reason = "strace is missing or cannot trace here (ptrace not permitted)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Command:
    args: Callable[[Path], list[str]]
    initialised_with: str | None = None  # a runner to `init` the copy with first


COMMANDS = {
    "init celery": Command(lambda p: ["init", str(p), "--runner", "celery"]),
    "init arq": Command(lambda p: ["init", str(p), "--runner", "arq"]),
    "init builtin": Command(lambda p: ["init", str(p), "--runner", "builtin"]),
    "add-task": Command(
        lambda p: ["add-task", "nightly_report", "--cron", "0 6 * * 1-5", "-p", str(p)],
        initialised_with="celery",
    ),
    # deletes arq's files between the renames: undo puts them back, finishing removes them
    "migrate": Command(lambda p: ["migrate", str(p), "--to", "taskiq"], initialised_with="arq"),
}


def _bgtasks(
    args: list[str], *, kill_at: int | None = None, trace: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["strace", "-qq", "-e", f"trace={RENAMES}", "-o", str(trace or os.devnull)]
    if kill_at is not None:
        command += ["-e", f"inject={RENAMES}:signal=SIGKILL:when={kill_at}"]
    # no .pyc writes: they are renames too, and would shift the positions
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command += [sys.executable, "-m", "bgtasks_gen", *args]
    # an explicit cwd: copier, run in process by the main thread, changes the current
    # folder for a moment, and a process started meanwhile would inherit it
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _renames(trace: Path) -> list[str]:
    """The source of every rename a traced run made, in order."""
    return [m["source"] for m in map(RENAME_CALL.match, trace.read_text().splitlines()) if m]


def _leftovers(root: Path) -> list[str]:
    return [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.name.startswith(TEMP_PREFIX) or p == root / JOURNAL
    ]


@dataclass(frozen=True)
class Reference:
    before: Path  # the project as the command finds it
    hashes_before: dict[str, str]
    hashes_after: dict[str, str]  # what an uninterrupted run leaves
    renames: int


def _reference(command: Command, tmp_path: Path) -> Reference:
    before = tmp_path / "before"
    shutil.copytree(EXAMPLES / "layered", before)
    if command.initialised_with:
        assert invoke("init", str(before), "--runner", command.initialised_with)[0] == 0
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(before, uninterrupted)
    trace = tmp_path / "trace"
    result = _bgtasks(command.args(uninterrupted), trace=trace)
    assert result.returncode == 0, result.stdout + result.stderr
    sources = _renames(trace)
    # every rename is the write's own: a temporary file (or the journal's) moved into place
    assert sources and all(Path(s).name.startswith(TEMP_PREFIX) for s in sources), sources
    assert _leftovers(uninterrupted) == []
    return Reference(before, tree_hashes(before), tree_hashes(uninterrupted), len(sources))


def _killed_copies(
    source: Path, args: Callable[[Path], list[str]], positions: range, folder: Path
) -> Iterator[tuple[int, Path]]:
    """A copy of `source` per position, each with `args` run on it and killed at that
    rename; yielded in order while the next ones run."""

    def run(position: int) -> tuple[int, Path]:
        copy = folder / f"killed-at-{position}"
        shutil.copytree(source, copy)
        result = _bgtasks(args(copy), kill_at=position)
        assert result.returncode == -signal.SIGKILL, (position, result.stdout, result.stderr)
        return position, copy

    folder.mkdir()
    with ThreadPoolExecutor(PARALLEL) as pool:
        yield from pool.map(run, positions)


def _assert_recovers(command: Command, project: Path, reference: Reference, where: str) -> None:
    """Killed at `where`: half done, never reported current, and the next run of the same
    command ends in exactly the uninterrupted tree."""
    # the journal is written before the first rename and removed after the last one, so
    # a kill at any rename leaves one; that is neither "before" nor "after"
    assert (project / JOURNAL).is_file(), where
    code, output = invoke("check", "-p", str(project))
    assert code == 1 and "interrupted bgtasks run" in output, (where, output)
    crashed = tree_hashes(project)
    code, output = invoke(*command.args(project), "--dry-run")  # promises to write nothing
    assert code == 1 and "interrupted bgtasks run" in output, (where, output)
    assert tree_hashes(project) == crashed, where
    code, output = invoke(*command.args(project))
    assert code == 0, (where, output)
    assert "recovered an interrupted bgtasks run" in output, (where, output)
    assert tree_hashes(project) == reference.hashes_after, where
    assert _leftovers(project) == [], where


@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_at_every_rename_then_the_same_command_converges(name: str, tmp_path: Path) -> None:
    command = COMMANDS[name]
    reference = _reference(command, tmp_path)
    positions = range(1, reference.renames + 1)
    for position, project in _killed_copies(
        reference.before, command.args, positions, tmp_path / "killed"
    ):
        _assert_recovers(command, project, reference, f"{name}, killed at rename {position}")
    print(f"{name}: killed at each of {reference.renames} renames")


def _staged_not_yet_moved(project: Path) -> Path:
    staged = list(project.rglob(f"{TEMP_PREFIX}*.new"))
    assert len(staged) == 1, staged  # killed at the last rename: one file still to move
    return staged[0]


@pytest.mark.parametrize("direction", ["forward", "back"])
def test_sigkill_during_recovery_then_the_next_run_converges(
    direction: str, tmp_path: Path
) -> None:
    """`init --runner celery` killed near its end; then the recovery itself is killed at
    each of its renames, and the run after that still converges. "back": the last staged
    file is damaged (as a torn write would leave it), so recovery must undo the write,
    putting back the user's settings, app and pyproject it had already replaced."""
    command = COMMANDS["init celery"]
    reference = _reference(command, tmp_path)
    crashed = tmp_path / "crashed"
    shutil.copytree(reference.before, crashed)
    kill_at = reference.renames - 2 if direction == "forward" else reference.renames
    result = _bgtasks(command.args(crashed), kill_at=kill_at)
    assert result.returncode == -signal.SIGKILL, result.stderr
    if direction == "back":
        _staged_not_yet_moved(crashed).write_text("# torn\n")

    def recovering(project: Path) -> list[str]:
        return ["list", "-p", str(project)]  # reads the project, so it recovers first

    probe = tmp_path / "probe"
    shutil.copytree(crashed, probe)
    trace = tmp_path / "recovery-trace"
    result = _bgtasks(recovering(probe), trace=trace)
    # undone, the first init had not written .bgtasks.toml yet: list finds no project
    assert result.returncode == (0 if direction == "forward" else 2), result.stderr
    expected = "finished writing" if direction == "forward" else "undid it"
    assert expected in result.stderr, result.stderr
    recovered = reference.hashes_after if direction == "forward" else reference.hashes_before
    assert tree_hashes(probe) == recovered and _leftovers(probe) == []
    renames = len(_renames(trace))
    assert renames > 0
    for position, project in _killed_copies(
        crashed, recovering, range(1, renames + 1), tmp_path / "killed"
    ):
        _assert_recovers(command, project, reference, f"recovery killed at rename {position}")
    print(f"recovery ({direction}): killed at each of {renames} renames")

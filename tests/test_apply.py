"""Writing is all or nothing: faults, interruption, files edited behind bgtasks' back and
concurrent runs never leave a project half-changed. (SIGKILL: tests/test_crash.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgtasks_gen import journal, scaffold
from bgtasks_gen.apply import TEMP_PREFIX, apply, project_lock
from bgtasks_gen.errors import ApplyError, BadInput, ConflictError, ExitCode
from bgtasks_gen.journal import JOURNAL
from bgtasks_gen.plan import Action, FileChange, Plan
from bgtasks_gen.scaffold import plan_init
from tests.conftest import REPO, invoke, tree_hashes

WRAPPER = REPO / "tests" / "crash_wrapper.py"
CONFIG = "app/core/config.py"


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def _clean(root: Path) -> bool:
    """No temporary file and no journal left behind."""
    return _no_temp_files(root) and not (root / JOURNAL).exists()


def _edit(path: Path) -> None:
    """What an editor or a formatter saving the file would do."""
    path.write_text(path.read_text() + "# saved by an editor\n")


# -- failures while writing


@pytest.mark.parametrize("fail_at", [1, 2, 4, 9])
def test_failure_on_the_nth_replace_restores_everything(
    example,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,  # type: ignore[no-untyped-def]
) -> None:
    # the 1st replace moves the journal to its "replacing" phase, the next ones the files
    project = example("layered")
    before = tree_hashes(project)
    plan = plan_init(project, "builtin")
    assert len(plan.writes) > fail_at
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(ApplyError, match="No space left on device") as caught:
        apply(plan)
    assert "restored" in caught.value.hint
    assert caught.value.exit_code == ExitCode.WRITE_FAILED == 3
    monkeypatch.setattr(os, "replace", real_replace)
    assert tree_hashes(project) == before
    assert _clean(project)
    assert not (project / "app/tasks").exists()  # folders it created are gone too
    assert not (project / ".bgtasks").exists()


def test_permission_denied_while_staging_names_the_file(
    example,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    # tests run as root in CI, where chmod cannot make a folder read-only: the OS error a
    # read-only folder gives is raised at the same place instead
    project = example("layered")
    before = tree_hashes(project)
    plan = plan_init(project, "builtin")
    real_write = journal.write_durably

    def refuse_core(path: Path, data: bytes, mode: int) -> None:
        if path.parent == project / "app/core":
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, data, mode)

    monkeypatch.setattr(journal, "write_durably", refuse_core)
    with pytest.raises(ApplyError, match=r"config\.py failed: Permission denied"):
        apply(plan)
    assert tree_hashes(project) == before
    assert _clean(project)


def test_symlink_leaving_the_project_is_never_written_through(
    example,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / "tests").symlink_to(outside, target_is_directory=True)
    before = tree_hashes(project)
    with pytest.raises(BadInput, match="outside the project"):  # planning refuses it
        plan_init(project, "builtin")
    # and a write refuses it too, for a link made after planning
    created = FileChange("tests/test_x.py", Action.CREATE, None, "x = 1\n")
    with pytest.raises(ApplyError, match="outside the project"):
        apply(Plan(project, [created]))
    assert tree_hashes(project) == before
    assert list(outside.iterdir()) == []


def test_a_write_failure_exits_3_and_says_nothing_changed(
    example,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    before = tree_hashes(project)
    real_replace = os.replace

    def full_disk(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "main.py":
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 3, output
    assert "No space left on device" in output and "nothing changed" in output
    assert tree_hashes(project) == before


def test_help_lists_every_exit_code() -> None:
    code, output = invoke("init", "--help")
    assert code == 0
    text = " ".join(output.split())
    for number, meaning in (
        (0, "done"),
        (1, "a conflict"),
        (2, "bad input"),
        (3, "writing failed"),
    ):
        assert f"{number} {meaning}" in text, text
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3]
    table = (REPO / "README.md").read_text().split("### Exit codes", 1)[1]
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:8]] == [
        "0",
        "1",
        "2",
        "3",
    ]


# -- files changed between plan and write


def test_a_file_edited_after_planning_is_not_overwritten(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    plan = plan_init(project, "builtin")
    _edit(project / CONFIG)
    as_left = tree_hashes(project)
    with pytest.raises(ConflictError, match=r"app/core/config\.py changed since bgtasks read it"):
        apply(plan)
    assert tree_hashes(project) == as_left
    assert not (project / "app/tasks").exists()  # nothing at all was written
    assert _clean(project)


def test_a_file_created_after_planning_is_not_overwritten(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    plan = plan_init(project, "builtin")
    assert "app/tasks/email.py" in [c.path for c in plan.writes]
    (project / "app/tasks").mkdir()
    (project / "app/tasks/email.py").write_text("# my own mailer\n")
    as_left = tree_hashes(project)
    with pytest.raises(ConflictError, match=r"app/tasks/email\.py changed since bgtasks read it"):
        apply(plan)
    assert tree_hashes(project) == as_left
    assert _clean(project)


def test_a_file_edited_during_the_write_stops_it_and_the_rest_is_undone(
    example,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    plan = plan_init(project, "builtin")
    paths = [c.path for c in plan.writes]
    assert paths.index(CONFIG) > 3
    real_replace = os.replace
    calls = {"n": 0}
    as_left: dict[str, str] = {}

    def editor_saves_meanwhile(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the journal and one file are replaced: half way
            _edit(project / CONFIG)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", editor_saves_meanwhile)
    before_edit = tree_hashes(project)
    with pytest.raises(ConflictError, match=r"config\.py changed since bgtasks read it") as caught:
        apply(plan)
    assert "restored" in caught.value.hint
    as_left = {**before_edit, CONFIG: tree_hashes(project)[CONFIG]}
    assert as_left[CONFIG] != before_edit[CONFIG]
    assert tree_hashes(project) == as_left
    assert (project / CONFIG).read_text().endswith("# saved by an editor\n")
    assert _clean(project)


def test_the_cli_exits_1_when_a_file_changes_between_plan_and_write(
    example,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    real_plan = scaffold.plan_init

    def plan_then_editor_saves(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        plan = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        _edit(project / CONFIG)
        return plan

    monkeypatch.setattr(scaffold, "plan_init", plan_then_editor_saves)
    code, output = invoke("init", str(project), "--runner", "builtin")
    as_left = tree_hashes(project)
    assert code == ExitCode.CHANGES == 1, output
    assert "changed since bgtasks read it" in output
    assert not (project / "app/tasks").exists()
    assert tree_hashes(project) == as_left and _clean(project)


# -- signals, through a real process


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_between_two_writes_leaves_the_project_as_before(
    example,
    tmp_path: Path,
    signum: int,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    before = tree_hashes(project)
    marker = tmp_path / "paused"
    process = subprocess.Popen(
        # pause after the journal's rename and two files
        [sys.executable, str(WRAPPER), "3", str(marker)]
        + ["init", str(project), "--runner", "builtin"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a test run started in the background of a
        # non-interactive shell passes SIGINT on ignored, and Python then never raises
        # KeyboardInterrupt
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "bgtasks never reached the pause point"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        halfway = tree_hashes(project)
        assert halfway != before and (project / JOURNAL).is_file()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == ExitCode.WRITE_FAILED, stdout + stderr
    assert "interrupted while writing" in stdout + stderr
    assert "Traceback" not in stderr
    assert tree_hashes(project) == before, stderr
    assert _clean(project)


# -- the project lock


def test_a_second_run_on_the_same_project_is_refused(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    with project_lock(project):
        result = subprocess.run(
            [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "builtin"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "another bgtasks command is running" in result.stderr
        with pytest.raises(BadInput):
            with project_lock(project):
                pass
    assert not (project / "app/tasks").exists()


def test_the_lock_of_a_killed_process_is_released(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from bgtasks_gen.apply import project_lock\n"
            "with project_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
            str(project),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(BadInput, match="another bgtasks command"):
            with project_lock(project):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with project_lock(project):  # the kernel dropped the dead owner's flock
        pass


# -- journals that are not what bgtasks writes


def test_a_torn_journal_is_removed_in_one_line(example) -> None:  # type: ignore[no-untyped-def]
    # only the first write of a journal can be torn, and nothing is staged before it ends
    project = example("layered")
    before = tree_hashes(project)
    (project / ".bgtasks").mkdir()
    (project / JOURNAL).write_bytes(b'{"format": 1, "id": "0a1b2c3d", "pha')
    code, output = invoke("list", "-p", str(project))
    assert "recovered an interrupted bgtasks run: it had not written any file yet" in output
    assert code == 2 and "no .bgtasks.toml" in output  # then list goes on, on a fresh project
    assert tree_hashes(project) == before


def test_a_tampered_journal_is_refused_and_nothing_is_touched(example, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    entry = {
        "path": str(victim),
        "existed": True,
        "mode": 0o644,
        "old": "sha256:" + "0" * 64,
        "new": "sha256:" + "1" * 64,
        "staged": journal.temp_name(str(victim), "0a1b2c3d", 0, "new"),
        "backup": journal.temp_name(str(victim), "0a1b2c3d", 0, "old"),
    }
    record = {"format": 1, "id": "0a1b2c3d", "phase": "undoing", "entries": [entry]}
    record |= {"created_dirs": [], "created_journal_dir": False}
    (project / JOURNAL).write_text(json.dumps(record))
    before = tree_hashes(project)
    code, output = invoke("add-task", "resize", "-p", str(project))
    assert code == 2 and "is not a journal bgtasks wrote" in output, output
    assert victim.read_text() == "keep me\n"
    assert tree_hashes(project) == before

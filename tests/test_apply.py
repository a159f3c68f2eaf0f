"""Writing is all or nothing: faults, interruption and concurrent runs never leave a
project half-changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgtasks_gen import apply as apply_module
from bgtasks_gen.apply import TEMP_PREFIX, apply, project_lock
from bgtasks_gen.errors import ApplyError, BadInput
from bgtasks_gen.scaffold import plan_init
from tests.conftest import tree_hashes


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_failure_on_the_nth_replace_restores_everything(
    example,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,  # type: ignore[no-untyped-def]
) -> None:
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

    monkeypatch.setattr(apply_module.os, "replace", flaky)
    with pytest.raises(ApplyError, match="No space left on device") as caught:
        apply(plan)
    assert "restored" in caught.value.hint
    monkeypatch.setattr(apply_module.os, "replace", real_replace)
    assert tree_hashes(project) == before
    assert _no_temp_files(project)
    assert not (project / "app/tasks").exists()  # folders it created are gone too


def test_permission_denied_while_staging_names_the_file(
    example,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    # tests run as root in CI, where chmod cannot make a folder read-only: the OS error a
    # read-only folder gives is raised at the same place instead
    project = example("layered")
    before = tree_hashes(project)
    plan = plan_init(project, "builtin")
    real_write = apply_module._write_temp

    def refuse_config(target: Path, text: str) -> Path:
        if target.name == "config.py":
            raise PermissionError(13, "Permission denied", str(target))
        return real_write(target, text)

    monkeypatch.setattr(apply_module, "_write_temp", refuse_config)
    with pytest.raises(ApplyError, match=r"config\.py failed: Permission denied"):
        apply(plan)
    assert tree_hashes(project) == before
    assert _no_temp_files(project)


def test_symlink_leaving_the_project_is_never_written_through(
    example,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / "tests").symlink_to(outside, target_is_directory=True)
    before = tree_hashes(project)
    plan = plan_init(project, "builtin")
    with pytest.raises(ApplyError, match="outside the project"):
        apply(plan)
    assert tree_hashes(project) == before
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_between_two_writes_leaves_the_project_as_before(
    example,
    signum: int,  # type: ignore[no-untyped-def]
) -> None:
    project = example("layered")
    before = tree_hashes(project)
    process = subprocess.Popen(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "builtin"],
        env={**os.environ, apply_module.PAUSE_ENV: "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not list(project.rglob("*.paused")):
            assert time.monotonic() < deadline, "bgtasks never reached the pause point"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        # two files are already replaced at this point: the run is half way
        assert tree_hashes(project) != before
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode != 0
    after = {k: v for k, v in tree_hashes(project).items() if not k.endswith(".paused")}
    assert after == before, stderr
    assert _no_temp_files(project)


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

"""What the command line says and how it exits match what happened: a dry-run patch that
`git apply` takes with its deletions, a reader that stops early, `init` again after
add-task, and the --check summary beside its verdict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.addtask import load_project
from bgtasks_gen.plan import Action, FileChange
from bgtasks_gen.report import patch_text
from tests.conftest import EXAMPLES, invoke, tree_hashes

BGTASKS = Path(sys.executable).parent / "bgtasks"
GIT = ("git", "-c", "user.name=bgtasks", "-c", "user.email=bgtasks@example.com")
TIMEOUT = 300


def _git(folder: Path, *args: str, stdin: bytes | None = None) -> None:
    done = subprocess.run(
        [*GIT, *args], cwd=folder, input=stdin, capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr.decode()


def _project_files(root: Path) -> dict[str, str]:
    # the pristine copies under .bgtasks/ are bookkeeping, never part of the shown diff
    return {
        rel: digest
        for rel, digest in tree_hashes(root).items()
        if not rel.startswith((".git/", ".bgtasks/"))
    }


# 1. a dry run's patch deletes what the run deletes


def test_patch_of_a_deleted_file_names_dev_null_and_its_mode() -> None:
    text = patch_text(FileChange("app/tasks/pool.py", Action.DELETE, "a = 1\nb = 2\n", ""))
    lines = text.splitlines()
    assert lines[:4] == [
        "diff --git a/app/tasks/pool.py b/app/tasks/pool.py",
        "deleted file mode 100644",
        "--- a/app/tasks/pool.py",
        "+++ /dev/null",
    ]
    assert lines[4:] == ["@@ -1,2 +0,0 @@", "-a = 1", "-b = 2"]


def test_patch_of_created_and_deleted_empty_files_keeps_the_header() -> None:
    created = patch_text(FileChange("app/__init__.py", Action.CREATE, None, ""))
    assert created == "diff --git a/app/__init__.py b/app/__init__.py\nnew file mode 100644\n"
    removed = patch_text(FileChange("app/__init__.py", Action.DELETE, "", ""))
    assert removed == ("diff --git a/app/__init__.py b/app/__init__.py\ndeleted file mode 100644\n")


def test_piped_migrate_dry_run_applied_with_git_equals_the_real_migrate(
    tmp_path: Path,
) -> None:
    applied = tmp_path / "applied"
    shutil.copytree(EXAMPLES / "layered", applied)
    assert invoke("init", str(applied), "--runner", "arq")[0] == 0
    real = tmp_path / "real"
    shutil.copytree(applied, real)
    _git(applied, "init", "-q")
    _git(applied, "add", "-A")
    _git(applied, "commit", "-q", "-m", "arq")

    dry = subprocess.run(
        [str(BGTASKS), "migrate", str(applied), "--to", "taskiq", "--dry-run"],
        capture_output=True,  # stdout a pipe, as in `... --dry-run | git apply`
        timeout=TIMEOUT,
    )
    assert dry.returncode == 0, dry.stderr.decode()
    assert b"+++ /dev/null" in dry.stdout
    _git(applied, "apply", stdin=dry.stdout)
    code, output = invoke("migrate", str(real), "--to", "taskiq")
    assert code == 0, output

    assert not (real / "app/tasks/arq_worker.py").exists()
    assert not (applied / "app/tasks/arq_worker.py").exists()
    assert _project_files(applied) == _project_files(real)


# 2. a reader that stops early does not turn a finished command into a failure


def _run_for_a_reader_that_leaves(
    args: list[str], *, read: int, both_streams: bool = False
) -> tuple[int, bytes]:
    """Run bgtasks with its stdout (and stderr, with both_streams) on a pipe whose reader
    reads `read` bytes and then closes it; (exit code, stderr)."""
    reader, writer = os.pipe()
    with subprocess.Popen(
        [str(BGTASKS), *args],
        stdout=writer,
        stderr=writer if both_streams else subprocess.PIPE,
    ) as process:
        os.close(writer)
        with os.fdopen(reader, "rb") as stream:
            if read:
                assert stream.read(read)
        _, errors = process.communicate(timeout=TIMEOUT)
    return process.returncode, errors or b""


@pytest.fixture
def arq_project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", root)
    assert invoke("init", str(root), "--runner", "arq")[0] == 0
    return root


def test_add_task_with_the_reader_gone_writes_everything_and_exits_0(
    arq_project: Path,
) -> None:
    code, errors = _run_for_a_reader_that_leaves(
        ["add-task", "resize", "-p", str(arq_project), "--arg", "foo:int"], read=0
    )
    assert (code, errors) == (0, b"")
    assert "async def resize(" in (arq_project / "app/tasks/arq_tasks.py").read_text()
    assert "[tasks.resize]" in (arq_project / ".bgtasks.toml").read_text()
    # the next run finds it all there
    code, output = invoke("add-task", "resize", "-p", str(arq_project), "--arg", "foo:int")
    assert code == 0 and "nothing to do" in output, output


def test_init_with_the_reader_gone_after_a_few_bytes_exits_0(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", root)
    code, errors = _run_for_a_reader_that_leaves(["init", str(root), "--runner", "builtin"], read=0)
    assert (code, errors) == (0, b"")
    assert invoke("init", str(root), "--runner", "builtin", "--check")[0] == 0
    # a long diff: the reader leaves while bgtasks is still writing it
    code, errors = _run_for_a_reader_that_leaves(
        ["init", str(root), "--runner", "celery", "--dry-run"], read=16
    )
    assert (code, errors) == (0, b"")


def test_list_and_check_keep_their_own_exit_codes(arq_project: Path) -> None:
    assert _run_for_a_reader_that_leaves(["list", str(arq_project)], read=4) == (0, b"")
    assert _run_for_a_reader_that_leaves(["check", str(arq_project)], read=0) == (0, b"")
    (arq_project / "app/tasks/arq_worker.py").unlink()
    assert _run_for_a_reader_that_leaves(["check", str(arq_project)], read=0) == (1, b"")
    # bad input says so on stderr: exit 2 even when that reader is gone too
    missing = str(arq_project / "missing")
    assert _run_for_a_reader_that_leaves(["list", missing], read=0, both_streams=True)[0] == 2


# 3. `init` again after add-task: the added task, edited or not, is the user's


def _fill_in_body(source: str, name: str) -> str:
    """The task's body as a user would start filling it in: a line of their own."""
    start = source.index(f"def {name}(")
    signature_end = source.index(":\n", source.index(")", start)) + 2
    return source[:signature_end] + "    # the real work goes here\n" + source[signature_end:]


@pytest.mark.parametrize("runner", ["celery", "arq", "taskiq", "builtin"])
def test_init_again_after_add_task_is_nothing_to_do(runner: str, tmp_path: Path) -> None:
    root = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", root)
    assert invoke("init", str(root), "--runner", runner)[0] == 0
    code, output = invoke("add-task", "resize", "-p", str(root), "--arg", "foo:int")
    assert code == 0, output
    tasks = root / load_project(root).tasks_file
    tasks.write_text(_fill_in_body(tasks.read_text(), "resize"))
    assert "# the real work goes here" in tasks.read_text()
    before = tree_hashes(root)

    code, output = invoke("init", str(root), "--runner", runner)
    assert code == 0 and "nothing to do" in output, output
    assert "conflict" not in output
    assert tree_hashes(root) == before
    code, output = invoke("init", str(root), "--runner", runner, "--check")
    assert code == 0 and "check failed" not in output, output


# 4. --check: the summary line and the verdict tell one story


def test_check_summary_agrees_with_its_verdict(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", root)
    code, output = invoke("init", str(root), "--runner", "builtin", "--check")
    assert code == 1
    assert "file(s) would change; nothing written" in output
    assert "0 file(s) would change" not in output
    assert "check failed: the project is not scaffolded yet" in output

    assert invoke("init", str(root), "--runner", "builtin")[0] == 0
    code, output = invoke("init", str(root), "--runner", "builtin", "--check")
    assert code == 0
    assert "nothing to do: the project is already up to date" in output
    assert "would change" not in output and "check failed" not in output

    # a generated file edited by hand: nothing would be written, and the run would stop
    (root / "app/tasks/auth.py").write_text("# mine\n")
    code, output = invoke("init", str(root), "--runner", "builtin", "--check")
    assert code == 1
    assert (
        "0 file(s) would change and 1 conflict(s) would stop the run (app/tasks/auth.py); "
        "nothing written" in output
    )
    assert "check failed: the project is not up to date" in output

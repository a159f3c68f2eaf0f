"""The command line: exit codes, --dry-run/--check/--force/--json, and no damage on refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from bgtasks_gen import __version__
from tests.conftest import invoke, tree_hashes

runner = CliRunner()


def test_version() -> None:
    code, output = invoke("--version")
    assert code == 0 and output.strip() == f"bgtasks {__version__}"


def test_help_documents_exit_codes() -> None:
    code, output = invoke("init", "--help")
    assert code == 0
    for text in ("--dry-run", "--check", "--force", "--json", "Exit codes"):
        assert text in output


def test_help_does_not_import_heavy_modules() -> None:
    probe = (
        "import sys\n"
        "from bgtasks_gen.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('libcst', 'jinja2', 'copier') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "HEAVY=\n" in result.stdout, result.stdout


def test_init_then_rerun_is_nothing_to_do(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    assert (project / "app/tasks/email.py").is_file()
    assert (project / ".bgtasks.toml").is_file()
    after_first = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0 and "nothing to do" in output
    assert tree_hashes(project) == after_first
    code, _ = invoke("init", str(project), "--runner", "builtin", "--check")
    assert code == 0


def test_dry_run_writes_nothing_and_shows_a_diff(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin", "--dry-run")
    assert code == 0, output
    assert "+++ b/app/core/config.py" in output
    assert "create" in output and "patch" in output
    assert tree_hashes(project) == before


def test_check_reports_pending_changes_with_exit_1(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    before = tree_hashes(project)
    code, _ = invoke("init", str(project), "--runner", "builtin", "--check")
    assert code == 1
    assert tree_hashes(project) == before


def test_conflict_is_refused_and_nothing_is_written(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    mine = project / "app/api/v1/routes/notifications.py"
    mine.write_text("# my own notifications router\n")
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 1
    assert "conflict" in output and "app/api/v1/routes/notifications.py" in output
    assert tree_hashes(project) == before
    code, output = invoke("init", str(project), "--runner", "builtin", "--force")
    assert code == 0, output
    assert "overwrite" in output
    assert "BackgroundTasks" in mine.read_text()


def test_an_existing_tasks_package_is_not_reused(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    (project / "app/tasks.py").write_text("# the project's own tasks\n")
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    assert (project / "app/background_tasks/email.py").is_file()
    assert (project / "app/tasks.py").read_text() == "# the project's own tasks\n"


def test_json_summary(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    code, output = invoke("init", str(project), "--runner", "builtin", "--json")
    assert code == 0
    payload = json.loads(output)
    assert payload["written"] is True
    actions = {f["path"]: f["action"] for f in payload["files"]}
    assert actions["app/core/config.py"] == "patch"
    assert actions["app/tasks/email.py"] == "create"
    assert any("uvicorn" in step for step in payload["next_steps"])


def test_bad_input_exits_2_with_a_hint(tmp_path: Path) -> None:
    code, output = invoke("init", str(tmp_path / "missing"), "--runner", "builtin")
    assert code == 2 and "does not exist" in output and "hint:" in output
    code, output = invoke("init", str(tmp_path), "--runner", "nope")
    assert code == 2 and "unknown runner" in output
    code, output = invoke("init", str(tmp_path), "--runner", "builtin", "--json")
    assert code == 2 and json.loads(output)["exit_code"] == 2


def test_syntax_error_in_config_touches_nothing(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    config = project / "app/core/config.py"
    config.write_text(config.read_text() + "\ndef broken(:\n")
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 2
    assert "config.py" in output and "syntax error" in output
    assert tree_hashes(project) == before


def test_runners_table_has_the_caveats() -> None:
    code, output = invoke("runners", "--json")
    assert code == 0
    rows = {row["runner"]: row for row in json.loads(output)}
    assert any("not durable" in c for c in rows["builtin"]["caveats"])
    code, output = invoke("runners")
    assert code == 0 and "Task selection guide" in output

"""The command line: exit codes, --dry-run/--check/--force/--json, and no damage on refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen import __version__
from tests.conftest import invoke, tree_hashes, write_tree

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
    # a file of the project's own where a generated one goes (the router would take
    # another name: test_router_name_collision.py; a test module takes none)
    project = example("layered")
    mine = project / "tests/test_bgtasks_builtin.py"
    mine.parent.mkdir(exist_ok=True)
    mine.write_text("# my own tests of this name\n")
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 1, output
    assert "conflict" in output and "tests/test_bgtasks_builtin.py" in output
    assert tree_hashes(project) == before
    code, output = invoke("init", str(project), "--runner", "builtin", "--force")
    assert code == 0, output
    assert "overwrite" in output
    assert "def test_" in mine.read_text()


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
    # a choice: a usage error naming the runners there are
    assert code == 2 and "'nope' is not one of 'celery', 'arq', 'builtin'" in output
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


def test_every_command_takes_the_project_positionally_or_with_p(example) -> None:  # type: ignore[no-untyped-def]
    project = str(example("layered"))
    assert invoke("init", "-p", project, "--runner", "builtin")[0] == 0
    assert invoke("add-task", "ping", project)[0] == 0
    for command in (["list"], ["check"], ["update"], ["runners"]):
        assert invoke(*command, project)[0] == 0, command
        assert invoke(*command, "-p", project)[0] == 0, command
    assert invoke("remove-task", "ping", "-p", project)[0] == 0
    code, output = invoke("list", project, "-p", "elsewhere")
    assert code == 2 and "name it once" in output


def test_choices_show_in_help_and_completion_is_on() -> None:
    code, output = invoke("init", "--help")
    assert code == 0 and "celery|arq|builtin" in output
    assert "redis (every queue runner) or rabbitmq" in " ".join(output.split())
    code, output = invoke("--help")
    assert "--install-completion" in output
    code, output = invoke("init", ".", "--broker", "kafka")
    assert code == 2 and "unknown broker 'kafka'" in output
    assert "choose redis or rabbitmq" in output


def test_task_names_complete_from_the_state_file(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    for name in ("ping", "purge", "resize"):
        assert invoke("add-task", name, str(project))[0] == 0
    env = {
        **os.environ,
        "_BGTASKS_COMPLETE": "complete_bash",
        "COMP_WORDS": f"bgtasks remove-task -p {project} p",
        "COMP_CWORD": "4",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "bgtasks")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sorted(done.stdout.split()) == ["ping", "purge"], done.stderr


def test_piped_output_is_not_cut_at_80_columns(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    long_name = "send_quarterly_report_to_manager"  # 32 characters, the longest allowed
    assert invoke("add-task", long_name, str(project))[0] == 0
    code, output = invoke("list", str(project))
    assert code == 0
    assert any(long_name in line and "/notifications/" in line for line in output.splitlines())


def test_saved_dry_run_diff_applies_with_git_apply(example, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    code, diff = invoke("init", str(project), "--runner", "celery", "--dry-run")
    assert code == 0
    patch = tmp_path / "scaffold.patch"
    patch.write_text(diff)
    done = subprocess.run(
        ["git", "apply", "--unsafe-paths", "-p1", str(patch)],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    # the pristine copies under .bgtasks/ are bookkeeping: not part of the shown diff
    real = {k: v for k, v in tree_hashes(project).items() if not k.startswith(".bgtasks/")}
    assert tree_hashes(copy) == real


def test_init_check_on_a_fresh_project_says_not_scaffolded(example) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    code, output = invoke("init", str(project), "--runner", "builtin", "--check")
    assert code == 1 and "not scaffolded yet" in output
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    (project / "app/tasks/auth.py").write_text("# mine\n")
    code, output = invoke("init", str(project), "--runner", "builtin", "--check")
    assert code == 1 and "not up to date" in output


def test_list_shows_builtin_send_email_and_arq_numbers(example) -> None:  # type: ignore[no-untyped-def]
    builtin = example("layered")
    assert invoke("init", str(builtin), "--runner", "builtin")[0] == 0
    tasks = {t["name"]: t for t in json.loads(invoke("list", str(builtin), "--json")[1])}
    assert tasks["send_email"]["added_by"] == "init"
    assert tasks["send_email"]["route"] == "POST /notifications/send-email"
    arq = example("factory")
    assert invoke("init", str(arq), "--runner", "arq")[0] == 0
    assert invoke("add-task", "ping", str(arq), "--retries", "3", "--timeout", "45")[0] == 0
    tasks = {t["name"]: t for t in json.loads(invoke("list", str(arq), "--json")[1])}
    assert (tasks["ping"]["retries"], tasks["ping"]["timeout"]) == (3, 45)
    assert (tasks["process_data"]["retries"], tasks["process_data"]["timeout"]) == (2, 120)
    # a named constant is read from the tasks module: SEND_EMAIL_MAX_TRIES = 5
    assert tasks["send_email"]["retries"] == 4


def test_runners_names_fields_as_the_project_spells_them(tmp_path: Path) -> None:
    rows = {r["runner"]: r for r in json.loads(invoke("runners", str(tmp_path), "--json")[1])}
    assert any("ARQ_JOB_TIMEOUT setting" in c for c in rows["arq"]["caveats"])
    write_tree(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "s"\nversion = "0"\ndependencies = []\n',
            "app/__init__.py": "",
            "app/config.py": "from pydantic_settings import BaseSettings\n\n\n"
            "class Settings(BaseSettings):\n    debug: bool = False\n\n\nsettings = Settings()\n",
            "app/main.py": "from fastapi import FastAPI\n\nfrom app.config import settings\n\n"
            "app = FastAPI(debug=settings.debug)\n",
        },
    )
    rows = {r["runner"]: r for r in json.loads(invoke("runners", str(tmp_path), "--json")[1])}
    assert any("arq_job_timeout setting" in c for c in rows["arq"]["caveats"])


@pytest.mark.parametrize(
    ("runner", "options", "restart"),
    [
        ("celery", ["--cron", "0 6 * * *"], "restart the celery worker and beat"),
        ("celery", [], "restart the celery worker (under"),
        ("arq", ["--every", "30"], "restart the arq worker (it runs the cron jobs too)"),
        ("builtin", [], "restart: nothing to restart"),
    ],
)
def test_add_task_says_what_to_restart(
    example, runner: str, options: list[str], restart: str
) -> None:  # type: ignore[no-untyped-def]
    project = example("layered")
    assert invoke("init", str(project), "--runner", runner)[0] == 0
    code, output = invoke("add-task", "tick", str(project), *options, "--json")
    assert code == 0, output
    notes = json.loads(output)["notes"]
    assert any(restart in note and "reloads by itself" in note for note in notes), notes


def test_builtin_task_logs_show_under_plain_uvicorn(example) -> None:  # type: ignore[no-untyped-def]
    import socket
    import time
    import urllib.request

    project = example("layered")
    assert invoke("init", str(project), "--runner", "builtin")[0] == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "BGTASKS_API_TOKEN": "cli-test-token"},  # the API refuses anonymous
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/notifications/process",
                    data=b'{"user_id": 7, "message": "hello"}',
                    headers={
                        "content-type": "application/json",
                        "authorization": "Bearer cli-test-token",
                    },
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 202
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        time.sleep(1)  # the background task runs after the response
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "notification for user 7 (5 characters)" in output, output

"""`update` merges template changes with the user's edits; `check` reports broken wiring.

A template change is simulated with a test-only copy of templates/ that differs from the
shipped one in two places of the email module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen import render
from tests.conftest import REPO, invoke, tree_hashes

cli = CliRunner()
EMAIL = "app/tasks/email.py"
TOP_LINE = '"""Send email over SMTP with a timeout and a verified STARTTLS connection.'
LOG_LINE = '    logger.info("email sent: %s", subject)'


@pytest.fixture
def project(example) -> Path:  # type: ignore[no-untyped-def]
    root: Path = example("layered")
    assert invoke("init", str(root), "--runner", "builtin")[0] == 0
    return root


@pytest.fixture
def new_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installed templates of a later bgtasks: the email module's docstring and log line
    changed."""
    copy = tmp_path / "templates-v2"
    shutil.copytree(REPO / "templates", copy)
    email = copy / "builtin/tasks/email.py.jinja"
    text = email.read_text()
    assert TOP_LINE in text and LOG_LINE in text
    text = text.replace(TOP_LINE, TOP_LINE.replace("Send email", "Send an email"))
    text = text.replace(LOG_LINE, LOG_LINE.replace("email sent", "email delivered"))
    email.write_text(text)
    # add-task's snippets are found through render.templates_dir too
    monkeypatch.setattr(render, "templates_dir", lambda: copy)
    return copy


def test_up_to_date_project_checks_clean_and_updates_nothing(project: Path) -> None:
    assert invoke("check", "-p", str(project)) == (0, "✓ the scaffold is wired and current\n")
    before = tree_hashes(project)
    code, output = invoke("update", "-p", str(project))
    assert code == 0 and "nothing to do" in output
    assert tree_hashes(project) == before


def test_untouched_file_takes_the_new_template(project: Path, new_templates: Path) -> None:
    code, output = invoke("check", "-p", str(project), "--json")
    assert code == 1
    findings = json.loads(output)["findings"]
    assert [f["where"] for f in findings if "behind" in f["problem"]] == [EMAIL]
    code, output = invoke("update", "-p", str(project))
    assert code == 0, output
    text = (project / EMAIL).read_text()
    assert "Send an email" in text and "email delivered" in text
    assert invoke("check", "-p", str(project))[0] == 0
    assert "nothing to do" in invoke("update", "-p", str(project))[1]


def test_edit_in_another_region_is_kept(project: Path, new_templates: Path) -> None:
    email = project / EMAIL
    email.write_text(
        email.read_text().replace(
            "    message.set_content(body)\n", "    message.set_content(body)  # mine\n"
        )
    )
    code, output = invoke("update", "-p", str(project))
    assert code == 0, output
    text = email.read_text()
    assert "set_content(body)  # mine" in text
    assert "Send an email" in text and "email delivered" in text


def test_overlapping_edit_is_a_conflict_and_nothing_is_written(
    project: Path, new_templates: Path
) -> None:
    email = project / EMAIL
    email.write_text(email.read_text().replace(LOG_LINE, '    logger.info("mine: %s", subject)'))
    before = tree_hashes(project)
    code, output = invoke("update", "-p", str(project))
    assert code == 1
    assert "conflict" in output and EMAIL in output
    assert tree_hashes(project) == before
    code, output = invoke("update", "-p", str(project), "--conflicts", "markers")
    assert code == 0, output
    text = email.read_text()
    assert "<<<<<<< yours\n" in text and ">>>>>>> bgtasks\n" in text
    assert "Send an email" in text  # the clean part merged too


def test_update_keeps_added_tasks(project: Path, new_templates: Path) -> None:
    assert invoke("add-task", "ping", "-p", str(project), "--arg", "host:str")[0] == 0
    code, output = invoke("update", "-p", str(project))
    assert code == 0, output
    assert "def ping(" in (project / "app/tasks/notifications.py").read_text()


def test_check_reports_a_router_no_longer_included(project: Path) -> None:
    main = project / "app/main.py"
    main.write_text(main.read_text().replace("app.include_router(notifications_router)\n", ""))
    code, output = invoke("check", "-p", str(project))
    assert code == 1 and "router" in output and "not included" in output
    assert invoke("update", "-p", str(project))[0] == 0
    assert "include_router(notifications_router)" in main.read_text()


def test_check_reports_a_missing_settings_field(project: Path) -> None:
    config = project / "app/core/config.py"
    config.write_text(
        config.read_text().replace('    EMAIL_FROM: str = "noreply@example.com"\n', "")
    )
    code, output = invoke("check", "-p", str(project), "--json")
    assert code == 1
    problems = [f["problem"] for f in json.loads(output)["findings"]]
    assert any("EMAIL_FROM" in p for p in problems)


def test_check_reports_a_deleted_generated_file(project: Path) -> None:
    (project / "app/tasks/auth.py").unlink()
    code, output = invoke("check", "-p", str(project))
    assert code == 1 and "app/tasks/auth.py" in output


def test_check_without_a_scaffold(tmp_path: Path) -> None:
    code, output = invoke("check", "-p", str(tmp_path))
    assert code == 2 and "bgtasks init" in output


@pytest.mark.parametrize(
    ("runner", "tasks_file", "task", "reference"),
    [
        ("celery", "app/tasks/tasks.py", "cleanup_expired_tokens", "beat entry"),
        ("arq", "app/tasks/arq_tasks.py", "process_data", "func(arq_tasks.process_data)"),
        ("arq", "app/tasks/arq_tasks.py", "daily_cleanup", "cron(arq_tasks.daily_cleanup)"),
    ],
)
def test_check_reports_schedules_and_registrations_naming_missing_tasks(
    example,
    runner: str,
    tasks_file: str,
    task: str,
    reference: str,  # type: ignore[no-untyped-def]
) -> None:
    from bgtasks_gen.patch.definitions import remove_definitions

    root: Path = example("layered")
    assert invoke("init", str(root), "--runner", runner)[0] == 0
    assert invoke("check", "-p", str(root))[0] == 0
    module = root / tasks_file
    module.write_text(remove_definitions(module.read_text(), {task}))
    code, output = invoke("check", "-p", str(root), "--json")
    assert code == 1
    problems = [f["problem"] for f in json.loads(output)["findings"]]
    assert any(reference in p and task in p for p in problems), problems


def test_check_fix_for_a_deleted_file_restores_it(project: Path) -> None:
    auth = project / "app/tasks/auth.py"
    original = auth.read_bytes()
    auth.unlink()
    code, output = invoke("check", str(project), "--json")
    assert code == 1
    fixes = [f["fix"] for f in json.loads(output)["findings"] if f["where"] == "app/tasks/auth.py"]
    assert fixes == ["run `bgtasks update --restore app/tasks/auth.py` to bring it back"]
    # plain update keeps the user's deletion: running it alone would loop
    assert "nothing to do" in invoke("update", str(project))[1]
    assert not auth.exists()
    code, output = invoke("update", str(project), "--restore", "app/tasks/auth.py")
    assert code == 0, output
    assert auth.read_bytes() == original
    assert invoke("check", str(project)) == (0, "✓ the scaffold is wired and current\n")


def test_restore_refuses_an_existing_or_unknown_file(project: Path) -> None:
    before = tree_hashes(project)
    code, output = invoke("update", str(project), "--restore", "app/tasks/auth.py")
    assert code == 2 and "only brings back a deleted generated file" in output
    code, output = invoke("update", str(project), "--restore", "app/main.py")
    assert code == 2 and "not a file bgtasks generates" in output
    assert tree_hashes(project) == before


def test_update_conflict_hint_names_conflicts_markers(project: Path, new_templates: Path) -> None:
    email = project / EMAIL
    email.write_text(email.read_text().replace(LOG_LINE, '    logger.info("mine: %s", subject)'))
    code, output = invoke("update", str(project))
    assert code == 1
    assert "--conflicts markers" in output and "--force" not in output


def test_update_notes_say_the_layout_is_recorded(project: Path) -> None:
    code, output = invoke("update", str(project), "--json")
    assert code == 0
    notes = json.loads(output)["notes"]
    settings = [n for n in notes if n.startswith("settings:")]
    assert settings and "as recorded in .bgtasks.toml (app.core.config:Settings)" in settings[0]
    assert not any("override" in n for n in notes)


def test_a_re_added_settings_field_gets_no_second_header(project: Path) -> None:
    config = project / "app/core/config.py"
    config.write_text(config.read_text().replace("    SMTP_TIMEOUT: float = 10.0\n", ""))
    assert invoke("update", str(project))[0] == 0
    text = config.read_text()
    assert text.count("# Background tasks (added by bgtasks)") == 1
    assert "    SMTP_TIMEOUT: float = 10.0\n" in text
    assert invoke("check", str(project))[0] == 0


def test_conflicts_is_a_choice(project: Path) -> None:
    code, output = invoke("update", str(project), "--conflicts", "theirs")
    assert code == 2 and "'theirs' is not one of 'refuse', 'markers'" in output
    code, output = invoke("update", "--help")
    assert "refuse|markers" in output and "--restore" in output

"""`bgtasks migrate --to taskiq` from a celery scaffold: what moves, what goes, and what
is refused (in process; tests/e2e/test_migrate_celery_e2e.py runs the moved project)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bgtasks_gen.apply import apply
from bgtasks_gen.scaffold import plan_init
from tests.conftest import EXAMPLES, invoke, tree_hashes

CELERY_FILES = [
    "app/tasks/tasks.py",
    "app/tasks/celery_app.py",
    "app/tasks/beat_lock.py",
    "app/tasks/mailer.py",
    "app/tasks/registry.py",
    "app/api/v1/routes/tasks.py",
    "tests/test_bgtasks_celery.py",
]
TASKS = "app/tasks/tasks.py"
RESIZE_BODY = """    logger.info("resize: attempt %d", self.request.retries + 1)
    return {
        "width": width,
        "name": name,
    }"""
EDITED_RESIZE_BODY = """    logger.info("task %s, retry %d", self.request.id, self.request.retries)
    # doubled on purpose
    return {"width": width * 2, "name": name}"""


def _celery_project(tmp_path: Path, *init: str, old_surface: bool = False) -> Path:
    """A celery project as `init` scaffolds it now (the common HTTP surface), or as it
    did before that surface existed (`old_surface`), grown by add-task."""
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    if old_surface:
        apply(plan_init(project, "celery", api_shape=""))
    else:
        code, output = invoke("init", str(project), "--runner", "celery", *init)
        assert code == 0, output
    for args in (
        ["ping"],
        ["resize", "--arg", "width:int", "--arg", "name:str", "--retries", "2"],
        ["tick", "--every", "5", "--timeout", "40"],
        ["nightly", "--cron", "0 3 * * *"],
    ):
        code, output = invoke("add-task", *args, "-p", str(project))
        assert code == 0, output
    return project


def _edit(project: Path, rel: str, old: str, new: str) -> None:
    path = project / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new, 1))


def _line_of(project: Path, rel: str, needle: str, after: str = "def resize(") -> int:
    """The number of the first line holding `needle` after the one holding `after`."""
    lines = (project / rel).read_text().splitlines()
    start = next(number for number, line in enumerate(lines, 1) if after in line)
    return next(n for n, line in enumerate(lines, 1) if n > start and needle in line)


def _settings_class(path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> type:
    """The settings class of the module at `path`, imported as pydantic needs it."""
    spec = importlib.util.spec_from_file_location(f"moved_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    settings_class = getattr(module, name)
    assert isinstance(settings_class, type)
    return settings_class


def test_moves_the_project_and_keeps_the_edited_body(tmp_path: Path) -> None:
    project = _celery_project(tmp_path)
    _edit(project, TASKS, RESIZE_BODY, EDITED_RESIZE_BODY)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--dry-run")
    assert code == 0, output
    assert tree_hashes(project) == before  # a dry run writes nothing
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    assert "curl -X POST http://127.0.0.1:8000/tasks/send-email" in output
    assert "is already here" not in output  # celery's own files are not "another system"

    for rel in CELERY_FILES:
        assert not (project / rel).exists(), rel
        assert not (project / f".bgtasks/base/{rel}.base").exists(), rel
    tasks = (project / "app/tasks/taskiq_tasks.py").read_text()
    # the edited body, line for line, the bound task's request spelled the taskiq way,
    # under taskiq's signature as a plain def (run in taskiq's thread pool, as before)
    assert (
        "def resize(\n"
        "    width: int,\n"
        "    name: str,\n"
        "    control: TaskControl = TASK_CONTROL,\n"
        ") -> dict[str, Any]:\n"
    ) in tasks
    assert (
        '    logger.info("task %s, retry %d", control.task_id, (control.tries - 1))\n'
        "    # doubled on purpose\n"
        '    return {"width": width * 2, "name": name}\n'
    ) in tasks
    assert "self" not in tasks.partition("def resize(")[2].partition("\n\n\n")[0]
    # the options: retries, timeout and the schedules as taskiq labels
    assert 'task_name="resize",\n    timeout=capped_timeout(300),\n' in tasks
    assert "    retry_on_error=True,\n    max_retries=3,\n)\ndef resize(" in tasks
    assert 'task_name="tick",\n    timeout=capped_timeout(40),' in tasks
    assert 'schedule=[{"interval": 5}]' in tasks
    assert 'schedule=[{"cron": "0 3 * * *"}]' in tasks
    assert "async def ping(" in tasks  # not edited: taskiq's own

    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["runners"] == ["taskiq"]
    assert state["layout"]["api_shape"] == "common"
    assert set(state["tasks"]) == {"ping", "resize", "tick", "nightly"}
    assert {t["runner"] for t in state["tasks"].values()} == {"taskiq"}
    assert state["tasks"]["resize"]["retries"] == 2
    assert state["tasks"]["tick"]["every"] == 5 and state["tasks"]["tick"]["timeout"] == 40
    assert state["tasks"]["nightly"]["cron"] == "0 3 * * *"
    assert not any("celery" in rel or rel.endswith("/tasks.py") for rel in state["files"])

    router = (project / "app/api/v1/routes/taskiq_tasks.py").read_text()
    assert 'prefix="/tasks"' in router and '"/resize"' in router
    main = (project / "app/main.py").read_text()
    assert "routes.tasks import" not in main and "taskiq_tasks_router" in main
    pyproject = (project / "pyproject.toml").read_text()
    assert '"celery' not in pyproject and "taskiq-redis" in pyproject
    assert "pydantic-settings" in pyproject  # the project's settings still need it
    procfile = (project / "Procfile").read_text()
    assert "celery" not in procfile.lower() and "beat" not in procfile
    assert "worker: taskiq worker" in procfile and "scheduler: taskiq scheduler" in procfile
    compose_text = (project / "compose.yaml").read_text()
    assert "celery" not in compose_text.lower() and "flower" not in compose_text.lower()
    compose = yaml.safe_load(compose_text)["services"]
    assert set(compose) == {"redis", "web", "worker", "scheduler"}
    assert compose["web"]["environment"]["TASKIQ_BROKER_URL"] == "redis://redis:6379/0"
    env_example = (project / ".env.example").read_text()
    assert "CELERY" not in env_example.upper() and "TASKIQ_BROKER_URL=" in env_example

    # the carried tasks are add-task's: listed so, and the edited one refused by remove-task
    code, output = invoke("list", str(project), "--json")
    assert code == 0, output
    listed = {t["name"]: t for t in json.loads(output)}
    added = {n for n, t in listed.items() if t["added_by"] == "add-task"}
    assert added == {"ping", "resize", "tick", "nightly"}
    assert listed["resize"]["route"] == "POST /tasks/resize"
    code, output = invoke("remove-task", "resize", "-p", str(project))
    assert code == 1 and "body" in output
    # running it again has nothing left to do
    after = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0 and "nothing to move" in output, output
    assert tree_hashes(project) == after


def test_the_settings_keep_reading_celerys_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _celery_project(tmp_path)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    settings = (project / "app/core/config.py").read_text()
    assert "CELERY_BROKER_URL: str" not in settings and "CELERY_RESULT_BACKEND: str" not in settings
    assert "from pydantic import AliasChoices, Field, SecretStr\n" in settings
    assert 'validation_alias=AliasChoices("TASKIQ_BROKER_URL", "CELERY_BROKER_URL")' in settings
    assert 'validation_alias=AliasChoices("REDIS_URL", "CELERY_RESULT_BACKEND")' in settings
    # the variables mean what they meant: read by pydantic-settings itself
    settings_class = _settings_class(project / "app/core/config.py", monkeypatch, "Settings")
    values = settings_class(
        _env_file=None,
        **{"CELERY_BROKER_URL": "redis://broker:6379/4", "CELERY_RESULT_BACKEND": "redis://r/5"},
    )
    assert values.TASKIQ_BROKER_URL == "redis://broker:6379/4"
    assert values.REDIS_URL == "redis://r/5"
    # a later update keeps the fields as they are (no second TASKIQ_BROKER_URL)
    code, output = invoke("update", str(project))
    assert code == 0, output
    assert (project / "app/core/config.py").read_text().count("TASKIQ_BROKER_URL: str") == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("    raise self.retry(countdown=5)", "self.retry"),
        ('    self.update_state(state="PROGRESS")\n    return {}', "self.update_state"),
        ("    helper(self)\n    return {}", "helper(self)"),
        (
            "    try:\n        return {}\n    except SoftTimeLimitExceeded:\n        raise",
            "SoftTimeLimitExceeded",
        ),
    ],
    ids=["retry", "update-state", "passed-on", "celery-name"],
)
def test_refuses_celery_only_uses_naming_the_line(tmp_path: Path, body: str, expected: str) -> None:
    project = _celery_project(tmp_path)
    _edit(project, TASKS, RESIZE_BODY, body)
    line = _line_of(project, TASKS, expected)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1, output
    assert f"{TASKS}:{line}:" in output and expected in output, output
    assert "nothing was written" in output
    assert tree_hashes(project) == before


def test_refuses_edits_the_move_would_lose_unless_forced(tmp_path: Path) -> None:
    project = _celery_project(tmp_path)
    _edit(
        project, "app/tasks/celery_app.py", "celery_app = Celery(", "celery_app = Celery(  # mine"
    )
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1 and "app/tasks/celery_app.py: line(s)" in output, output
    assert "--force" in output and tree_hashes(project) == before


def test_refuses_when_the_projects_own_code_imports_a_celery_module(tmp_path: Path) -> None:
    project = _celery_project(tmp_path)
    (project / "app/services.py").write_text("from app.tasks.celery_app import celery_app\n")
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1, output
    assert "app/services.py:1 imports app.tasks.celery_app" in output
    assert tree_hashes(project) == before


def test_celerys_own_surface_is_refused_unless_moving_to_the_new_one(tmp_path: Path) -> None:
    project = _celery_project(tmp_path, old_surface=True)
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 2, output
    assert "celery's own HTTP surface" in output and "--api-shape common" in output, output
    assert tree_hashes(project) == before
    code, output = invoke("migrate", str(project), "--to", "taskiq", "--api-shape", "new")
    assert code == 0, output
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "taskiq" and state["layout"]["api_shape"] == "common"


def test_the_env_prefix_is_part_of_the_old_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    _edit(project, "app/core/config.py", 'extra="ignore"', 'extra="ignore", env_prefix="SHOP_"')
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    settings = (project / "app/core/config.py").read_text()
    assert 'AliasChoices("SHOP_TASKIQ_BROKER_URL", "SHOP_CELERY_BROKER_URL")' in settings
    settings_class = _settings_class(project / "app/core/config.py", monkeypatch, "Settings")
    monkeypatch.setenv("SHOP_CELERY_BROKER_URL", "redis://prefixed:6379/2")
    assert settings_class(_env_file=None).TASKIQ_BROKER_URL == "redis://prefixed:6379/2"


def test_a_settings_module_bgtasks_wrote_loses_celerys_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "bare"
    (project / "app").mkdir(parents=True)
    (project / "app/__init__.py").write_text("")
    (project / "app/main.py").write_text("from fastapi import FastAPI\n\napp = FastAPI()\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "bare"\nversion = "0.1.0"\ndependencies = [\n    "fastapi>=0.115",\n]\n'
    )
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    assert "CELERY_BROKER_URL: str" in (project / "app/tasks/settings.py").read_text()
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    settings = (project / "app/tasks/settings.py").read_text()
    assert "CELERY_BROKER_URL: str" not in settings and "CELERY_RESULT_BACKEND: str" not in settings
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://results:6379/3")
    settings_class = _settings_class(project / "app/tasks/settings.py", monkeypatch, "TaskSettings")
    assert settings_class(_env_file=None).REDIS_URL == "redis://results:6379/3"
    code, output = invoke("check", str(project))
    assert code == 0, output


def test_refuses_a_project_with_adopted_tasks(tmp_path: Path) -> None:
    project = _celery_project(tmp_path)
    with (project / ".bgtasks.toml").open("a") as state:
        state.write('\n[adopted.send_welcome]\nsource = "app.services.send_welcome"\n')
        state.write('runner = "celery"\n')
    before = tree_hashes(project)
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 1, output
    assert "'send_welcome' was adopted onto celery" in output and "nothing was written" in output
    assert tree_hashes(project) == before


def test_a_rabbitmq_broker_stays_rabbitmq(tmp_path: Path) -> None:
    project = _celery_project(tmp_path, "--broker", "rabbitmq")
    code, output = invoke("migrate", str(project), "--to", "taskiq")
    assert code == 0, output
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["layout"]["broker"] == "rabbitmq"
    pyproject = (project / "pyproject.toml").read_text()
    assert "taskiq-aio-pika" in pyproject and '"celery' not in pyproject
    app = (project / "app/tasks/taskiq_app.py").read_text()
    assert "AioPikaBroker" in app
    settings = (project / "app/core/config.py").read_text()
    assert 'AliasChoices("TASKIQ_BROKER_URL", "CELERY_BROKER_URL")' in settings

"""`bgtasks list` gives every runner's tasks one row shape: the same keys, numbers as
numbers, and schedules as cron text or an interval in words, never the runner's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bgtasks_gen.addtask import Project
from bgtasks_gen.inventory import TaskRow, list_tasks
from bgtasks_gen.runners import get_runner
from bgtasks_gen.schedules import arq_cron_text, cron_fields_text, interval_text
from tests.conftest import EXAMPLES, invoke, write_tree

RUNNERS = ("celery", "arq", "taskiq", "builtin")
SCHEDULERS = ("celery", "arq", "taskiq")
KEYS = {"name", "route", "schedule", "retries", "timeout", "added_by"}
# the schedules each runner's init writes, as cron text (celery's hourly one is a timedelta)
INIT_SCHEDULES = {
    "celery": {"cleanup_expired_tokens": "every 1h", "send_daily_reports": "0 9 * * *"},
    "arq": {"daily_cleanup": "0 3 * * *"},
    "taskiq": {"cleanup_expired": "0 * * * *", "daily_report": "0 9 * * *"},
}
CODE_WORDS = ("set(range", "crontab(", "timedelta(", "cron(", '{"cron"', '{"interval"')


def _scaffold(root: Path, runner: str) -> Path:
    project = root / runner
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", runner)[0] == 0
    if runner == "builtin":  # it neither schedules, retries nor limits time
        assert invoke("add-task", "nightly", "-p", str(project))[0] == 0
        return project
    nightly = ("--cron", "0 6 * * 1-5", "--retries", "3", "--timeout", "120")
    code, output = invoke("add-task", "nightly", "-p", str(project), *nightly)
    assert code == 0, output
    heartbeat = ("--every", "30", "--retries", "0")
    code, output = invoke("add-task", "heartbeat", "-p", str(project), *heartbeat)
    assert code == 0, output
    # arq writes both as the same cron(minute=...): each reads as what was asked for
    for name, schedule in (("five", ("--every", "300")), ("steps", ("--cron", "*/5 * * * *"))):
        code, output = invoke("add-task", name, "-p", str(project), *schedule)
        assert code == 0, output
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("list_rows")
    return {runner: _scaffold(root, runner) for runner in RUNNERS}


def _rows(project: Path) -> dict[str, dict[str, object]]:
    code, output = invoke("list", str(project), "--json")
    assert code == 0, output
    return {row["name"]: row for row in json.loads(output)}


def test_every_runner_lists_the_same_keys(projects: dict[str, Path]) -> None:
    for runner in RUNNERS:
        for row in _rows(projects[runner]).values():
            assert set(row) == KEYS, (runner, row)


def test_the_same_add_task_reads_the_same_on_every_runner(projects: dict[str, Path]) -> None:
    nightly = {runner: _rows(projects[runner])["nightly"] for runner in SCHEDULERS}
    heartbeat = {runner: _rows(projects[runner])["heartbeat"] for runner in SCHEDULERS}
    for runner in SCHEDULERS:
        assert nightly[runner]["schedule"] == "0 6 * * 1-5", runner
        assert nightly[runner]["retries"] == 3 and type(nightly[runner]["retries"]) is int
        assert nightly[runner]["timeout"] == 120 and type(nightly[runner]["timeout"]) is int
        assert heartbeat[runner]["schedule"] == "every 30s", runner
        assert heartbeat[runner]["retries"] == 0 and type(heartbeat[runner]["retries"]) is int
        assert heartbeat[runner]["timeout"] == 300, runner
    for runner in SCHEDULERS:
        rows = _rows(projects[runner])
        assert (rows["five"]["schedule"], rows["steps"]["schedule"]) == (
            "every 5m",
            "*/5 * * * *",
        ), runner


def test_init_schedules_read_as_cron_text(projects: dict[str, Path]) -> None:
    for runner, expected in INIT_SCHEDULES.items():
        rows = _rows(projects[runner])
        assert {name: rows[name]["schedule"] for name in expected} == expected, runner


def test_constants_and_labels_are_read_as_numbers(projects: dict[str, Path]) -> None:
    # SEND_EMAIL_MAX_TRIES = 5 attempts on arq and taskiq: 4 retries; celery counts retries
    assert [_rows(projects[r])["send_email"]["retries"] for r in SCHEDULERS] == [5, 4, 4]
    taskiq = _rows(projects["taskiq"])
    # room for the 10 minutes RFC 5321 gives the reply to the end of the data, plus 60 s
    assert taskiq["send_email"]["timeout"] == 660
    # no retry_on_error label: taskiq's retry middleware never retries it
    assert taskiq["process_data"]["retries"] == 0


def test_builtin_rows_have_no_retries_timeout_or_schedule(projects: dict[str, Path]) -> None:
    rows = _rows(projects["builtin"])
    assert rows["nightly"]["added_by"] == "add-task"
    for row in rows.values():
        assert (row["schedule"], row["retries"], row["timeout"]) == (None, None, None)
    code, output = invoke("list", str(projects["builtin"]))
    assert code == 0 and "—" in output


def test_the_table_shows_no_schedule_code(projects: dict[str, Path]) -> None:
    for runner in SCHEDULERS:
        code, output = invoke("list", str(projects[runner]))
        assert code == 0, output
        assert "0 6 * * 1-5" in output and "every 30s" in output, runner
        assert not [word for word in CODE_WORDS if word in output], (runner, output)


# -- the text of a schedule -------------------------------------------------------------


def test_equal_cron_fields_read_the_same_however_written() -> None:
    assert cron_fields_text("0 6 * * 1-5".split()) == "0 6 * * 1-5"
    # taskiq keeps "5/15", celery gets "5-59/15": the same minutes
    assert cron_fields_text("5/15 * * * *".split()) == "5-59/15 * * * *"
    assert cron_fields_text("5-59/15 * * * *".split()) == "5-59/15 * * * *"
    assert cron_fields_text("0,15,30,45 */2 1 1,6 7".split()) == "*/15 */2 1 1,6 0"
    assert cron_fields_text("0-30/10 9-17 * * 1,2,3,5".split()) == "0-30/10 9-17 * * 1-3,5"
    with pytest.raises(ValueError):
        cron_fields_text("0 9 * * mon-fri".split())
    with pytest.raises(ValueError):  # refused before anything is expanded
        cron_fields_text("0-99999999 * * * *".split())


def test_interval_words_use_the_largest_whole_unit() -> None:
    assert [interval_text(s) for s in (30, 90, 300, 3600, 7200, 86400)] == [
        "every 30s",
        "every 90s",
        "every 5m",
        "every 1h",
        "every 2h",
        "every 1d",
    ]
    assert interval_text(0.5) == "every 0.5s"


def test_arq_fields_read_back_as_cron_text_or_interval() -> None:
    weekdays = {"hour": frozenset({6}), "minute": frozenset({0}), "weekday": frozenset(range(5))}
    assert arq_cron_text(weekdays) == "0 6 * * 1-5"  # arq's Monday is 0, cron's is 1
    assert arq_cron_text({"second": frozenset({0, 30})}) == "every 30s"
    fives = {"minute": frozenset(range(0, 60, 5)), "second": frozenset({0})}
    # the same fields are `--cron "*/5 * * * *"` or `--every 300`: what add-task recorded
    assert arq_cron_text(fives) == "*/5 * * * *"
    assert arq_cron_text(fives, every=300) == "every 5m"
    assert arq_cron_text(fives, every=600) == "*/5 * * * *"
    assert arq_cron_text({"hour": frozenset({3}), "second": frozenset({15})}) == (
        "* 3 * * * at second 15"
    )


# -- hand-written schedules and options -------------------------------------------------

LAYOUT = {"tasks_module": "app.tasks", "routes_module": "app.routes", "source_root": "."}


def _project(root: Path, runner: str, files: dict[str, str]) -> Project:
    write_tree(root, files)
    return Project(root, {"runner": runner}, get_runner(runner), LAYOUT)


def _by_name(rows: list[TaskRow]) -> dict[str, TaskRow]:
    return {row.name: row for row in rows}


def test_hand_written_celery_schedules_read_as_text(tmp_path: Path) -> None:
    tasks = """from app.tasks.celery_app import celery_app

LIMIT = 5 * 60


@celery_app.task(max_retries=1, time_limit=LIMIT)
def report() -> None: ...


@celery_app.task
def ping() -> None: ...


@celery_app.task(soft_time_limit=settings.LIMIT)
def odd() -> None: ...
"""
    worker = """beat_schedule = {
    "a": {"task": "app.tasks.tasks.report", "schedule": crontab(0, "*/2", "mon")},
    "b": {"task": "app.tasks.tasks.ping", "schedule": timedelta(minutes=5)},
    "c": {"task": "app.tasks.tasks.ping", "schedule": 45.0},
    "d": {"task": "app.tasks.tasks.odd", "schedule": solar("sunset", 1, 2)},
    "e": {"task": "app.tasks.tasks.report", "schedule": crontab(day_of_week={1, 3, 5})},
}
"""
    project = _project(
        tmp_path, "celery", {"app/tasks/tasks.py": tasks, "app/tasks/celery_app.py": worker}
    )
    rows = _by_name(list_tasks(project))
    # a weekday name stays as written; numbers become cron text
    assert rows["report"].schedule == 'crontab(0, "*/2", "mon"); * * * * 1,3,5'
    assert (rows["report"].retries, rows["report"].timeout) == (1, 300)
    assert rows["ping"].schedule == "every 5m; every 45s"
    assert (rows["ping"].retries, rows["ping"].timeout) == (3, None)  # celery's defaults
    assert rows["odd"].schedule == 'solar("sunset", 1, 2)'
    assert rows["odd"].timeout is None  # a settings value: known when it runs


def test_hand_written_arq_jobs_count_tries_as_attempts(tmp_path: Path) -> None:
    tasks = """async def mine(ctx: dict) -> None: ...


async def tick(ctx: dict) -> None: ...
"""
    worker = """class WorkerSettings:
    functions = [func(arq_tasks.mine, timeout=timedelta(minutes=2))]
    cron_jobs = [
        cron("app.tasks.arq_tasks.tick", minute={0, 30}, max_tries=3),  # twice an hour
        cron(arq_tasks.mine, second=set(range(0, 999999999))),
    ]
    max_tries = 7
"""
    project = _project(
        tmp_path, "arq", {"app/tasks/arq_tasks.py": tasks, "app/tasks/arq_worker.py": worker}
    )
    rows = _by_name(list_tasks(project))
    assert (rows["mine"].retries, rows["mine"].timeout) == (6, 120)
    # a range no clock field has is shown as written, never expanded
    assert rows["mine"].schedule == "cron(arq_tasks.mine, second=set(range(0, 999999999)))"
    assert (rows["tick"].retries, rows["tick"].schedule) == (2, "0,30 * * * *")


def test_taskiq_retries_follow_the_middleware_defaults(tmp_path: Path) -> None:
    tasks = """@broker.task(retry_on_error=True, schedule=[{"interval": timedelta(hours=6)}])
async def sync() -> None: ...


@broker.task(schedule=[{"cron": "*/10 * * * *"}, {"time": when}])
async def poll() -> None: ...
"""
    app = "middleware = SmartRetryMiddleware(default_retry_count=4)\n"
    project = _project(
        tmp_path,
        "taskiq",
        {"app/tasks/taskiq_tasks.py": tasks, "app/tasks/taskiq_app.py": app},
    )
    rows = _by_name(list_tasks(project))
    assert (rows["sync"].retries, rows["sync"].schedule) == (3, "every 6h")
    assert rows["poll"].retries == 0
    # an entry nothing here reads: the label as written, on one line
    assert rows["poll"].schedule == '[{"cron": "*/10 * * * *"}, {"time": when}]'

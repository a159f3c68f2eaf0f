"""taskiq: async tasks on a Redis stream, a worker process and a scheduler process.

Describes the runner only: bgtasks never imports taskiq itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from bgtasks_gen.runners.base import (
    Detection,
    DevProcess,
    PinRule,
    RunnerSpec,
    RunnerSteps,
    SettingsField,
    TaskShape,
)
from bgtasks_gen.runners.fields import (
    AUTH_FIELDS,
    INBOX_FIELDS,
    SMTP_FIELDS,
    result_retention_field,
)

TASKIQ_FIELDS = (
    SettingsField(
        "taskiq_broker_url",
        "str",
        '"redis://localhost:6379/0"',
        (),
        "taskiq (background tasks)",
        broker_defaults={"rabbitmq": '"amqp://guest:guest@localhost:5672//"'},
    ),
    # Redis with either broker: results, status, progress, cancel flags, schedules
    SettingsField(
        "redis_url",
        "str",
        '"redis://localhost:6379/0"',
        ("TASKIQ_REDIS_URL", "REDIS_DSN", "REDIS_URI"),
    ),
    # Upper bound on every task's run time, in seconds. A task not acknowledged within
    # this + 10 s is handed to another worker, so it also bounds how long a task whose
    # worker was killed waits before it runs again.
    SettingsField("taskiq_task_timeout", "int", "300"),
    # Tasks waiting or running at most on the Redis stream: beyond it the API answers
    # 503 "queue full" and queues nothing (nothing queued is ever trimmed).
    SettingsField("taskiq_max_queued", "int", "100000"),
)


TASKIQ_DEPENDENCIES = (
    "taskiq>=0.13,<0.14",
    # 1.2.4: the stream broker's xautoclaim the generated broker builds on
    "taskiq-redis>=1.2.4,<2",
    "taskiq-fastapi>=0.5,<0.6",
    "aiosmtplib>=3",
    "email-validator>=2.0",
)


# taskiq-fastapi 0.5 requires fastapi>=0.133,<1; 0.4 accepts fastapi>=0.93. A project
# whose FastAPI is locked below 0.133, or may resolve below it, gets 0.4, which installs
# beside it (its `init(broker, "module:app")` is the same).
TASKIQ_FASTAPI_BEFORE_0_133 = "taskiq-fastapi>=0.4,<0.5"
PIN_RULES = (
    PinRule(
        "taskiq-fastapi",
        "fastapi",
        below="0.133",
        replace_with=TASKIQ_FASTAPI_BEFORE_0_133,
        note="{evidence}: taskiq-fastapi 0.5 needs fastapi>=0.133, so bgtasks adds "
        f"{TASKIQ_FASTAPI_BEFORE_0_133} (it accepts fastapi>=0.93)",
    ),
)


def _processes(tasks_module: object, app_target: str) -> tuple[str, str]:
    app = f"{tasks_module}.taskiq_app"
    tasks = f"{tasks_module}.taskiq_tasks"
    # a src layout: the worker imports the tasks from the app's folder too
    _, marker, rest = app_target.partition("--app-dir ")
    app_dir = f" --app-dir {rest.split()[0]}" if marker and rest.split() else ""
    return (
        f"taskiq worker {app}:broker {tasks}{app_dir}",
        f"taskiq scheduler {app}:scheduler {tasks} --update-interval 5{app_dir}",
    )


def _next_steps(ctx: Mapping[str, object]) -> RunnerSteps:
    tests_dir = ctx.get("tests_dir", "tests")
    processes = list(_processes(ctx["tasks_module"], str(ctx.get("app_target", ""))))
    if "app_target" in ctx:
        processes.append(f"uvicorn {ctx['app_target']} --reload")
    return RunnerSteps(
        processes=tuple(processes),
        tests=(f"pytest {tests_dir}/test_bgtasks_taskiq.py",),
        tests_why="the scaffold's own tests: they need the Redis of the settings, "
        "skipped without it",
    )


SPEC = RunnerSpec(
    name="taskiq",
    summary="taskiq: async tasks on a Redis stream, a `taskiq worker` and one "
    "`taskiq scheduler` process",
    use_when="Async-native with FastAPI dependencies in tasks, Python 3.10+",
    min_python=(3, 10),
    caveats=(
        "run exactly one `taskiq scheduler`: taskiq has no leader election (a second one "
        "sends nothing twice, each firing is claimed in Redis, but it is wasted)",
        "retries are timed schedules sent by the scheduler: without it running, a failed "
        "email waits for its retry",
        "a task whose worker is killed runs again once it has gone unacknowledged for "
        "{taskiq_task_timeout} + 10 s: keep that setting realistic",
        "a running task stops on cancel only where it reports progress; tasks run at "
        "least once, keep them idempotent",
    ),
    settings_fields=(
        *TASKIQ_FIELDS,
        *SMTP_FIELDS,
        *AUTH_FIELDS,
        *INBOX_FIELDS,
        result_retention_field(60 * 60),
    ),
    router_file="taskiq_tasks",
    dependencies=TASKIQ_DEPENDENCIES,
    pin_rules=PIN_RULES,
    brokers=("redis", "rabbitmq"),
    broker_dependencies={
        "redis": TASKIQ_DEPENDENCIES,
        "rabbitmq": (*TASKIQ_DEPENDENCIES, "taskiq-aio-pika>=0.6.1,<0.7"),
    },
    next_steps=_next_steps,
    lifespan_module="taskiq_app",
    # the dashboard reads cron entries with taskiq's own matcher, which has no types
    untyped_packages=("pycron",),
    tasks_file="taskiq_tasks.py",
    scaffold_tasks=(
        "send_email",
        "process_data",
        "long_running_task",
        "cleanup_expired",
        "daily_report",
    ),
    test_file="test_bgtasks_taskiq.py",
    # add-task writes the schedule as the task's own `schedule=[...]` label
    schedule_kind="label",
    worker_file="taskiq_app.py",
    detection=Detection("taskiq_redis", call="taskiq_redis.RedisStreamBroker"),
    restart=(
        "the taskiq worker",
        "the taskiq worker and the taskiq scheduler (it reads the schedule labels)",
    ),
    dev_processes=(
        DevProcess(
            "worker",
            ("taskiq", "worker", "{worker_module}:broker", "{tasks_module}.taskiq_tasks"),
        ),
        DevProcess(
            "scheduler",
            (
                "taskiq",
                "scheduler",
                "{worker_module}:scheduler",
                "{tasks_module}.taskiq_tasks",
                "--update-interval",
                "5",
            ),
        ),
    ),
    task_shape=TaskShape(decorators=("broker.task", "*.task")),
    email_route="/taskiq-tasks/send-email",
    access_module="auth",
)

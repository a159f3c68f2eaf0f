"""arq: asyncio-native jobs on Redis, with a worker process and cron jobs.

Describes the runner only: bgtasks never imports arq itself.
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
from bgtasks_gen.runners.celery import CELERY_BESIDE_ARQ, PINS_CELERY_56
from bgtasks_gen.runners.fields import (
    AUTH_FIELDS,
    INBOX_FIELDS,
    SMTP_FIELDS,
    result_retention_field,
)

ARQ_FIELDS = (
    SettingsField(
        "redis_url",
        "str",
        '"redis://localhost:6379/0"',
        ("ARQ_REDIS_URL", "REDIS_DSN", "REDIS_URI"),
        "arq (background jobs)",
    ),
    # Upper bound on every job's run time, in seconds. A worker holds a job's
    # in-progress lock for the largest timeout + 10 s, so this also bounds how long a
    # job whose worker was killed waits before it runs again.
    SettingsField("arq_job_timeout", "int", "300", ("ARQ_MAX_JOB_TIMEOUT",)),
)


def _next_steps(ctx: Mapping[str, object]) -> RunnerSteps:
    tasks_module = ctx["tasks_module"]
    tests_dir = ctx.get("tests_dir", "tests")
    processes = [f"arq {tasks_module}.arq_worker.WorkerSettings"]
    if "app_target" in ctx:
        processes.append(f"uvicorn {ctx['app_target']} --reload")
    return RunnerSteps(
        processes=tuple(processes),
        tests=(f"pytest {tests_dir}/test_bgtasks_arq.py",),
        tests_why="the scaffold's own tests: they need the Redis of the settings, "
        "skipped without it",
    )


SPEC = RunnerSpec(
    name="arq",
    summary="arq: asyncio jobs on Redis, run by a separate `arq` worker process",
    use_when="Async-native, Python 3.11+",
    caveats=(
        "arq is in maintenance mode upstream: security fixes only, no new features",
        "Redis only; arq 0.28 needs redis<6, so it cannot share an environment with "
        "celery 5.7 (celery 5.6 works: celery[redis]>=5.6,<5.7)",
        "a job whose worker is killed re-runs only after its in-progress lock expires "
        "(the largest job timeout + 10 s): keep the {arq_job_timeout} setting realistic",
        "jobs run at least once: a retry or a re-run repeats them, keep them idempotent",
    ),
    settings_fields=(
        *ARQ_FIELDS,
        *SMTP_FIELDS,
        *AUTH_FIELDS,
        *INBOX_FIELDS,
        result_retention_field(60 * 60),
    ),
    router_file="arq_tasks",
    dependencies=(
        "arq>=0.28,<0.29",
        # arq 0.28 needs <6; the pool code uses aclose(), new in 5.0.1
        "redis[hiredis]>=5.0.1,<6",
        "aiosmtplib>=3",
        "email-validator>=2.0",
    ),
    next_steps=_next_steps,
    lifespan_module="pool",
    tasks_file="arq_tasks.py",
    scaffold_tasks=("send_email", "process_data", "long_running_task", "daily_cleanup"),
    test_file="test_bgtasks_arq.py",
    # add-task registers functions in WorkerSettings.functions (func(...)) and
    # schedules in WorkerSettings.cron_jobs (cron(...)), both in arq_worker.py
    schedule_kind="cron",
    # cron(second=..., minute=..., hour=...) fires on clock values, never "7 s after"
    every_clock_periods=(60, 3600, 86400),
    worker_file="arq_worker.py",
    pin_rules=(
        PinRule(
            "arq",
            "celery",
            unless=PINS_CELERY_56,
            refuse=(
                "arq cannot be installed beside celery 5.7 in one environment: celery 5.7 "
                "needs redis-py >= 6.4 and arq needs redis-py < 6",
                f"pin {CELERY_BESIDE_ARQ} in your dependencies first (celery 5.6 accepts "
                "redis-py 5), or run the arq worker from its own environment and pass --no-deps",
            ),
        ),
    ),
    detection=Detection("arq", class_name="WorkerSettings"),
    restart=("the arq worker", "the arq worker (it runs the cron jobs too)"),
    dev_processes=(DevProcess("worker", ("arq", "{worker_module}.WorkerSettings")),),
    task_shape=TaskShape(first_param="ctx"),
    email_route="/arq-tasks/send-email",
)

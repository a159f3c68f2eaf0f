"""Celery: a separate worker process, Redis or RabbitMQ as broker, Redis for results."""

from __future__ import annotations

from collections.abc import Mapping

from bgtasks_gen.runners.base import RunnerSpec, RunnerSteps, SettingsField
from bgtasks_gen.runners.fields import SMTP_FIELDS

# The broker URL's default depends on --broker.
BROKER_URL_DEFAULTS: Mapping[str, str] = {
    "redis": '"redis://localhost:6379/0"',
    # No user or password in the URL: kombu falls back to RabbitMQ's local-only guest.
    "rabbitmq": '"amqp://localhost:5672//"',
}

CELERY_FIELDS = (
    SettingsField(
        "celery_broker_url",
        "str",
        BROKER_URL_DEFAULTS["redis"],
        ("BROKER_URL", "CELERY_BROKER"),
        "Celery (background tasks)",
        broker_defaults=BROKER_URL_DEFAULTS,
    ),
    SettingsField(
        "celery_result_backend",
        "str",
        # Redis with either broker: PROGRESS, REVOKED and the API's task registry need it.
        '"redis://localhost:6379/1"',
        (
            "CELERY_BACKEND_URL",
            "CELERY_RESULT_BACKEND_URL",
            "RESULT_BACKEND",
            "CELERY_BACKEND",
        ),
    ),
)


def _app_dir(ctx: Mapping[str, object]) -> str:
    """The source folder (src layout) that must be on PYTHONPATH, or ''."""
    target = str(ctx.get("app_target", ""))
    _, found, rest = target.partition("--app-dir ")
    return rest.split()[0] if found and rest.split() else ""


def _next_steps(ctx: Mapping[str, object]) -> RunnerSteps:
    app = f"{ctx['tasks_module']}.celery_app"
    source = _app_dir(ctx)
    env = f"PYTHONPATH={source} " if source else ""
    tests_dir = ctx.get("tests_dir")
    return RunnerSteps(
        processes=(
            f"{env}celery -A {app} worker --loglevel=info",
            f"{env}celery -A {app} beat --loglevel=info",
            f"uvicorn {ctx.get('app_target', 'app.main:app')} --reload",
        ),
        tests=(f"{env}pytest {tests_dir}/test_bgtasks_celery.py",) if tests_dir else (),
        tests_why="the scaffold's own tests: they need the broker and result backend of "
        "the settings, skipped without them",
        # the password stays out of `ps` via the environment variable
        monitoring=(
            "flower",
            f'FLOWER_BASIC_AUTH="admin:<a-long-random-password>" {env}celery -A {app} flower',
        ),
    )


SPEC = RunnerSpec(
    name="celery",
    summary="Celery: worker processes with retries, beat schedules, progress and cancel",
    use_when="Production workloads, scheduled tasks (beat), monitoring (Flower)",
    caveats=(
        "needs a broker (Redis or RabbitMQ) and a Redis result backend running",
        "no asyncio API: the generated endpoints are plain def (threadpool)",
        "celery 5.7 (kombu[redis] needs redis>=6.4) cannot share an environment with "
        "arq (redis<6); beside arq use celery[redis]>=5.6,<5.7",
    ),
    settings_fields=(*CELERY_FIELDS, *SMTP_FIELDS),
    router_file="tasks",
    dependencies=(
        "celery[redis]>=5.7,<5.8",
        "pydantic-settings>=2.0",
        "email-validator>=2.0",
    ),
    next_steps=_next_steps,
    tasks_file="tasks.py",
    scaffold_tasks=(
        "send_email",
        "process_order",
        "cleanup_expired_tokens",
        "send_daily_reports",
        "long_running",
    ),
    test_file="test_bgtasks_celery.py",
    schedule_kind="beat",
    worker_file="celery_app.py",
    # the hard limit (timeout + 60 s) stays within TASK_TIME_LIMIT, which the Redis
    # visibility timeout and RabbitMQ's consumer timeout are sized from
    max_timeout=300,
)

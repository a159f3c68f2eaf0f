"""Celery: a separate worker process, Redis or RabbitMQ as broker, Redis for results."""

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
    TemplateInputs,
)
from bgtasks_gen.runners.fields import (
    AUTH_FIELDS,
    INBOX_FIELDS,
    SMTP_FIELDS,
    result_retention_field,
)

# celery 5.7 (kombu 5.7's [redis] extra) needs redis-py >= 6.4; arq 0.28 needs redis-py < 6.
# One release back they meet: celery 5.6.3 / kombu 5.6.2 accept redis 5.x.
CELERY_BESIDE_ARQ = "celery[redis]>=5.6,<5.7"
WHY_CELERY_56 = (
    "celery 5.7 needs redis-py >= 6.4 and arq needs redis-py < 6, so beside arq "
    f"bgtasks adds {CELERY_BESIDE_ARQ} (celery 5.6.3 and kombu 5.6.2 accept redis-py 5)"
)
# a declared celery requirement that keeps it at 5.6 or older (arq can go beside it)
PINS_CELERY_56 = r"<\s*5\.7|==\s*5\.[0-6]|~=\s*5\.6"
PIN_RULES = (
    PinRule("celery", "arq", replace_with=CELERY_BESIDE_ARQ, note=WHY_CELERY_56),
    PinRule(
        "celery",
        "redis",
        when=r"<\s*6(\.0)*\b|==\s*[2-5]\.|~=\s*[2-5]\.",
        replace_with=CELERY_BESIDE_ARQ,
        note="the project pins {declared}: celery 5.7 needs redis-py >= 6.4, so "
        f"bgtasks adds {CELERY_BESIDE_ARQ} (celery 5.6.3 accepts redis-py 5)",
    ),
)

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
        tests=(
            f"{env}pytest {tests_dir}/test_bgtasks_celery.py "
            f"{tests_dir}/test_bgtasks_celery_publish.py",
        )
        if tests_dir
        else (),
        tests_why="the scaffold's own tests: they need the broker and result backend of "
        "the settings, skipped without them",
        # the password stays out of `ps` via the environment variable
        monitoring=(
            "flower",
            f'FLOWER_BASIC_AUTH="admin:<a-long-random-password>" {env}celery -A {app} flower',
        ),
    )


def _template_context(inputs: TemplateInputs) -> Mapping[str, object]:
    """celery_56: whether the project gets (or pins) celery 5.6 rather than 5.7, beside arq
    or a redis-py < 6 pin. The generated config differs (5.6 lacks
    task_retry_on_worker_lost)."""
    from bgtasks_gen.deps import caps_below, choose_requirements, requirement_name

    pinned = [r for r in inputs.declared if requirement_name(r) == "celery"]
    if pinned:
        return {"celery_56": any(caps_below(r, "5.7") for r in pinned)}
    chosen, _ = choose_requirements(
        list(SPEC.dependencies_for(inputs.broker)), list(inputs.declared)
    )
    return {"celery_56": CELERY_BESIDE_ARQ in chosen}


SPEC = RunnerSpec(
    name="celery",
    summary="Celery: worker processes with retries, beat schedules, progress and cancel",
    use_when="Production workloads, scheduled tasks (beat), monitoring (Flower)",
    caveats=(
        "needs a broker (Redis or RabbitMQ) and a Redis result backend running",
        "no asyncio API: the queue endpoints publish with redis.asyncio (Redis broker) "
        "or in the threadpool (RabbitMQ); status and cancel are plain def (threadpool)",
        "celery 5.7 (kombu[redis] needs redis>=6.4) cannot share an environment with "
        "arq (redis<6); beside arq use celery[redis]>=5.6,<5.7",
    ),
    settings_fields=(
        *CELERY_FIELDS,
        *SMTP_FIELDS,
        *AUTH_FIELDS,
        *INBOX_FIELDS,
        result_retention_field(24 * 60 * 60),
    ),
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
    brokers=("redis", "rabbitmq"),
    pin_rules=PIN_RULES,
    detection=Detection("celery", call="celery.Celery"),
    template_context=_template_context,
    cron_reader="crontab",
    restart=("the celery worker", "the celery worker and beat (the new schedule)"),
    dev_processes=(
        DevProcess("worker", ("celery", "-A", "{worker_module}", "worker", "--loglevel=info")),
    ),
    task_shape=TaskShape(decorators=("*.task", "shared_task")),
    capabilities=frozenset({"celery-inspect", "celery-beat"}),
    untyped_packages=("celery",),
    extra_test_files=("test_bgtasks_celery_publish.py",),
    email_route="/tasks/send-email",
)

"""FastAPI's own BackgroundTasks: no broker, no worker, no durability."""

from __future__ import annotations

from collections.abc import Mapping

from bgtasks_gen.runners.base import RunnerSpec, RunnerSteps
from bgtasks_gen.runners.fields import AUTH_FIELDS, SMTP_FIELDS


def _next_steps(ctx: Mapping[str, object]) -> RunnerSteps:
    return RunnerSteps(
        processes=(f"uvicorn {ctx['app_target']} --reload",),
        tests=(f"pytest {ctx['tests_dir']}/test_bgtasks_builtin.py",),
    )


SPEC = RunnerSpec(
    name="builtin",
    summary="FastAPI BackgroundTasks: runs after the response, in the web process",
    use_when="Simple, quick tasks",
    caveats=(
        "not durable: tasks are lost when the process stops or is redeployed",
        "never retried; tasks of one request run one after another",
        "no status, progress or cancel: use celery, arq or taskiq when you need them",
    ),
    settings_fields=(*SMTP_FIELDS, *AUTH_FIELDS),
    router_file="notifications",
    dependencies=("fastapi>=0.110", "pydantic-settings>=2.0", "email-validator>=2.0"),
    next_steps=_next_steps,
    tasks_file="notifications.py",
    scaffold_tasks=("process_notification", "send_email"),
    other_task_files=("email.py",),
    test_file="test_bgtasks_builtin.py",
    # BackgroundTasks never retry a task and have no time limit
    retries_and_timeouts=False,
    email_route="/notifications/send-email",
    access_module="auth",
)

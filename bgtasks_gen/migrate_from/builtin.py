"""Moving off FastAPI's BackgroundTasks (to celery, taskiq or arq).

The builtin scaffold's tasks are plain functions run in the web process. On the queue
runner each becomes a task of the worker:
- an added task is carried with its options; an edited body line for line, under the
  target's signature with the user's own return annotation (a body that returns nothing
  stays so), and as a plain `def` on taskiq when it was one (taskiq runs it in its
  thread pool, as Starlette ran it). arq runs coroutine functions only: a plain body
  goes into a private function beside the task, which awaits it in a thread. Celery
  runs no `async def` body: refused naming the line.
- the scaffold's process_notification has no counterpart on the queue runners: it moves
  as an added task (`user_id`, `message`), its body kept when edited.
- a name the body uses that the target's tasks module does not define (an import the
  builtin module had) is refused naming the line: import it inside the function first.

The HTTP surface stays the builtin one unless `--api-shape new`: builtin's router module
is rewritten into routes at the same paths (prefix, request bodies, 202 with `status`,
`detail`, `duplicate`) that queue through the target's router and add its `task_id` and
`status_url` to the answer; the app's include of it stays as it is. That module is the
user's from then on (the state file does not list it).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import PurePosixPath

from bgtasks_gen.addtask import Project, _Edits
from bgtasks_gen.migrate_from import (
    KEPT_SHAPE,
    BodyContext,
    Carried,
    Source,
    undefined_names,
)
from bgtasks_gen.patch.definitions import definition_code
from bgtasks_gen.plan import Action, FileChange, Plan, read_existing
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.state import BASE_DIR, COMMON_API_SHAPE

# the builtin scaffold's task with no counterpart on the queue runners, moved as an
# added task with these options (the route's request body)
NOTIFICATION_TASK = "process_notification"
NOTIFICATION_OPTIONS: Mapping[str, object] = {
    "args": ["user_id:int", "message:str"],
    "cron": "",
    "every": 0,
    "retries": 3,
    "timeout": 300,
    "route": True,
    "order": 0,
}
# the module of each target that defines the recipient check the email routes use
RECIPIENT_CHECK = {"celery": "mailer", "taskiq": "taskiq_tasks", "arq": "arq_tasks"}


class BuiltinSource(Source):
    name = "builtin"
    targets = ("arq", "celery", "taskiq")

    def __init__(self) -> None:
        # the edited bodies seen, checked against the target's module once it is planned
        self._bodies: list[BodyContext] = []

    def translate_body(self, body: BodyContext, problems: list[str]) -> list[str] | None:
        function = body.function
        if isinstance(function, ast.AsyncFunctionDef) and body.target.name == "celery":
            problems.append(
                f"task {body.name!r}, {body.where(function.lineno)}: an `async def`; "
                "celery runs plain functions (make it a plain def first)"
            )
            return None
        self._bodies.append(body)
        return body.lines[body.first : function.end_lineno]

    def carried_header(
        self, function: ast.AsyncFunctionDef | ast.FunctionDef, text: str
    ) -> tuple[str | None, bool]:
        returns = ast.get_source_segment(text, function.returns) if function.returns else ""
        return returns or "", isinstance(function, ast.FunctionDef)

    def scaffold_tasks(
        self, project: Project, edits: _Edits, target: RunnerSpec, problems: list[str]
    ) -> list[tuple[Carried, str]]:
        rel = project.tasks_file
        text = edits.get(rel)
        base = read_existing(project.root, f"{BASE_DIR}/{rel}.base") or ""
        generated = definition_code(base, [NOTIFICATION_TASK]) if base else None
        current = definition_code(text, [NOTIFICATION_TASK])
        options = {**NOTIFICATION_OPTIONS, "runner": self.name}
        if generated is None:
            problems.append(
                f"{rel}: no pristine copy of {NOTIFICATION_TASK} in {BASE_DIR} to compare it with"
            )
            return []
        if current is None:
            problems.append(
                f"{NOTIFICATION_TASK} is gone from {rel}; the builtin /process route "
                "queued it (restore it, or remove the route's call first)"
            )
            return []
        # the check of the module as generated that follows sees only other edits
        edits.set(rel, text.replace(current, generated, 1))
        return [(Carried(NOTIFICATION_TASK, options, None), generated)]

    def kept_shape(self, project: Project, api_shape: str) -> str:
        # the target's router answers on the common surface; the builtin routes, when
        # kept, are their own module
        return COMMON_API_SHAPE

    def keeps_include(self, api_shape: str) -> bool:
        return api_shape == KEPT_SHAPE

    def adjust(
        self,
        plan: Plan,
        project: Project,
        moved: Project,
        carried: list[Carried],
        api_shape: str,
        problems: list[str],
    ) -> set[str]:
        self._refuse_undefined_names(plan, moved, problems)
        if api_shape != KEPT_SHAPE:
            return set()
        rel = project.router_file
        target = moved.spec
        text = kept_routes(project, moved, [c for c in carried if c.options.get("route", True)])
        from bgtasks_gen.addtask import _project_style

        text = _project_style(moved).apply(rel, text)
        old = read_existing(project.root, rel)
        plan.changes[:] = [c for c in plan.changes if c.path != rel]
        action = Action.CREATE if old is None else Action.PATCH
        note = f"builtin's routes, now queueing on {target.name} (yours from now on)"
        plan.changes.append(FileChange(rel, action, old, text, note))
        return {rel}

    def _refuse_undefined_names(self, plan: Plan, moved: Project, problems: list[str]) -> None:
        """A body that uses a name the target's tasks module does not define would fail
        with NameError on the worker."""
        problems += undefined_names(plan, moved, self._bodies, "import it inside the function")

    def notes(self, project: Project, target: RunnerSpec, api_shape: str) -> list[str]:
        notes = [
            f"{NOTIFICATION_TASK} is a task of {target.name}'s now, listed as added "
            "(`bgtasks list`); BackgroundTasks kept nothing queued: nothing to drain"
        ]
        if api_shape == KEPT_SHAPE:
            notes.append(
                f"{project.router_file} keeps builtin's routes and answers (plus task_id "
                f"and status_url), queueing on {target.name}; it is yours now: delete it "
                "and its include once clients call the task router's routes "
                "(`--api-shape new` moves without it)"
            )
        return notes


# -- the kept routes


def kept_routes(project: Project, moved: Project, tasks: list[Carried]) -> str:
    """builtin's router module, as routes at its paths that queue on the target."""
    target = moved.spec
    routes = str(project.layout["routes_module"])
    tasks_module = str(project.layout["tasks_module"])
    queue_module = f"{routes}.{target.router_file}"
    legacy = bool(project.layout.get("legacy_typing", False))
    article = "an" if target.name[:1] in "aeiou" else "a"
    first_party = sorted(
        [
            f"from {routes} import {target.router_file} as queue",
            f"from {tasks_module}.{RECIPIENT_CHECK[target.name]} import checked_recipient",
        ],
        key=str.lower,
    )
    typing = "Annotated, Any, Literal, Optional" if legacy else "Annotated, Any, Literal"
    email = (
        "    email: Optional[Recipient] = None  # noqa: UP045\n"
        if legacy
        else "    email: Recipient | None = None\n"
    )
    added = "".join(
        _task_route(task.name, bool(task.options.get("args")))
        for task in tasks
        if task.name != NOTIFICATION_TASK
    )
    return f'''"""The routes the builtin scaffold answered, kept by `bgtasks migrate` so that its
clients keep working: the same paths, request bodies and 202 answer (`status`, `detail`,
`duplicate`). Each now queues {article} {target.name} task through the task router's route,
with its checks (access, body limits, email rate, Idempotency-Key), and the answer adds
the task's `task_id` and `status_url` (GET it for the outcome). The task router:
{queue_module}.

Written once by the move, yours from then on: delete this module and its include_router
once no client calls these paths; the task router serves the same tasks under its own
prefix.
"""

from typing import {typing}

from fastapi import APIRouter, Depends, Request, Response
from pydantic import AfterValidator, BaseModel, EmailStr, Field

{chr(10).join(first_party)}

router = APIRouter(
    prefix="/{_builtin_prefix(project)}",
    tags=["notifications"],
    dependencies=[Depends(queue.remember_caller)],
    route_class=queue.BoundedRoute,
    responses=queue.errors(401),
)

Recipient = Annotated[EmailStr, AfterValidator(checked_recipient)]


class NotificationRequest(BaseModel):
    user_id: int = Field(ge=1)
    message: str = Field(min_length=1, max_length=2_000)
    # also email the user when given
{email}

class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str
    duplicate: bool = False  # true: a repeated Idempotency-Key, nothing queued again
    task_id: str
    status_url: str  # where to read the task's status


# a repeated Idempotency-Key: the first task, nothing queued again
DUPLICATE: dict[str, Any] = {{
    "model": Accepted,
    "description": "Already queued with this Idempotency-Key: that task",
}}


def accepted(answer: queue.TaskAccepted, detail: str) -> Accepted:
    return Accepted(
        detail=detail,
        duplicate=answer.duplicate,
        task_id=answer.task_id,
        status_url=answer.status_url,
    )


@router.post(
    "/send-email",
    status_code=202,
    summary="Queue an email",
    dependencies=[Depends(queue.limit_email_rate)],
    responses={{200: DUPLICATE, **queue.errors(413, 415, 429)}},
)
async def send_email_later(
    payload: queue.EmailRequest,
    request: Request,
    response: Response,
    idempotency_key: queue.IdempotencyKey = None,
) -> Accepted:
    """Queue an email."""
    answer = await queue.queue_send_email(
        payload,
        request,
        response,
        idempotency_key,
    )
    return accepted(answer, "the email will be sent after this response")


@router.post(
    "/process",
    status_code=202,
    summary="Queue a notification",
    responses={{200: DUPLICATE, **queue.errors(413, 415, 429)}},
)
async def process_later(
    payload: NotificationRequest,
    request: Request,
    response: Response,
    idempotency_key: queue.IdempotencyKey = None,
) -> Accepted:
    """Queue a notification, and its copy by email when an address is given (the same
    Idempotency-Key queues each at most once)."""
    if payload.email is not None:
        await queue.limit_email_rate(request)  # the copy counts like any other email
    answer = await queue.queue_process_notification(
        queue.ProcessNotificationRequest(
            user_id=payload.user_id,
            message=payload.message,
        ),
        request,
        response,
        idempotency_key,
    )
    if payload.email is not None:
        copy = queue.EmailRequest(
            to=payload.email,
            subject="New notification",
            body=payload.message,
        )
        await queue.queue_send_email(copy, request, Response(), idempotency_key)
    return accepted(answer, "the notification will be processed after this response")
{added}'''


def _builtin_prefix(project: Project) -> str:
    """The prefix builtin's router was served under (its own `prefix="..."`)."""
    import re

    base = read_existing(project.root, f"{BASE_DIR}/{project.router_file}.base") or ""
    found = re.search(r'prefix="/([^"]*)"', base)
    return found.group(1) if found else PurePosixPath(project.router_file).stem


def _task_route(name: str, takes_body: bool) -> str:
    words = name.split("_")
    path, model = "-".join(words), "".join(w.capitalize() for w in words) + "Request"
    return f'''

@router.post(
    "/{path}",
    status_code=202,
    summary="Queue {name.replace("_", " ")}",
    responses={{200: DUPLICATE, **queue.errors(413, 415)}},
)
async def {name}_later(
{{payload}}    request: Request,
    response: Response,
    idempotency_key: queue.IdempotencyKey = None,
) -> Accepted:
    """Queue {name}."""
    answer = await queue.queue_{name}(
{{argument}}        request,
        response,
        idempotency_key,
    )
    return accepted(answer, "{name} queued")
'''.replace("{payload}", f"    payload: queue.{model},\n" if takes_body else "").replace(
        "{argument}", "        payload,\n" if takes_body else ""
    )

"""Errors to Sentry (`--with sentry`): the web process's and the tasks' exceptions.

On when the `SENTRY_DSN` setting is a DSN (environment variable
`SENTRY_DSN`); empty, nothing is set up and nothing is sent. sentry-sdk
reads SENTRY_ENVIRONMENT and SENTRY_RELEASE itself. Set up once per process by
set_up: the web process (FastAPI's and Starlette's integrations, which sentry-sdk
turns on by itself when it finds them), and the worker at its broker's startup
(ErrorReportingMiddleware reports each task that failed for good).

Each event from a task is tagged with `task_name` and `task_id`. A task's arguments are
never sent: they may be personal data (an email's address, subject and text). So no
local variables in stack traces, no request bodies, no job arguments or log record
fields (`extra`), no breadcrumb data, and before anything is sent every string of the
event has the current task's argument values and anything shaped like an email address
replaced. send_default_pii stays off (no cookies, no client IP, no user).
"""

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import sentry_sdk
from sentry_sdk.types import Event, Hint
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

from app.core.config import settings

# what stands in the event for a task's argument, and for an email address
PRIVATE = "[private]"
ADDRESS = "[address]"
# shorter argument values are not searched for (a flag, a count): too common to tell
MIN_PRIVATE_CHARS = 3
EMAIL_ADDRESS = re.compile(r"[^\s@<>()\[\]{}'\",;:]+@[^\s@<>()\[\]{}'\",;:]+")

_set_up_lock = threading.Lock()
_set_up_role: list[str] = []
_enabled = False
# the argument values of the task running in this context (thread or asyncio task)
_private_values: ContextVar[tuple[str, ...]] = ContextVar(
    "bgtasks_private_values", default=()
)


def set_up(role: str) -> None:
    """Start reporting for this process when the DSN setting is set; `role` ("web",
    "worker") is the `process` tag of its events. The first call decides; later ones do
    nothing."""
    global _enabled
    with _set_up_lock:
        if _set_up_role:
            return
        _set_up_role.append(role)
        dsn = (settings.SENTRY_DSN or "").strip()
        if not dsn:
            return
        sentry_sdk.init(
            dsn=dsn,
            send_default_pii=False,
            include_local_variables=False,  # a frame's locals hold the task's arguments
            max_request_body_size="never",
            before_send=scrubbed,
            before_send_transaction=scrubbed,
        )
        sentry_sdk.get_global_scope().set_tag("process", role)
        _enabled = True


def enabled() -> bool:
    return _enabled


def tag_task(
    name: str,
    task_id: str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Tag the events of the task running now, and keep its arguments out of them.
    The tags go on the scope of the task's own that task_scope opens."""
    if not _enabled:
        return
    scope = sentry_sdk.get_isolation_scope()
    scope.set_tag("task_name", name)
    scope.set_tag("task_id", task_id)
    _private_values.set(tuple(_strings([*args, *(kwargs or {}).values()])))


def forget_task() -> None:
    """The task of this context has ended: its arguments are no longer searched for."""
    _private_values.set(())


@contextlib.contextmanager
def task_scope(
    name: str,
    task_id: str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A scope of the task's own: what is reported inside carries its tags."""
    if not _enabled:
        yield
        return
    with sentry_sdk.isolation_scope():
        tag_task(name, task_id, args, kwargs)
        try:
            yield
        finally:
            forget_task()


def capture_task_error(error: BaseException) -> None:
    """Report a task's exception (inside its scope: see tag_task and task_scope)."""
    if _enabled:
        sentry_sdk.capture_exception(error)


def _strings(values: Iterable[Any]) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            if len(value) >= MIN_PRIVATE_CHARS:
                yield value
        elif isinstance(value, Mapping):
            yield from _strings(value.keys())
            yield from _strings(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            yield from _strings(value)


def scrubbed(event: Event, hint: Hint) -> Event | None:
    """before_send: take out of the event what may carry a task's arguments."""
    del hint
    fields: dict[str, Any] = event  # type: ignore[assignment]
    # the integrations' job arguments (already filtered), log records' own fields
    fields.pop("extra", None)
    request = fields.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string"):
            request.pop(key, None)
    breadcrumbs = fields.get("breadcrumbs")
    crumbs = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in crumbs if isinstance(crumbs, list) else []:
        if isinstance(crumb, dict):
            crumb.pop("data", None)
    private = sorted(set(_private_values.get()), key=len, reverse=True)
    _replace_strings(fields, private)
    return event


def _replace_strings(value: Any, private: list[str]) -> Any:
    """`value` with each string cleaned; dicts and lists are cleaned in place."""
    if isinstance(value, str):
        for text in private:
            value = value.replace(text, PRIVATE)
        return EMAIL_ADDRESS.sub(ADDRESS, value)
    if isinstance(value, dict):
        for key in value:
            if key == "vars":
                # a frame's locals: never sent (include_local_variables is off)
                value[key] = {}
            else:
                value[key] = _replace_strings(value[key], private)
    elif isinstance(value, list):
        value[:] = [_replace_strings(item, private) for item in value]
    elif isinstance(value, tuple):
        return tuple(_replace_strings(item, private) for item in value)
    return value


class ErrorReportingMiddleware(TaskiqMiddleware):
    """Starts reporting with the broker (in the worker; the web app does in its
    lifespan), and reports each task that failed for good, in a scope of its own
    tagged with its name and id. A retried run is not reported: BackoffRetryMiddleware
    has replaced its error by then, as with the failed-task inbox; nor are the errors
    of `ignored` (a cancel that was asked for)."""

    def __init__(self, ignored: tuple[type[BaseException], ...] = ()) -> None:
        super().__init__()
        self._ignored = ignored
        self._scopes: dict[str, contextlib.ExitStack] = {}

    async def startup(self) -> None:
        if self.broker.is_worker_process:
            set_up("worker")

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        if _enabled:
            # each message runs in an asyncio task of its own: the scope is its own
            scope = contextlib.ExitStack()
            scope.enter_context(
                task_scope(
                    message.task_name, message.task_id, message.args, message.kwargs
                )
            )
            self._scopes[message.task_id] = scope
        return message

    async def post_execute(
        self, message: TaskiqMessage, result: TaskiqResult[Any]
    ) -> None:
        scope = self._scopes.pop(message.task_id, None)
        if scope is None:
            return
        with scope:
            error = result.error if result.is_err else None
            if error is not None and not isinstance(error, self._ignored):
                capture_task_error(error)

"""Queue Celery tasks, read their status, cancel them.

Celery's client API blocks (publishing, reading the result backend, revoke), so every
endpoint here is a plain `def`: FastAPI runs it in its threadpool, never on the event
loop.

Cancel is `DELETE /tasks/cancel/{task_id}`:
- queued (PENDING) or waiting to retry (RETRY): revoked without terminate; it never
  runs. Answers 200 with state REVOKED.
- running (STARTED, PROGRESS): a cancel flag is set. A task that checks it between
  steps (long_running) stops at its next check and ends REVOKED; any other finishes
  the run it is in but is never retried or re-run. Answers 202 with the state now.
- finished (SUCCESS, FAILURE, REVOKED): nothing to do. Answers 409 with that state.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute).
"""

import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from celery import states
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from kombu.exceptions import OperationalError
from pydantic import AfterValidator, BaseModel, EmailStr, Field, ValidationError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from app.tasks import mailer, registry
from app.tasks import tasks as celery_tasks
from app.tasks.celery_app import (
    REDELIVERY_DELAY,
    RESULT_EXPIRES,
    celery_app,
)

logger = logging.getLogger(__name__)

# Per client address (behind a proxy: the proxy's, unless uvicorn runs with
# --proxy-headers). An open email endpoint is a spam relay.
EMAIL_RATE_LIMIT = 20
EMAIL_RATE_WINDOW_SECONDS = 60
# The largest request body read (413 beyond). The largest valid one is an email of
# 10 000 characters, which a client escaping every character as \uXXXX (12 bytes for
# an emoji's surrogate pair) sends as about 120 kB.
MAX_BODY_BYTES = 128 * 1024

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def require_task_access(request: Request) -> None:
    """Decide who may queue, inspect and cancel tasks; raise HTTPException to refuse.

    Every route of this router depends on it. As generated it lets every request
    through: replace the body with your project's check (your current-user dependency,
    an API key header, ...) before these routes are reachable from outside.
    """
    return None


def limit_email_rate(request: Request) -> None:
    """Refuse more than EMAIL_RATE_LIMIT emails per client and window (429)."""
    client = request.client.host if request.client else "unknown"
    with _service_errors():
        count = registry.hit(f"email:{client}", EMAIL_RATE_WINDOW_SECONDS)
    if count > EMAIL_RATE_LIMIT:
        raise HTTPException(status_code=429, detail="Too many emails, try again later")


class BoundedRoute(APIRoute):
    """The route class of this router: a bounded request body, 422s without input.

    FastAPI reads the whole body before it runs any dependency, so no dependency can
    bound it, and a router cannot own middleware: this class reads the body first, at
    most MAX_BODY_BYTES of it, and answers 413 beyond (from Content-Length, or while a
    chunked body streams in). Its validation errors keep `loc`, `msg` and `type` but
    drop `input`: that can be as large as the body, hold an address, or be a number
    JSON cannot carry (1e400 parses as inf, and rendering it would fail with a 500).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def bounded_handler(request: Request) -> Response:
            body = await _read_bounded_body(request)
            replayed = Request(request.scope, _replay(body, request.receive))
            try:
                return await handle(replayed)
            except RequestValidationError as exc:
                errors = [
                    {key: value for key, value in error.items() if key != "input"}
                    for error in exc.errors()
                ]
                raise RequestValidationError(errors) from None

        return bounded_handler


def _too_large() -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"Request body larger than {MAX_BODY_BYTES} bytes"
    )


async def _read_bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()  # refused before a byte of it is read
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(status_code=400, detail="Incomplete request body") from None
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands out `body` once, then waits as the server's does."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


router = APIRouter(
    prefix="/tasks",
    tags=["tasks"],
    dependencies=[Depends(require_task_access)],
    route_class=BoundedRoute,
)


class EmailRequest(BaseModel):
    # Headers: one line each, also once encoded words are decoded (see the mailer).
    to: Annotated[EmailStr, AfterValidator(mailer.checked_recipient)]
    subject: Annotated[
        str, Field(min_length=1, max_length=200), AfterValidator(mailer.checked_subject)
    ]
    body: str = Field(min_length=1, max_length=10_000)


class QueuedTask(BaseModel):
    task_id: str
    state: str
    status_url: str


class Progress(BaseModel):
    current: int
    total: int
    percent: int


class TaskStatus(BaseModel):
    task_id: str
    state: str
    progress: Progress | None = None
    result: Any = None
    # FAILURE only: the exception's type name; messages and tracebacks stay private.
    error: str | None = None
    # STARTED/PROGRESS whose worker is gone: the state is the last one it wrote, and
    # the message is delivered again (the task re-runs) by redelivery_due_at.
    lost: bool = False
    redelivery_due_at: datetime | None = None


class CancelResult(BaseModel):
    task_id: str
    state: str
    action: Literal["revoked", "cancel_requested", "none"]


@contextlib.contextmanager
def _service_errors() -> Iterator[None]:
    """Turn an unreachable broker or Redis into a 503 without echoing the error."""
    try:
        yield
    except (OperationalError, RedisError, OSError):
        logger.exception("task queue unavailable")
        raise HTTPException(
            status_code=503, detail="Task queue unavailable, try again later"
        ) from None


def _enqueue(
    request: Request, task: Any, kwargs: dict[str, Any], **options: Any
) -> QueuedTask:
    task_id = str(uuid.uuid4())
    with _service_errors():
        # Recorded before publishing, so a status call can never race the record.
        registry.remember(task_id, ttl=RESULT_EXPIRES)
        try:
            task.apply_async(kwargs=kwargs, task_id=task_id, **options)
        except Exception:
            registry.forget(task_id)
            raise
    return QueuedTask(
        task_id=task_id,
        state=states.PENDING,
        status_url=request.url_for("bgtasks_task_status", task_id=task_id).path,
    )


def _check_issued(task_id: str) -> None:
    # Celery answers PENDING for any id, even one it never saw; ours are recorded.
    if not registry.was_issued(task_id):
        raise HTTPException(status_code=404, detail="Unknown task id")


def _error_name(result: object) -> str:
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, dict) and isinstance(result.get("exc_type"), str):
        return str(result["exc_type"])
    return "Error"


def _status(task_id: str, meta: dict[str, Any]) -> TaskStatus:
    state = str(meta.get("status", states.PENDING))
    result = meta.get("result")
    status = TaskStatus(task_id=task_id, state=state)
    if state == "PROGRESS":
        with contextlib.suppress(ValidationError):
            status.progress = Progress.model_validate(result)
    elif state == states.SUCCESS:
        status.result = result
    elif state == states.FAILURE:
        status.error = _error_name(result)
    if state in (states.STARTED, "PROGRESS"):
        _check_alive(status)
    return status


def _check_alive(status: TaskStatus) -> None:
    # A running task refreshes its alive key (see liveness.py); a worker killed
    # outright leaves its last state behind, which would read as still running.
    alive, started_at = registry.liveness(status.task_id)
    if alive:
        return
    status.lost = True
    if started_at is not None:
        due = started_at + REDELIVERY_DELAY
        status.redelivery_due_at = datetime.fromtimestamp(due, tz=UTC)


@router.post(
    "/send-email",
    status_code=202,
    name="bgtasks_send_email",
    dependencies=[Depends(limit_email_rate)],
)
def queue_send_email(payload: EmailRequest, request: Request) -> QueuedTask:
    """Queue an email; poll status_url for the outcome."""
    # send_email ignores results by default; keep this one so its status can be read.
    return _enqueue(
        request,
        celery_tasks.send_email,
        {"to": str(payload.to), "subject": payload.subject, "body": payload.body},
        ignore_result=False,
    )


@router.post("/process-order/{order_id}", status_code=202, name="bgtasks_process_order")
def queue_process_order(
    order_id: Annotated[int, Path(ge=1, le=2**63 - 1)], request: Request
) -> QueuedTask:
    return _enqueue(request, celery_tasks.process_order, {"order_id": order_id})


@router.post("/long-running", status_code=202, name="bgtasks_long_running")
def queue_long_running(
    request: Request,
    steps: Annotated[int, Query(ge=1, le=celery_tasks.MAX_STEPS)] = 100,
) -> QueuedTask:
    """Queue a task that reports PROGRESS (current, total, percent) while it runs."""
    return _enqueue(request, celery_tasks.long_running, {"steps": steps})


@router.get("/status/{task_id}", name="bgtasks_task_status")
def task_status(task_id: TaskId) -> TaskStatus:
    """PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE or REVOKED; 404: unknown.

    A STARTED or PROGRESS task whose worker died says `"lost": true` and when it will
    be delivered again (`redelivery_due_at`).
    """
    with _service_errors():
        _check_issued(task_id)
        # One read of the stored meta: state and result come from the same snapshot.
        meta = celery_app.backend.get_task_meta(task_id)
        return _status(task_id, meta)


@router.delete("/cancel/{task_id}", name="bgtasks_cancel_task")
def cancel_task(task_id: TaskId, response: Response) -> CancelResult:
    """Cancel a queued task (revoke) or ask a running one to stop (cancel flag)."""
    with _service_errors():
        _check_issued(task_id)
        # The flag goes first: a worker that picks the task up after this point skips
        # it, even one that was not running when revoke() was broadcast.
        registry.request_cancel(task_id, ttl=RESULT_EXPIRES)
        state = celery_app.backend.get_task_meta(task_id, cache=False).get("status")
        if state in states.READY_STATES:
            response.status_code = 409
            return CancelResult(task_id=task_id, state=str(state), action="none")
        if state in (states.PENDING, states.RECEIVED, states.RETRY):
            # No terminate: that would kill whatever the worker process runs by then.
            celery_app.control.revoke(task_id)
            # Not started when the flag was set, so it can never run: say so now
            # rather than leave PENDING until a worker discards the message.
            celery_app.backend.mark_as_revoked(task_id, reason="cancelled")
            return CancelResult(task_id=task_id, state=states.REVOKED, action="revoked")
    response.status_code = 202
    return CancelResult(task_id=task_id, state=str(state), action="cancel_requested")


class ResizeImageRequest(BaseModel):
    image_id: int
    sizes: list[int]


@router.post("/resize-image", status_code=202, name="bgtasks_resize_image")
def queue_resize_image(
    payload: ResizeImageRequest,
    request: Request,
) -> QueuedTask:
    """Queue resize_image; poll status_url for the outcome."""
    return _enqueue(
        request,
        celery_tasks.resize_image,
        payload.model_dump(),
    )


@router.post("/nightly-report", status_code=202, name="bgtasks_nightly_report")
def queue_nightly_report(
    request: Request,
) -> QueuedTask:
    """Queue nightly_report; poll status_url for the outcome."""
    return _enqueue(
        request,
        celery_tasks.nightly_report,
        {},
    )

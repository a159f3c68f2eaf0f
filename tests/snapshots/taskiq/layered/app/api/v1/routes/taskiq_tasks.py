"""HTTP API for the taskiq tasks: queue, status, cancel (added by bgtasks).

Every task id the API hands out is recorded in Redis (see taskiq_app.status_key):
status and cancel answer 404 for any other id, and for one whose record expired (an
hour after the task finished). A POST must say `Content-Type: application/json` (415
otherwise; a route without a body takes `{}`).

Who may call these routes is decided by `authorize_task_access` in app.tasks.auth,
the one place to edit: as generated, callers send `Authorization: Bearer <token>` (the
BGTASKS_API_TOKEN setting); the identity it returns scopes the email
rate limit.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, EmailStr, Field, FiniteFloat
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive
from taskiq import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from app.tasks import taskiq_tasks
from app.tasks.auth import Caller, authorize_task_access
from app.tasks.taskiq_app import (
    KEEP_PENDING,
    broker,
    redis_client,
    status_key,
)
from app.tasks.taskiq_app import lifespan as broker_lifespan

logger = logging.getLogger(__name__)

# Per caller per minute, so /send-email cannot be used as an open relay.
EMAILS_PER_MINUTE = 20
CANCEL_POLL_SECONDS = 0.2
# The largest request body read (413 beyond). The largest valid ones: 10 000 values
# written at full precision (24 characters each, with ", ") come to about 260 kB, an
# email of 20 000 characters each escaped as \uXXXX to 120 kB (240 kB for emoji).
MAX_BODY_BYTES = 256 * 1024


@contextlib.contextmanager
def queue_errors_as_503() -> Iterator[None]:
    """Turn a Redis outage into 503 for the client (and one log line), not a 500."""
    try:
        yield
    except (RedisError, OSError, SendTaskError) as exc:
        logger.warning("task queue unavailable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="task queue unavailable") from None


async def limit_email_rate(caller: Caller) -> None:
    """At most EMAILS_PER_MINUTE emails per caller per minute (429 beyond)."""
    key = f"bgtasks:email-rate:{caller}:{int(time.time() // 60)}"
    with queue_errors_as_503():
        async with redis_client() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 60)
            count, _ = await pipe.execute()
    if int(count) > EMAILS_PER_MINUTE:
        raise HTTPException(status_code=429, detail="too many emails, try again later")


class BoundedRoute(APIRoute):
    """The route class of this router: a bounded request body, 422s without input.

    FastAPI reads the whole body before it runs any dependency, so no dependency can
    bound it, and a router cannot own middleware: this class reads the body first, at
    most MAX_BODY_BYTES of it, and answers 413 beyond (from Content-Length, or while a
    chunked body streams in). Its validation errors keep `loc`, `msg` and `type` but
    drop `input`: that can be as large as the body, hold an address, or be a number
    JSON cannot carry (1e400 parses as inf, and rendering it would fail with a 500).

    A POST whose Content-Type is not JSON is refused with 415 before its body is read:
    a cross-site form or a no-cors fetch cannot send that type without a CORS preflight,
    so no other site can make a visitor's browser queue work. A route without a body
    takes an empty one (or `{}`) with that type.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def bounded_handler(request: Request) -> Response:
            if request.method == "POST" and not _is_json(request):
                raise HTTPException(
                    status_code=415, detail="Send Content-Type: application/json"
                )
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


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").partition(";")[0]
    kind, _, subtype = media_type.strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


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


class ErrorMessage(BaseModel):
    """The body of an error answer (a 422 has FastAPI's own, without the input)."""

    detail: str


ERRORS = {
    401: "Missing or invalid API token",
    404: "Unknown task id",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    429: "Too many emails, try again later",
    503: "Task queue unavailable, try again later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error codes, each with the ErrorMessage body."""
    return {
        code: {"model": ErrorMessage, "description": ERRORS[code]} for code in codes
    }


router = APIRouter(
    prefix="/taskiq-tasks",
    tags=["taskiq-tasks"],
    dependencies=[Depends(authorize_task_access)],
    route_class=BoundedRoute,
    responses=errors(401, 503),
    # the broker starts and stops with the app that includes this router
    lifespan=broker_lifespan,
)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class EmailRequest(BaseModel):
    # Headers: one line each, also once encoded words are decoded (see taskiq_tasks).
    to: Annotated[EmailStr, AfterValidator(taskiq_tasks.checked_recipient)]
    subject: Annotated[
        str,
        Field(min_length=1, max_length=200),
        AfterValidator(taskiq_tasks.checked_subject),
    ]
    body: str = Field(min_length=1, max_length=20_000)


class ProcessDataRequest(BaseModel):
    data_id: int = Field(ge=1, le=2**53)
    values: list[FiniteFloat] = Field(min_length=1, max_length=10_000)


class LongRunningRequest(BaseModel):
    steps: int = Field(default=100, ge=1, le=1000)


class TaskAccepted(BaseModel):
    task_id: str
    status: str = "queued"


class Progress(BaseModel):
    current: int
    total: int
    percent: int


class TaskStatus(BaseModel):
    task_id: str
    # queued | in_progress | retrying | complete
    status: str
    success: bool | None = None
    result: Any = None  # only when the task succeeded
    error: str | None = None  # cancelled | timed_out | failed, never the exception
    tries: int | None = None
    progress: Progress | None = None  # while a long task runs


class CancelResponse(BaseModel):
    task_id: str
    cancelled: bool
    status: str


async def _enqueue(
    task: AsyncTaskiqDecoratedTask[Any, Any], **kwargs: Any
) -> TaskAccepted:
    """Record the id as issued, then send the task under it."""
    task_id = uuid.uuid4().hex
    key = status_key(task_id)
    with queue_errors_as_503():
        async with redis_client() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": "queued", "task": task.task_name})
            pipe.expire(key, KEEP_PENDING)
            await pipe.execute()
        await task.kicker().with_task_id(task_id).kiq(**kwargs)
    return TaskAccepted(task_id=task_id)


async def _record(task_id: str) -> dict[str, str]:
    """The task's status hash; 404 for an id this app never issued (or that expired)."""
    with queue_errors_as_503():
        async with redis_client() as redis:
            raw = await redis.hgetall(status_key(task_id))
    if not raw:
        raise HTTPException(status_code=404, detail="task not found")
    return {_str(key): _str(value) for key, value in raw.items()}


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@router.post(
    "/send-email",
    status_code=202,
    dependencies=[Depends(limit_email_rate)],
    summary="Queue an email",
    responses=errors(413, 415, 429),
)
async def queue_send_email(payload: EmailRequest) -> TaskAccepted:
    return await _enqueue(
        taskiq_tasks.send_email,
        to=str(payload.to),
        subject=payload.subject,
        body=payload.body,
    )


@router.post(
    "/process-data",
    status_code=202,
    summary="Queue a batch of numbers to summarise",
    responses=errors(413, 415),
)
async def queue_process_data(payload: ProcessDataRequest) -> TaskAccepted:
    return await _enqueue(
        taskiq_tasks.process_data, data_id=payload.data_id, values=payload.values
    )


@router.post(
    "/long-running",
    status_code=202,
    summary="Queue a long task that reports progress",
    responses=errors(413, 415),
)
async def queue_long_running(payload: LongRunningRequest) -> TaskAccepted:
    return await _enqueue(taskiq_tasks.long_running_task, steps=payload.steps)


@router.get(
    "/status/{task_id}", summary="A task's state and result", responses=errors(404)
)
async def get_task_status(task_id: TaskId) -> TaskStatus:
    """The task's state, its progress while it runs, its result once it succeeded."""
    record = await _record(task_id)
    answer = TaskStatus(
        task_id=task_id,
        status=record.get("state", "queued"),
        tries=int(record["tries"]) if "tries" in record else None,
    )
    if "total" in record and answer.status == "in_progress":
        current, total = int(record.get("current", 0)), max(1, int(record["total"]))
        answer.progress = Progress(
            current=current, total=total, percent=current * 100 // total
        )
    if answer.status == "complete":
        answer.success = record.get("success") == "1"
        if not answer.success:
            answer.error = record.get("error", "failed")
        else:
            answer.result = await _result(task_id)
    return answer


async def _result(task_id: str) -> Any:
    try:
        with queue_errors_as_503():
            result = await broker.result_backend.get_result(task_id)
    except HTTPException:
        raise
    except Exception:  # expired a moment ago, or not valid JSON
        logger.warning("task %s: no readable result", task_id, exc_info=True)
        return None
    return result.return_value


@router.post(
    "/cancel/{task_id}",
    summary="Cancel a queued or running task",
    responses={
        202: {"model": CancelResponse, "description": "Asked to stop; not stopped yet"},
        409: {"model": CancelResponse, "description": "Already finished: its outcome"},
        **errors(404, 415),
    },
)
async def cancel_task(
    task_id: TaskId,
    response: Response,
    wait: Annotated[float, Query(ge=0, le=30, allow_inf_nan=False)] = 5.0,
) -> CancelResponse:
    """Cancel a task, waiting up to `wait` seconds for it to stop.

    A queued task is dropped when a worker reaches it; a running one stops at its next
    progress report (tasks that never report run to their end). 200 with
    `"cancelled": true` once this request stopped it; 409 when the task had finished
    (before the request, or first during the wait: `"cancelled"` says whether it ended
    cancelled); 202 when it has not stopped yet (the cancel stays asked for).
    """
    record = await _record(task_id)
    if record.get("state") == "complete":
        response.status_code = 409  # nothing left to stop
        return _cancel_answer(task_id, record)
    with queue_errors_as_503():
        async with redis_client() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(status_key(task_id), "cancel", "1")
            pipe.expire(status_key(task_id), KEEP_PENDING)
            await pipe.execute()
    deadline = time.monotonic() + wait
    while True:
        record = await _record(task_id)
        if record.get("state") == "complete" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(CANCEL_POLL_SECONDS)
    answer = _cancel_answer(task_id, record)
    if answer.status != "complete":
        response.status_code = 202
    elif not answer.cancelled:
        response.status_code = 409  # it finished first
    return answer


def _cancel_answer(task_id: str, record: dict[str, str]) -> CancelResponse:
    state = record.get("state", "queued")
    cancelled = state == "complete" and record.get("error") == "cancelled"
    return CancelResponse(task_id=task_id, cancelled=cancelled, status=state)

"""HTTP API for the taskiq tasks: queue, status, cancel (added by bgtasks).

Every task id the API hands out is recorded in Redis (see taskiq_app.status_key):
status and cancel answer 404 for any other id, and for one whose record expired (an
hour after the task finished). A POST must say `Content-Type: application/json` (415
otherwise; a route without a body takes `{}`).

Idempotency: send an `Idempotency-Key` header (1-64 characters of A-Z a-z 0-9 _ . -)
to queue a task at most once per caller. While that task's record exists (queued,
running, or finished within the last hour) the same request from the same caller
answers 200 with that task's id and status and `"duplicate": true`, instead of 202
and a new task. The same key from another caller is another task; the task id is a
keyed hash of caller, task and key (see scoped_task_id), never the key itself.

503 means the task was not queued: send the request again. 504 means the broker may
have received it without confirming (it hung, and runs what it was sent once it
resumes): the body names the task id with `"outcome": "unknown"`. The same request with
the same Idempotency-Key is then safe, it never queues a second task.

Who may call these routes is decided by `authorize_task_access` in app.tasks.auth,
the one place to edit: as generated, callers send `Authorization: Bearer <token>` (the
BGTASKS_API_TOKEN setting); the identity it returns scopes idempotency
keys and the email rate limit, and owns the tasks it queues (kept in the task's status
record): status and cancel answer 404, as for an unknown id, unless `may_use_task`
lets the caller use the task (as generated: only the caller who queued it; a task sent
by other code, such as a schedule, has no owner and every admitted caller may use it).

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute).

The failed-task inbox (taskiq_inbox.py) keeps every task that failed for good and every
message the worker dropped as poison, bounded by count and age. `GET /failed` lists
them newest first (`?offset=&limit=&task=`, with `total` kept and how many the limits
`dropped`), `GET /failed/{entry_id}` shows one, `POST /failed/{entry_id}/replay`
queues its task again under a new id (409 when it was replayed before:
`?force=true` queues it once more), `DELETE /failed/{entry_id}` discards it. The
arguments of a task with personal data (send_email) are shown as hidden.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    Header,
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
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive
from taskiq import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from app.tasks import taskiq_dashboard as dashboard
from app.tasks import taskiq_inbox, taskiq_tasks
from app.tasks.auth import (
    Caller,
    authorize_task_access,
    dashboard_secret,
    may_use_task,
    task_access,
)
from app.tasks.taskiq_app import (
    KEEP_PENDING,
    KEEP_RESULT,
    QueueFull,
    broker,
    record_queued,
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
# the 404 of an unknown id, and of a task the caller may not use: the same answer
UNKNOWN_ID = "Unknown task id"


@contextlib.contextmanager
def queue_errors_as_503() -> Iterator[None]:
    """Turn a Redis outage into 503 for the client (and one log line), not a 500."""
    try:
        yield
    except (RedisError, OSError, SendTaskError) as exc:
        logger.warning("task queue unavailable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="task queue unavailable") from None


async def remember_caller(request: Request, caller: Caller) -> None:
    """The router's dependency: runs the hook once per request and keeps its answer for
    the routes (see caller_of). Every dependency costs FastAPI a resolution per request,
    so the routes read the caller and the Idempotency-Key without one each."""
    request.state.bgtasks_caller = caller


def caller_of(request: Request) -> str:
    """The identity authorize_task_access returned for this request."""
    return str(request.state.bgtasks_caller)


# A plain header parameter, validated by FastAPI; scoped to the caller when queueing.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
    ),
]


async def limit_email_rate(request: Request) -> None:
    """At most EMAILS_PER_MINUTE emails per caller per minute (429 beyond)."""
    key = f"bgtasks:email-rate:{caller_of(request)}:{int(time.time() // 60)}"
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
    bound it, and a router cannot own middleware: this class answers 413 to a
    Content-Length beyond MAX_BODY_BYTES before reading a byte, and reads a body
    without one (chunked) first, at most MAX_BODY_BYTES of it (413 beyond). Its
    validation errors keep `loc`, `msg` and `type` but drop `input`: that can be as
    large as the body, hold an address, or be a number JSON cannot carry (1e400
    parses as inf, and rendering it would fail with a 500).

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
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and "transfer-encoding" not in request.headers:
                # the server hands over no more than the length declared: bounded
                # as it is, no need to read it first and replay it
                if int(declared) > MAX_BODY_BYTES:
                    raise _too_large()  # refused before a byte of it is read
            else:
                body = await _read_bounded_body(request)
                request = Request(request.scope, _replay(body, request.receive))
            try:
                return await handle(request)
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
    prefix="/tasks",
    tags=["tasks"],
    dependencies=[Depends(remember_caller)],
    route_class=BoundedRoute,
    responses=errors(401, 503),
    # the broker starts and stops with the app that includes this router
    lifespan=broker_lifespan,
)
# the task dashboard's page, its sign-in and data (taskiq_dashboard.py), first: no
# route with a path parameter answers in their place
dashboard.dashboard_routes(
    router,
    secret=dashboard_secret,
    caller=Depends(authorize_task_access),
    snapshot=dashboard.snapshot,
)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

# The HMAC secret of the task ids derived from idempotency keys: this variable (a long
# random value, the same for every web process), else one created once in Redis (then
# whoever can read Redis can read it). Changing it only means that a key sent before
# queues a new task.
SECRET_ENV = "BGTASKS_JOB_ID_SECRET"
SECRET_REDIS_KEY = "bgtasks:job-id-secret"
_secret_cache: dict[str, bytes] = {}


@dataclass(frozen=True)
class IdempotencyScope:
    """An `Idempotency-Key` header together with the caller who sent it."""

    caller: str
    key: str


async def task_id_secret() -> bytes:
    """The HMAC secret: the environment variable, else the one kept in Redis."""
    configured = os.environ.get(SECRET_ENV, "")
    if configured:
        return configured.encode()
    if SECRET_REDIS_KEY not in _secret_cache:
        async with redis_client() as redis:
            # NX: the first process to ask creates it, every other one reads that one
            await redis.set(SECRET_REDIS_KEY, secrets.token_hex(32), nx=True)
            stored = await redis.get(SECRET_REDIS_KEY)
        if not stored:
            raise RedisError(f"{SECRET_REDIS_KEY} vanished from Redis")
        _secret_cache[SECRET_REDIS_KEY] = _str(stored).encode()
    return _secret_cache[SECRET_REDIS_KEY]


def scoped_task_id(secret: bytes, task_name: str, scope: IdempotencyScope) -> str:
    """The task id for `scope`'s key sent to `task_name`: the same for the same caller,
    task and key, unrelated for any other caller; 32 hex digits, like a uuid4's."""
    # JSON keeps the three parts apart whatever characters the caller's identity holds
    message = json.dumps([scope.caller, task_name, scope.key]).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def claim_key(task_id: str) -> str:
    """Held by the request that queued a keyed task (see _claim)."""
    return f"bgtasks:taskiq:claim:{task_id}"


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
    status_url: str  # where to read its status
    duplicate: bool = False


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
    # cancelled | timed_out | unconfirmed (an email maybe delivered) | failed
    error: str | None = None  # never the exception
    tries: int | None = None
    progress: Progress | None = None  # while a long task runs


# a repeated Idempotency-Key: the task it queued before
DUPLICATE: dict[str, Any] = {
    "model": TaskAccepted,
    "description": "Already queued with this Idempotency-Key: that task",
}


class UnconfirmedTask(BaseModel):
    message: str
    task_id: str
    outcome: str  # "unknown": queued or not


class Unconfirmed(BaseModel):
    detail: UnconfirmedTask


# the task was sent and the broker did not confirm it in time (503: never sent)
UNCONFIRMED: dict[str, Any] = {
    "model": Unconfirmed,
    "description": "Not confirmed in time: the task may be queued. Retrying with the "
    "same Idempotency-Key never queues it twice",
}


class CancelResponse(BaseModel):
    task_id: str
    cancelled: bool
    status: str


async def _enqueue(
    task: AsyncTaskiqDecoratedTask[Any, Any],
    request: Request,
    response: Response,
    idempotency_key: str | None,
    **kwargs: Any,
) -> TaskAccepted:
    """Record the id as issued, then send the task under it. With an Idempotency-Key
    the id is derived from it, and only the request that claims it sends the task."""
    task_id = uuid.uuid4().hex
    caller = caller_of(request)
    with queue_errors_as_503():
        if idempotency_key:
            secret = await task_id_secret()
            scope = IdempotencyScope(caller=caller, key=idempotency_key)
            task_id = scoped_task_id(secret, task.task_name, scope)
            if not await _claim(task_id):
                # queued before (or being queued right now): that task, nothing sent
                record = await _read(task_id)
                response.status_code = 200
                return TaskAccepted(
                    task_id=task_id,
                    status=record.get("state", "queued"),
                    status_url=_status_path(request, task_id),
                    duplicate=True,
                )
        waiting = await record_queued(task_id, task.task_name, owner=caller)
        if waiting:  # nothing written
            if idempotency_key is not None:
                await _release(task_id)  # the same request may try again
            raise queue_full(waiting)
        try:
            await task.kicker().with_task_id(task_id).kiq(**kwargs)
        except Exception as exc:
            if _may_have_been_sent(exc):
                # its status and claim stay: it may run, and a retry with the same
                # Idempotency-Key answers with this task instead of queueing another
                raise _unconfirmed(task_id) from None
            # not sent: no status left behind, the same request may try again
            await _release(task_id)
            if isinstance(exc.__cause__, QueueFull):  # filled up meanwhile
                raise queue_full(exc.__cause__.waiting) from None
            raise
    return TaskAccepted(
        task_id=task_id, status="queued", status_url=_status_path(request, task_id)
    )


_ID_PLACEHOLDER = "0-task-id-0"
_status_paths: dict[tuple[Any, str], str] = {}


def _status_path(request: Request, task_id: str) -> str:
    """The path of the task's status, as the app including this router serves it."""
    # url_for walks every route of the app: once per app and mount point, not per task
    key = (request.app, str(request.scope.get("root_path", "")))
    path = _status_paths.get(key)
    if path is None:
        url = request.url_for("get_task_status", task_id=_ID_PLACEHOLDER)
        path = _status_paths[key] = url.path
    return path.replace(_ID_PLACEHOLDER, task_id)


def _may_have_been_sent(exc: BaseException) -> bool:
    """A timeout once the message may have left (writing, or waiting for the answer):
    the broker may run it. A connection never made sent nothing."""
    cause = exc.__cause__ or exc
    if isinstance(cause, RedisTimeoutError):
        return "connecting" not in str(cause)
    return isinstance(cause, TimeoutError)


def _unconfirmed(task_id: str) -> HTTPException:
    logger.warning("task %s sent but not confirmed in time", task_id)
    detail = {
        "message": "not confirmed in time: the task may be queued",
        "task_id": task_id,
        "outcome": "unknown",
    }
    return HTTPException(status_code=504, detail=detail)


def queue_full(waiting: int) -> HTTPException:
    """503 for a task refused because MAX_QUEUED tasks are waiting: nothing queued."""
    logger.warning("task refused: %d tasks waiting", waiting)
    return HTTPException(status_code=503, detail=f"queue full: {waiting} tasks waiting")


async def _claim(task_id: str) -> bool:
    """Whether this request is the first to queue `task_id`. SET NX: of two concurrent
    requests only one takes the claim. It lasts KEEP_RESULT; the record of a task
    still queued may outlive it, and then that task is the answer too."""
    async with redis_client() as redis, redis.pipeline(transaction=True) as pipe:
        pipe.set(claim_key(task_id), "1", nx=True, ex=KEEP_RESULT)
        pipe.exists(status_key(task_id))
        claimed, known = await pipe.execute()
    return bool(claimed) and not known


async def _release(task_id: str) -> None:
    with contextlib.suppress(RedisError, OSError):
        async with redis_client() as redis:
            await redis.delete(claim_key(task_id), status_key(task_id))


async def _read(task_id: str) -> dict[str, str]:
    """The task's status hash; {} for an id this app never issued (or that expired)."""
    with queue_errors_as_503():
        async with redis_client() as redis:
            raw = await redis.hgetall(status_key(task_id))
    return {_str(key): _str(value) for key, value in raw.items()}


async def _record(request: Request, task_id: str) -> dict[str, str]:
    """The task's status hash; 404 for an id this app never issued (or that expired),
    and for a task the caller may not use (see may_use_task): the same answer, so
    nobody learns which ids others hold."""
    record = await _read(task_id)
    owner = record.get("owner")
    if not record or not may_use_task(caller_of(request), owner, task_access(request)):
        raise HTTPException(status_code=404, detail=UNKNOWN_ID)
    return record


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@router.post(
    "/send-email",
    status_code=202,
    dependencies=[Depends(limit_email_rate)],
    summary="Queue an email",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 429)},
)
async def queue_send_email(
    payload: EmailRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        taskiq_tasks.send_email,
        request,
        response,
        idempotency_key,
        to=str(payload.to),
        subject=payload.subject,
        body=payload.body,
    )


@router.post(
    "/process-data",
    status_code=202,
    summary="Queue a batch of numbers to summarise",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415)},
)
async def queue_process_data(
    payload: ProcessDataRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        taskiq_tasks.process_data,
        request,
        response,
        idempotency_key,
        data_id=payload.data_id,
        values=payload.values,
    )


@router.post(
    "/long-running",
    status_code=202,
    summary="Queue a long task that reports progress",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415)},
)
async def queue_long_running(
    payload: LongRunningRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        taskiq_tasks.long_running_task,
        request,
        response,
        idempotency_key,
        steps=payload.steps,
    )


@router.get(
    "/status/{task_id}", summary="A task's state and result", responses=errors(404)
)
async def get_task_status(task_id: TaskId, request: Request) -> TaskStatus:
    """The task's state, its progress while it runs, its result once it succeeded."""
    record = await _record(request, task_id)
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
    request: Request,
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
    record = await _record(request, task_id)
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
        record = await _record(request, task_id)
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


class FailedEntry(BaseModel):
    """A task that failed for good ("failed"), or a message the worker dropped as
    poison ("poison": never run, its first bytes in `raw`)."""

    id: str
    kind: str
    task: str
    args: list[Any]  # a task with personal data: each shown as hidden
    kwargs: dict[str, Any]
    error_type: str
    error: str
    traceback: str
    attempts: int
    first_failed_at: float  # Unix times
    last_failed_at: float
    worker: str
    replay_of: str | None = None  # the entry this task replayed
    replayed_as: str | None = None  # the task id of its latest replay
    replayed_at: float | None = None
    raw_size: int | None = None  # poison: its size in bytes
    raw: str | None = None  # poison: its first bytes, base64


class FailedPage(BaseModel):
    entries: list[FailedEntry]
    total: int  # entries kept
    dropped: int  # entries the limits removed so far


class Replayed(BaseModel):
    entry_id: str
    task_id: str  # the new task
    status_url: str


class EarlierReplay(BaseModel):
    message: str
    replayed_as: str  # the task id it was replayed as


class ReplayConflict(BaseModel):
    detail: EarlierReplay


class Unprocessable(BaseModel):
    detail: Any  # why there is nothing to run (text), or the invalid parameters (list)


# an inbox entry's id: the failed task's id, or "poison-" and 32 hex digits
EntryId = Annotated[
    str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
]
NOT_IN_INBOX: dict[str, Any] = {
    "model": ErrorMessage,
    "description": "No such entry in the failed-task inbox",
}


def _not_in_inbox() -> HTTPException:
    return HTTPException(status_code=404, detail=NOT_IN_INBOX["description"])


@router.get(
    "/failed",
    name="bgtasks_failed_list",
    summary="Tasks that failed for good, newest first",
    responses=errors(503),
)
async def failed_list(
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=taskiq_inbox.MAX_PAGE)] = 20,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> FailedPage:
    """A page of the inbox, optionally of one task (its name); a task with personal
    data shows its arguments as hidden."""
    with queue_errors_as_503():
        async with redis_client() as redis:
            found, total, dropped = await taskiq_inbox.page(redis, offset, limit, task)
    entries = [FailedEntry(**item) for item in found]
    return FailedPage(entries=entries, total=total, dropped=dropped)


@router.get(
    "/failed/{entry_id}",
    name="bgtasks_failed_entry",
    summary="One entry of the failed-task inbox",
    responses={404: NOT_IN_INBOX, **errors(503)},
)
async def failed_entry(entry_id: EntryId) -> FailedEntry:
    with queue_errors_as_503():
        async with redis_client() as redis:
            found = await taskiq_inbox.entry(redis, entry_id)
    if found is None:
        raise _not_in_inbox()
    return FailedEntry(**taskiq_inbox.public(found))


@router.post(
    "/failed/{entry_id}/replay",
    status_code=202,
    name="bgtasks_failed_replay",
    summary="Queue a failed task again, under a new task id",
    responses={
        404: NOT_IN_INBOX,
        409: {"model": ReplayConflict, "description": "Replayed before: its task id"},
        422: {"model": Unprocessable, "description": "Nothing to run (poison)"},
        504: UNCONFIRMED,
        **errors(415, 503),
    },
)
async def failed_replay(
    entry_id: EntryId,
    request: Request,
    force: Annotated[bool, Query()] = False,
) -> Replayed:
    """Queue the entry's task with its arguments again; the new task is the caller's.
    Once per entry: again only with `force=true`. A failure of the new task is an
    entry of its own, with `replay_of` naming this one."""
    with queue_errors_as_503():
        try:
            async with redis_client() as redis:
                task_id = await taskiq_inbox.replay_with(
                    redis, entry_id, force, owner=caller_of(request)
                )
        except taskiq_inbox.ReplayRefused as refused:
            detail = {"message": str(refused), "replayed_as": refused.earlier}
            raise HTTPException(status_code=409, detail=detail) from None
        except LookupError:
            raise _not_in_inbox() from None
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        except taskiq_inbox.ReplayUnconfirmed as unconfirmed:
            raise _unconfirmed(unconfirmed.task_id) from None
        except QueueFull as full:
            raise queue_full(full.waiting) from None
    status_url = _status_path(request, task_id)
    return Replayed(entry_id=entry_id, task_id=task_id, status_url=status_url)


@router.delete(
    "/failed/{entry_id}",
    status_code=204,
    name="bgtasks_failed_discard",
    summary="Discard an entry of the failed-task inbox",
    response_class=Response,
    responses={404: NOT_IN_INBOX, **errors(503)},
)
async def failed_discard(entry_id: EntryId) -> Response:
    with queue_errors_as_503():
        async with redis_client() as redis:
            removed = await taskiq_inbox.discard(redis, entry_id)
    if not removed:
        raise _not_in_inbox()
    return Response(status_code=204)

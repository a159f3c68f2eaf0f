"""Queue Celery tasks, read their status, cancel them.

Celery's client API blocks (publishing, reading the result backend, revoke). The queue
endpoints are `async def` and publish through fast_publish, which never blocks the
event loop (with a Redis broker it writes the message with redis.asyncio, otherwise it
publishes in the threadpool); status and cancel read Redis with redis.asyncio, each
read bounded (registry.READ_TIMEOUT: a stalled Redis is a quick 503). Only revoking a
queued task runs in the threadpool.

The routes answer as every queue runner's do: inputs in a JSON body, a status of
queued | in_progress | retrying | complete (Celery's PENDING, STARTED/PROGRESS, RETRY,
and SUCCESS/FAILURE/REVOKED), `success` and `error` once complete.

Cancel is `POST /tasks/cancel/{task_id}` (`?wait=` up to 30 s, 5 by default):
- queued or waiting to retry: revoked without terminate; it never runs. Answers 200
  with `"cancelled": true`.
- running: a cancel flag is set. A task that checks it between steps (long_running)
  stops at its next check; any other finishes the run it is in but is never retried or
  re-run. Answers 200 once it stopped within the wait, 202 while it has not, 409 when
  it finished first.
- finished: nothing to do. Answers 409 with its outcome.

Idempotency: send an `Idempotency-Key` header (1-64 characters of A-Z a-z 0-9 _ . -)
to queue a task at most once per caller. While that task's record exists (queued,
running, or finished with its result still kept: RESULT_EXPIRES) the same request
from the same caller answers 200 with the existing task's id and status and
`"duplicate": true`, instead of 202 and a new task. The same key from another caller
is another task. Without the header, every request queues a new task.

503 means the task was not queued: send the request again. 504 means the broker may
have received the task without confirming it (it hung, and runs what it was sent once
it resumes): the body names the task id with `"outcome": "unknown"`. The same request
with the same Idempotency-Key is then safe, it never queues a second task; without a
key, a retry may run the work twice.

A task is its caller's: status and cancel answer 404, as for an id never issued, to
any other caller (see may_use_task). A task queued by other code (celery beat, your
own) has no caller recorded, and every caller may read it.

The failed-task inbox (celery_inbox.py) keeps every task that failed for good, every
message the worker dropped as poison and every task lost with its worker:
`GET /failed` lists them newest first (`?offset=&limit=&task=`; with `total` kept and
how many the limits `dropped`), `GET /failed/{entry_id}` shows one, `POST
/failed/{entry_id}/replay` queues its task again under a new id (409 when it was
replayed before: `?force=true` queues it once more), `DELETE /failed/{entry_id}`
discards it. The arguments of a task with personal data (the email) are never shown.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute). A POST must say
`Content-Type: application/json` (415 otherwise), also one without a body.

Who may call these routes is decided by `authorize_task_access` below, the one place to
edit: as generated, callers send `Authorization: Bearer <token>`, the token being the
value of
BGTASKS_API_TOKEN; anything else is 401. The identity it returns owns the tasks
it queues, and scopes idempotency keys and the email rate limit.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from celery import states
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
from kombu.exceptions import OperationalError
from pydantic import (
    AfterValidator,
    BaseModel,
    EmailStr,
    Field,
    SecretStr,
    ValidationError,
)
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from app.core.config import settings
from app.tasks import celery_dashboard as dashboard
from app.tasks import celery_inbox, error_reporting, fast_publish, mailer, registry
from app.tasks import tasks as celery_tasks
from app.tasks.celery_app import (
    REDELIVERY_DELAY,
    RESULT_EXPIRES,
    ResultBackend,
    celery_app,
)

logger = logging.getLogger(__name__)
# this process's error reports, once the DSN setting is set (error_reporting.py)
error_reporting.set_up("web")

# Per caller (see authorize_task_access): the token's holder, or without one the client
# address. Behind a reverse proxy that address is the proxy's unless uvicorn runs with
# --proxy-headers and --forwarded-allow-ips set to the proxy's own address only; never
# trust X-Forwarded-For from anywhere else, or any client picks its own address. An
# open email endpoint is a spam relay.
EMAIL_RATE_LIMIT = 20
EMAIL_RATE_WINDOW_SECONDS = 60
# The largest request body read (413 beyond). The largest valid one is an email of
# 10 000 characters, which a client escaping every character as \uXXXX (12 bytes for
# an emoji's surrogate pair) sends as about 120 kB.
MAX_BODY_BYTES = 128 * 1024
CANCEL_POLL_SECONDS = 0.2
# The longest a status or cancel waits for a result backend other than Redis (read in
# the threadpool; with Redis, registry.READ_TIMEOUT bounds each read).
BACKEND_TIMEOUT = 2.0

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


@dataclass(frozen=True)
class TaskAccess:
    """What a request to the task routes asks for."""

    # "queue", "status", "cancel", or the failed-task inbox's "failed.read",
    # "failed.replay" and "failed.discard"
    action: str
    task_id: str | None  # the task it reads or cancels; None when queueing


def task_access(request: Request) -> TaskAccess:
    """The action and task id of a request, from its method and path."""
    # the scope's path, not request.url: building the URL would cost every request
    path = str(request.scope.get("path", ""))
    reading = request.method in ("GET", "HEAD")
    if path.endswith("/dashboard") and reading:
        return TaskAccess("dashboard.page", None)  # the page's shell: no data in it
    if path.endswith(("/dashboard/session", "/dashboard/data")):
        return TaskAccess("dashboard.read", None)  # signing in or out, the page's data
    entry_id = request.path_params.get("entry_id")
    if entry_id is not None:  # an inbox entry: the failed task's id
        methods = {
            "GET": "failed.read",
            "HEAD": "failed.read",
            "DELETE": "failed.discard",
        }
        return TaskAccess(methods.get(request.method, "failed.replay"), str(entry_id))
    if reading and path.endswith("/failed"):
        return TaskAccess("failed.read", None)  # the inbox's listing
    task_id = request.path_params.get("task_id")
    if task_id is None:
        return TaskAccess("queue", None)
    action = "status" if request.method in ("GET", "HEAD") else "cancel"
    return TaskAccess(action, str(task_id))


async def authorize_task_access(request: Request) -> str:
    """Decide who may queue, read and cancel tasks: the one place to edit.

    Every route of the router depends on it. Return the caller's identity, a stable
    string that is not a secret (idempotency keys and the email rate limit are kept
    per identity), or raise HTTPException(401) / (403) to refuse. `task_access(request)`
    says what is asked (`.action`, `.task_id`; a plain call, as a dependency it would
    cost every request a resolution): whether a caller may read or cancel a
    task somebody else queued is your application's policy, decided here.
    The failed-task inbox ("failed.read", "failed.replay", "failed.discard") holds the
    failures of every caller's tasks: once identities are per user, admit only your
    operators to those actions.

    As generated a request passes with the API token, sent as
    `Authorization: Bearer <token>` and set in the environment as
    BGTASKS_API_TOKEN; or without one when
    BGTASKS_ALLOW_ANONYMOUS=true (for local development only).
    Any other request is 401. To use your project's current user instead, take it as a
    parameter and decide here:

        async def authorize_task_access(
            request: Request, user: Annotated[User, Depends(get_current_user)]
        ) -> str:
            access = task_access(request)
            if access.task_id is not None and not owns(user, access.task_id):
                raise HTTPException(status_code=403, detail="Not your task")
            return f"user:{user.id}"
    """
    if task_access(request).action == "dashboard.page":
        return "page"  # the sign-in page itself; everything it reads comes through here
    return api_token_caller(request)  # no per-task policy as generated


def may_use_task(caller: str, owner: str | None, access: TaskAccess) -> bool:
    """Whether `caller` may read or cancel a task `owner` queued (the identity
    authorize_task_access returned when it was queued). As generated: only the caller
    who queued it; `owner` None (queued by other code than these routes) lets every
    caller the hook admits. A refused caller is answered 404, as for an unknown id.
    Edit to let an operator see every task, e.g. `or caller == "user:admin"`."""
    del access  # as generated, one rule for every action
    return owner is None or hmac.compare_digest(owner.encode(), caller.encode())


def client_identity(request: Request) -> str:
    """The client address as an identity. Behind a reverse proxy that is the proxy's,
    unless uvicorn runs with --proxy-headers and --forwarded-allow-ips set to the
    proxy's own address only (then X-Forwarded-For from anywhere else is ignored)."""
    return f"address:{request.client.host if request.client else 'unknown'}"


_anonymous_warned = False


def api_token_caller(request: Request) -> str:
    """The caller's identity when the request carries the API token; 401 otherwise,
    unless anonymous requests are explicitly allowed."""
    global _anonymous_warned
    config = settings
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        token: object = config.BGTASKS_API_TOKEN
        if isinstance(token, SecretStr):
            token = token.get_secret_value()
        expected = str(token or "").encode()
        given = presented.strip().encode()
        # constant time: the comparison does not say how much of the token matched
        if expected and hmac.compare_digest(given, expected):
            # a stable name for the token's holder, never the token itself
            return "token:" + hashlib.sha256(expected).hexdigest()[:16]
    elif (signed_in := dashboard_caller(request)) is not None:
        return signed_in  # a browser signed in on the dashboard (cookie, CSRF token)
    elif anonymous_access_allowed():
        if not _anonymous_warned:
            _anonymous_warned = True
            logger.warning(
                "BGTASKS_ALLOW_ANONYMOUS is on: the task routes accept "
                "requests without a token (local development only)"
            )
        return client_identity(request)
    raise HTTPException(
        status_code=401,
        detail="Missing or invalid API token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def dashboard_secret() -> bytes:
    """The key the dashboard's sessions are signed with (see the dashboard module)."""
    token: object = settings.BGTASKS_API_TOKEN
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return dashboard.session_secret(str(token or ""))


def dashboard_caller(request: Request) -> str | None:
    """The identity of a browser signed in on the dashboard, or None."""
    return dashboard.session_caller(dashboard_secret(), request)


def anonymous_access_allowed() -> bool:
    """Whether requests without a token are let in: the setting
    BGTASKS_ALLOW_ANONYMOUS, exactly true or false (any case, spaces
    around ignored). Anything else is refused rather than guessed: 1, yes or an empty
    value may mean either."""
    value: object = settings.BGTASKS_ALLOW_ANONYMOUS
    if isinstance(value, bool):  # a field declared as bool: pydantic has read it
        return value
    word = str(value).strip().lower()
    if word not in ("true", "false"):
        setting = "BGTASKS_ALLOW_ANONYMOUS"
        raise RuntimeError(f"{setting} must be true or false, not {value!r}")
    return word == "true"


# read once at import: a wrong value stops the app at startup, not each request
anonymous_access_allowed()

Caller = Annotated[str, Depends(authorize_task_access)]


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
    """Refuse more than EMAIL_RATE_LIMIT emails per caller and window (429)."""
    with _service_errors():
        key = f"email:{caller_of(request)}"
        count = await registry.hit_async(key, EMAIL_RATE_WINDOW_SECONDS)
    if count > EMAIL_RATE_LIMIT:
        raise HTTPException(status_code=429, detail="Too many emails, try again later")


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
    responses=errors(401),
    # fast_publish's Redis connections close with the app that includes this router
    lifespan=fast_publish.lifespan,
)
# the task dashboard's page, its sign-in and data (celery_dashboard.py), first: no
# route with a path parameter answers in their place
dashboard.dashboard_routes(
    router,
    secret=dashboard_secret,
    caller=Depends(authorize_task_access),
    snapshot=dashboard.snapshot,
)


class EmailRequest(BaseModel):
    # Headers: one line each, also once encoded words are decoded (see the mailer).
    to: Annotated[EmailStr, AfterValidator(mailer.checked_recipient)]
    subject: Annotated[
        str, Field(min_length=1, max_length=200), AfterValidator(mailer.checked_subject)
    ]
    body: str = Field(min_length=1, max_length=10_000)


class ProcessOrderRequest(BaseModel):
    order_id: int = Field(ge=1, le=2**63 - 1)


class LongRunningRequest(BaseModel):
    steps: int = Field(default=100, ge=1, le=celery_tasks.MAX_STEPS)


class TaskAccepted(BaseModel):
    task_id: str
    status: str = "queued"
    status_url: str  # where to read its status
    duplicate: bool = False  # true: queued before with this Idempotency-Key


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
    error: str | None = None
    tries: int | None = None  # Celery does not report its tries
    progress: Progress | None = None  # while a long task runs
    # in_progress whose worker is gone: the status is the last one it wrote, and the
    # message is delivered again (the task re-runs) by redelivery_due_at.
    lost: bool = False
    redelivery_due_at: datetime | None = None


class CancelResponse(BaseModel):
    task_id: str
    cancelled: bool
    status: str


class UnconfirmedTask(BaseModel):
    message: str
    task_id: str
    outcome: str  # "unknown": queued or not


class Unconfirmed(BaseModel):
    detail: UnconfirmedTask


# a repeated Idempotency-Key: the task it queued before
DUPLICATE: dict[str, Any] = {
    "model": TaskAccepted,
    "description": "Already queued with this Idempotency-Key: that task",
}
# the broker did not confirm the task (503 means not queued, this may be queued)
UNCONFIRMED: dict[str, Any] = {
    "model": Unconfirmed,
    "description": "Not confirmed in time: the task may be queued. Retrying with the "
    "same Idempotency-Key never queues it twice",
}
UNCONFIRMED_MESSAGE = (
    "the task queue did not confirm in time: the task may be queued; retry with the "
    "same Idempotency-Key (never queued twice) or read its status"
)


# Celery's states in the words of every queue runner's API; the ready states
# (SUCCESS, FAILURE, REVOKED) are "complete", any state of a task's own "in_progress"
STATUS_OF_STATE = {
    states.PENDING: "queued",
    states.RECEIVED: "queued",
    states.STARTED: "in_progress",
    "PROGRESS": "in_progress",
    states.RETRY: "retrying",
}
# A failure's exception type, said in the same words (any other is "failed")
ERROR_OF_EXCEPTION = {
    "SoftTimeLimitExceeded": "timed_out",
    "TimeLimitExceeded": "timed_out",
    "DeliveryUnknown": "unconfirmed",  # the mailer: handed over, never confirmed
}


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


async def _enqueue(
    request: Request,
    response: Response,
    task: Any,
    kwargs: dict[str, Any],
    idempotency_key: str | None,
    **options: Any,
) -> TaskAccepted:
    task_id = str(uuid.uuid4())
    caller = caller_of(request)
    claim = None
    if idempotency_key:
        claim = registry.claim_key(caller, task.name, idempotency_key)
    with _service_errors():
        try:
            # The id is recorded as issued, with its caller, before (or with) the
            # message: a status call can never race the record.
            queued = await fast_publish.enqueue(
                task,
                kwargs,
                task_id=task_id,
                ttl=RESULT_EXPIRES,
                owner=caller,
                claim=claim,
                **options,
            )
        except fast_publish.OutcomeUnknown as exc:
            raise _unconfirmed(exc.task_id) from None
        if queued == task_id:
            status_url = _status_path(request, task_id)
            return TaskAccepted(task_id=task_id, status_url=status_url)
        # The key was claimed before: that task is the answer, nothing was queued now.
        record = await _read(queued)
        meta = await _meta(queued, record)
    response.status_code = 200
    return TaskAccepted(
        task_id=queued,
        status=_status_word(meta.get("status")),
        status_url=_status_path(request, queued),
        duplicate=True,
    )


def _unconfirmed(task_id: str) -> HTTPException:
    """504 for a task the broker may have received without confirming it: its id."""
    logger.warning("task %s: publish not confirmed in time", task_id)
    detail = {"message": UNCONFIRMED_MESSAGE, "task_id": task_id, "outcome": "unknown"}
    return HTTPException(status_code=504, detail=detail)


_ID_PLACEHOLDER = "0-task-id-0"
_status_paths: dict[tuple[Any, str], str] = {}


def _status_path(request: Request, task_id: str) -> str:
    # url_for walks every route of the app: once per app and mount point, not per task
    key = (request.app, str(request.scope.get("root_path", "")))
    path = _status_paths.get(key)
    if path is None:
        url = request.url_for("bgtasks_task_status", task_id=_ID_PLACEHOLDER)
        path = _status_paths[key] = url.path
    return path.replace(_ID_PLACEHOLDER, task_id)


def record_key(task_id: str) -> bytes | None:
    """Where the result backend keeps the task's meta in Redis (None: not in Redis)."""
    backend = celery_app.backend
    if isinstance(backend, ResultBackend):
        return bytes(backend.get_key_for_task(task_id))
    return None


async def _read(task_id: str) -> registry.TaskRecord:
    """What Redis holds on the task, the result backend's value included when that
    is Redis: one bounded read."""
    return await registry.read_task(task_id, record_key(task_id))


async def _meta(task_id: str, record: registry.TaskRecord) -> dict[str, Any]:
    return await _decoded_meta(task_id, record.meta)


async def _decoded_meta(task_id: str, meta: bytes | None) -> dict[str, Any]:
    """The task's meta (state and result) as Celery reads it: decoded from the value
    read from Redis, or read from another result backend in the threadpool."""
    backend = celery_app.backend
    if isinstance(backend, ResultBackend):
        if meta is None:  # nothing stored yet: what Celery says of any such id
            return {"status": states.PENDING, "result": None}
        decoded: dict[str, Any] = backend.decode_result(meta)
        return decoded
    # The thread may go on after the wait; the request does not.
    read = run_in_threadpool(backend.get_task_meta, task_id, cache=False)
    async with asyncio.timeout(BACKEND_TIMEOUT):
        found: dict[str, Any] = await read
    return found


def _check_access(request: Request, record: registry.TaskRecord) -> None:
    """404 unless the id was issued, to this caller (or to no one: see may_use_task)."""
    # Celery answers PENDING for any id, even one it never saw; ours are recorded, with
    # their caller: someone else's task is as unknown as an id never issued.
    if not record.issued or not may_use_task(
        caller_of(request), record.owner, task_access(request)
    ):
        raise HTTPException(status_code=404, detail="Unknown task id")


def _error_name(result: object) -> str:
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, dict) and isinstance(result.get("exc_type"), str):
        return str(result["exc_type"])
    return "Error"


def _status(
    task_id: str, meta: dict[str, Any], record: registry.TaskRecord
) -> TaskStatus:
    state = str(meta.get("status", states.PENDING))
    result = meta.get("result")
    status = TaskStatus(task_id=task_id, status=_status_word(state))
    if state == "PROGRESS":
        with contextlib.suppress(ValidationError):
            status.progress = Progress.model_validate(result)
    elif state == states.SUCCESS:
        status.success, status.result = True, result
    elif state == states.FAILURE:
        error = _error_name(result)
        status.success, status.error = False, ERROR_OF_EXCEPTION.get(error, "failed")
    elif state == states.REVOKED:
        status.success, status.error = False, "cancelled"
    if state in (states.STARTED, "PROGRESS"):
        _check_alive(status, record)
    return status


def _status_word(state: str | None) -> str:
    if state in states.READY_STATES:
        return "complete"
    return STATUS_OF_STATE.get(str(state or states.PENDING), "in_progress")


def _check_alive(status: TaskStatus, record: registry.TaskRecord) -> None:
    # A running task refreshes its alive key (see liveness.py); a worker killed
    # outright leaves its last state behind, which would read as still running.
    if record.alive:
        return
    status.lost = True
    if record.started_at is not None:
        due = record.started_at + REDELIVERY_DELAY
        status.redelivery_due_at = datetime.fromtimestamp(due, tz=UTC)


async def _ask_to_cancel(request: Request, task_id: str) -> tuple[str | None, bool]:
    """Set the cancel flag and revoke the task when it has not started: the state it
    was in, and whether this call revoked it. 404 for an id not the caller's."""
    record = await _read(task_id)
    _check_access(request, record)
    # The flag goes first: a worker that picks the task up after this point skips it,
    # even one that was not running when revoke() was broadcast.
    meta_key = record_key(task_id)
    meta = await registry.request_cancel_then_read(task_id, RESULT_EXPIRES, meta_key)
    state = (await _decoded_meta(task_id, meta)).get("status")
    if state in (None, states.PENDING, states.RECEIVED, states.RETRY):
        await run_in_threadpool(_revoke, task_id)
        return state, True
    return None if state is None else str(state), False


def _revoke(task_id: str) -> None:
    # No terminate: that would kill whatever the worker process runs by then.
    celery_app.control.revoke(task_id)
    # Not started when the flag was set, so it can never run: say so now rather than
    # leave it queued until a worker discards the message.
    celery_app.backend.mark_as_revoked(task_id, reason="cancelled")


async def _state_of(task_id: str) -> str | None:
    meta_key = record_key(task_id)
    meta = await registry.read_meta(meta_key) if meta_key is not None else None
    state = (await _decoded_meta(task_id, meta)).get("status")
    return None if state is None else str(state)


@router.post(
    "/send-email",
    status_code=202,
    name="bgtasks_send_email",
    summary="Queue an email",
    dependencies=[Depends(limit_email_rate)],
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 429, 503)},
)
async def queue_send_email(
    payload: EmailRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Queue an email; poll status_url for the outcome."""
    # send_email ignores results by default; keep this one so its status can be read.
    return await _enqueue(
        request,
        response,
        celery_tasks.send_email,
        {"to": str(payload.to), "subject": payload.subject, "body": payload.body},
        idempotency_key,
        ignore_result=False,
    )


@router.post(
    "/process-order",
    status_code=202,
    name="bgtasks_process_order",
    summary="Queue an order's processing",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 503)},
)
async def queue_process_order(
    payload: ProcessOrderRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        request,
        response,
        celery_tasks.process_order,
        {"order_id": payload.order_id},
        idempotency_key,
    )


@router.post(
    "/long-running",
    status_code=202,
    name="bgtasks_long_running",
    summary="Queue a long task that reports progress",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 503)},
)
async def queue_long_running(
    payload: LongRunningRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Queue a task that reports its progress (current, total, percent) as it runs."""
    return await _enqueue(
        request,
        response,
        celery_tasks.long_running,
        {"steps": payload.steps},
        idempotency_key,
    )


@router.get(
    "/status/{task_id}",
    name="bgtasks_task_status",
    summary="A task's state and result",
    responses=errors(404, 503),
)
async def task_status(task_id: TaskId, request: Request) -> TaskStatus:
    """queued, in_progress, retrying or complete (then `success`, and the result or the
    error); 404: unknown, or another caller's. An in_progress task whose worker died
    says `"lost": true` and when it will be delivered again (`redelivery_due_at`).
    """
    with _service_errors():
        # One read: the record, the state and result, the liveness, at one moment.
        record = await _read(task_id)
        _check_access(request, record)
        meta = await _meta(task_id, record)
    return _status(task_id, meta, record)


@router.post(
    "/cancel/{task_id}",
    name="bgtasks_cancel_task",
    summary="Cancel a queued or running task",
    responses={
        202: {"model": CancelResponse, "description": "Asked to stop; not stopped yet"},
        409: {"model": CancelResponse, "description": "Already finished: its outcome"},
        **errors(404, 415, 503),
    },
)
async def cancel_task(
    task_id: TaskId,
    request: Request,
    response: Response,
    wait: Annotated[float, Query(ge=0, le=30, allow_inf_nan=False)] = 5.0,
) -> CancelResponse:
    """Cancel a task, waiting up to `wait` seconds for it to stop.

    A queued task is revoked and never runs; a running one stops at its next check of
    the cancel flag (tasks that never check run to their end). 200 with
    `"cancelled": true` once this request stopped it; 409 when the task had finished
    (before the request, or first during the wait: `"cancelled"` says whether it ended
    cancelled); 202 when it has not stopped yet (the cancel stays asked for).
    """
    with _service_errors():
        state, revoked = await _ask_to_cancel(request, task_id)
        if revoked:  # it had not started: it never runs
            return CancelResponse(task_id=task_id, cancelled=True, status="complete")
        if state in states.READY_STATES:
            response.status_code = 409  # nothing left to stop
            return _cancel_answer(task_id, state)
        deadline = time.monotonic() + wait
        while state not in states.READY_STATES and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            state = await _state_of(task_id)
    answer = _cancel_answer(task_id, state)
    if answer.status != "complete":
        response.status_code = 202
    elif not answer.cancelled:
        response.status_code = 409  # it finished first
    return answer


def _cancel_answer(task_id: str, state: str | None) -> CancelResponse:
    return CancelResponse(
        task_id=task_id, cancelled=state == states.REVOKED, status=_status_word(state)
    )


class FailedEntry(BaseModel):
    """A task that failed for good ("failed"), was lost with its worker ("lost"), or
    a message dropped as poison ("poison": never run, its raw bytes in `raw`)."""

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
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=celery_inbox.MAX_PAGE)] = 20,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> FailedPage:
    """A page of the inbox, optionally of one task (its full name); a task with
    personal data shows its arguments as hidden."""
    with _service_errors():
        found, total, dropped = await celery_inbox.page(
            registry.async_client(), offset, limit, task
        )
    entries = [FailedEntry(**item) for item in found]
    return FailedPage(entries=entries, total=total, dropped=dropped)


@router.get(
    "/failed/{entry_id}",
    name="bgtasks_failed_entry",
    summary="One entry of the failed-task inbox",
    responses={404: NOT_IN_INBOX, **errors(503)},
)
async def failed_entry(entry_id: TaskId) -> FailedEntry:
    with _service_errors():
        found = await celery_inbox.entry(registry.async_client(), entry_id)
    if found is None:
        raise _not_in_inbox()
    return FailedEntry(**celery_inbox.public(found))


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
    entry_id: TaskId,
    request: Request,
    force: Annotated[bool, Query()] = False,
) -> Replayed:
    """Queue the entry's task with its arguments again; the new task is the caller's.
    Once per entry: again only with `force=true`. A failure of the new task is an
    entry of its own, with `replay_of` naming this one."""
    with _service_errors():
        try:
            task_id = await celery_inbox.replay_with(
                registry.async_client(), entry_id, force, owner=caller_of(request)
            )
        except celery_inbox.ReplayRefused as refused:
            detail = {"message": str(refused), "replayed_as": refused.earlier}
            raise HTTPException(status_code=409, detail=detail) from None
        except LookupError:
            raise _not_in_inbox() from None
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        except fast_publish.OutcomeUnknown as exc:
            raise _unconfirmed(exc.task_id) from None
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
async def failed_discard(entry_id: TaskId) -> Response:
    with _service_errors():
        removed = await celery_inbox.discard(registry.async_client(), entry_id)
    if not removed:
        raise _not_in_inbox()
    return Response(status_code=204)

"""Queue Celery tasks, read their status, cancel them.

Celery's client API blocks (publishing, reading the result backend, revoke). The queue
endpoints are `async def` and publish through fast_publish, which never blocks the
event loop (with a Redis broker it writes the message with redis.asyncio, otherwise it
publishes in the threadpool); the others are plain `def`, run in FastAPI's threadpool.

Cancel is `DELETE /tasks/cancel/{task_id}`:
- queued (PENDING) or waiting to retry (RETRY): revoked without terminate; it never
  runs. Answers 200 with state REVOKED.
- running (STARTED, PROGRESS): a cancel flag is set. A task that checks it between
  steps (long_running) stops at its next check and ends REVOKED; any other finishes
  the run it is in but is never retried or re-run. Answers 202 with the state now.
- finished (SUCCESS, FAILURE, REVOKED): nothing to do. Answers 409 with that state.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute). A POST must say
`Content-Type: application/json` (415 otherwise), also one without a body.

Who may call these routes is decided by `authorize_task_access` below, the one place to
edit: as generated, callers send `Authorization: Bearer <token>`, the token being the
value of
BGTASKS_API_TOKEN; anything else is 401.
"""

import contextlib
import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from celery import states
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
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
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from acme.core.settings import get_settings
from acme.tasks import fast_publish, mailer, registry
from acme.tasks import tasks as celery_tasks
from acme.tasks.celery_app import (
    REDELIVERY_DELAY,
    RESULT_EXPIRES,
    celery_app,
)

logger = logging.getLogger(__name__)

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

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


@dataclass(frozen=True)
class TaskAccess:
    """What a request to the task routes asks for."""

    action: str  # "queue", "status" or "cancel"
    task_id: str | None  # the task it reads or cancels; None when queueing


def task_access(request: Request) -> TaskAccess:
    """The action and task id of a request, from its method and path."""
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
    return api_token_caller(request)  # no per-task policy as generated


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
    config = get_settings()
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        token: object = config.bgtasks_api_token
        if isinstance(token, SecretStr):
            token = token.get_secret_value()
        expected = str(token or "").encode()
        given = presented.strip().encode()
        # constant time: the comparison does not say how much of the token matched
        if expected and hmac.compare_digest(given, expected):
            # a stable name for the token's holder, never the token itself
            return "token:" + hashlib.sha256(expected).hexdigest()[:16]
    elif config.bgtasks_allow_anonymous is True:
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


Caller = Annotated[str, Depends(authorize_task_access)]


def limit_email_rate(caller: Caller) -> None:
    """Refuse more than EMAIL_RATE_LIMIT emails per caller and window (429)."""
    with _service_errors():
        count = registry.hit(f"email:{caller}", EMAIL_RATE_WINDOW_SECONDS)
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
    dependencies=[Depends(authorize_task_access)],
    route_class=BoundedRoute,
    responses=errors(401),
    # fast_publish's Redis connections close with the app that includes this router
    lifespan=fast_publish.lifespan,
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


async def _enqueue(
    request: Request, task: Any, kwargs: dict[str, Any], **options: Any
) -> QueuedTask:
    task_id = str(uuid.uuid4())
    with _service_errors():
        # The id is recorded as issued before (or with) the message: a status call
        # can never race the record.
        await fast_publish.enqueue(
            task, kwargs, task_id=task_id, ttl=RESULT_EXPIRES, **options
        )
    return QueuedTask(
        task_id=task_id, state=states.PENDING, status_url=_status_path(request, task_id)
    )


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
    summary="Queue an email",
    dependencies=[Depends(limit_email_rate)],
    responses=errors(413, 415, 429, 503),
)
async def queue_send_email(payload: EmailRequest, request: Request) -> QueuedTask:
    """Queue an email; poll status_url for the outcome."""
    # send_email ignores results by default; keep this one so its status can be read.
    return await _enqueue(
        request,
        celery_tasks.send_email,
        {"to": str(payload.to), "subject": payload.subject, "body": payload.body},
        ignore_result=False,
    )


@router.post(
    "/process-order/{order_id}",
    status_code=202,
    name="bgtasks_process_order",
    summary="Queue an order's processing",
    responses=errors(413, 415, 503),
)
async def queue_process_order(
    order_id: Annotated[int, Path(ge=1, le=2**63 - 1)], request: Request
) -> QueuedTask:
    return await _enqueue(request, celery_tasks.process_order, {"order_id": order_id})


@router.post(
    "/long-running",
    status_code=202,
    name="bgtasks_long_running",
    summary="Queue a long task that reports progress",
    responses=errors(413, 415, 503),
)
async def queue_long_running(
    request: Request,
    steps: Annotated[int, Query(ge=1, le=celery_tasks.MAX_STEPS)] = 100,
) -> QueuedTask:
    """Queue a task that reports PROGRESS (current, total, percent) while it runs."""
    return await _enqueue(request, celery_tasks.long_running, {"steps": steps})


@router.get(
    "/status/{task_id}",
    name="bgtasks_task_status",
    summary="Read a task's status",
    responses=errors(404, 503),
)
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


@router.delete(
    "/cancel/{task_id}",
    name="bgtasks_cancel_task",
    summary="Cancel a task",
    responses={
        202: {"model": CancelResult, "description": "Asked to stop; still running"},
        409: {"model": CancelResult, "description": "Already finished: its state"},
        **errors(404, 503),
    },
)
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

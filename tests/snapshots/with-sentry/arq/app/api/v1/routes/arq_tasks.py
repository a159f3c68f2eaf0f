"""HTTP API for the arq jobs: enqueue, status, cancel (added by bgtasks).

The routes answer as every queue runner's do: `task_id`, a status of queued |
in_progress | retrying (arq's deferred: waiting for its retry) | complete, an error of
cancelled | timed_out | unconfirmed (an email maybe delivered) | failed.

Idempotency: send an `Idempotency-Key` header (1-64 characters of A-Z a-z 0-9 _ . -)
to enqueue a job at most once per caller. While that job exists (queued, running, or
finished with its result still kept: 10 minutes for emails, an hour for the others) the
same request from the same caller answers 200 with the existing job's id and status and
`"duplicate": true`, instead of 202 and a new job. The same key from another caller is
another job, and the job id is a keyed hash, never the key itself (see idempotency.py).
Without the header, every request enqueues a new job.

503 means the job was not queued: send the request again. 504 means Redis may have
received the job without confirming it (it hung, and runs what it was sent once it
resumes): the body names the job id with `"outcome": "unknown"`. The same request with
the same Idempotency-Key is then safe, it never queues a second job; without a key, a
retry may run the work twice.

Who may call these routes is decided by `authorize_task_access` below, the one place to
edit: as generated, callers send `Authorization: Bearer <token>`, the token being the
value of
BGTASKS_API_TOKEN; anything else is 401. The identity it returns scopes
idempotency keys and the email rate limit, and owns the jobs it queues: status and
cancel answer 404, as for an unknown id, unless `may_use_task` lets the caller use the
job (as generated: only the caller who queued it; a job queued by other code, such as
a cron job, has no owner and every admitted caller may use it).

The failed-task inbox (arq_inbox.py) keeps every job that failed for good, was lost
with its workers, or was dropped as poison. `GET /failed` lists them newest first
(`?offset=&limit=&task=`, with the `total` kept and how many the limits `dropped`),
`GET /failed/{entry_id}` shows one, `POST /failed/{entry_id}/replay` queues its job
again under a new id (409 when it was replayed before; `?force=true` queues it once
more), `DELETE /failed/{entry_id}` discards it. The arguments of send_email are shown
as hidden. Every caller the access hook admits may use them: see authorize_task_access.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute). A POST must say
`Content-Type: application/json` (415 otherwise), also one without a body (cancel).
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from arq.jobs import DeserializationError, Job, JobStatus, SerializationError
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
from pydantic import (
    AfterValidator,
    BaseModel,
    EmailStr,
    Field,
    FiniteFloat,
    SecretStr,
)
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from app.core.config import settings
from app.tasks import arq_dashboard as dashboard
from app.tasks import arq_inbox, error_reporting
from app.tasks.arq_tasks import (
    checked_recipient,
    checked_subject,
    progress_key,
)
from app.tasks.idempotency import (
    IdempotencyScope,
    job_id_secret,
    scoped_job_id,
)
from app.tasks.pool import (
    UNCONFIRMED_MESSAGE,
    EnqueueOutcomeUnknown,
    job_owner,
    lifespan,
    queue_errors_as_503,
    queue_of,
)
from app.tasks.serialization import error_kind

logger = logging.getLogger(__name__)
# this process's error reports, once the DSN setting is set (error_reporting.py)
error_reporting.set_up("web")

# Per caller (see authorize_task_access) per minute, so /send-email cannot be used as
# an open relay. Without a token the caller is the client address: behind a reverse
# proxy that is the proxy's unless uvicorn runs with --proxy-headers and
# --forwarded-allow-ips set to the proxy's own address only; never trust
# X-Forwarded-For from anywhere else, or any client picks its own address.
EMAILS_PER_MINUTE = 20
CANCEL_POLL_SECONDS = 0.2
# The largest request body read (413 beyond). The largest valid ones: 10 000 values
# written at full precision (24 characters each, with ", ") come to about 260 kB, an
# email of 20 000 characters each escaped as \uXXXX to 120 kB (240 kB for emoji).
MAX_BODY_BYTES = 256 * 1024
# the 404 of an unknown id, and of a job the caller may not use: the same answer
UNKNOWN_ID = "Unknown task id"


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
    """At most EMAILS_PER_MINUTE emails per caller per minute (429 beyond)."""
    key = f"bgtasks:email-rate:{caller_of(request)}:{int(time.time() // 60)}"
    with queue_errors_as_503():
        async with queue_of(request).pipeline(transaction=True) as pipe:
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
    responses=errors(401),
    # the Redis pool opens and closes with the app that includes this router
    lifespan=lifespan,
)
# the task dashboard's page, its sign-in and data (arq_dashboard.py), first: no route
# with a path parameter answers in their place
dashboard.dashboard_routes(
    router,
    secret=dashboard_secret,
    caller=Depends(authorize_task_access),
    snapshot=dashboard.snapshot,
)


# arq's job id rule (an Idempotency-Key's id is "<function>:<hash>"); uuid4 hex passes
TaskId = Annotated[
    str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
]


class EmailRequest(BaseModel):
    # Headers: one line each, also once encoded words are decoded (see arq_tasks).
    to: Annotated[EmailStr, AfterValidator(checked_recipient)]
    subject: Annotated[
        str, Field(min_length=1, max_length=200), AfterValidator(checked_subject)
    ]
    body: str = Field(min_length=1, max_length=20_000)


class ProcessDataRequest(BaseModel):
    data_id: int = Field(ge=1, le=2**53)
    values: list[FiniteFloat] = Field(min_length=1, max_length=10_000)


class LongRunningRequest(BaseModel):
    steps: int = Field(default=100, ge=1, le=1000)


class TaskAccepted(BaseModel):
    task_id: str
    status: str
    status_url: str  # where to read its status
    duplicate: bool = False


class UnconfirmedTask(BaseModel):
    message: str
    task_id: str
    outcome: str  # "unknown": queued or not


class Unconfirmed(BaseModel):
    detail: UnconfirmedTask


class Progress(BaseModel):
    current: int
    total: int
    percent: int


class TaskStatus(BaseModel):
    task_id: str
    status: str  # queued | in_progress | retrying | complete
    success: bool | None = None
    result: Any = None  # only when the job succeeded
    # cancelled | timed_out | unconfirmed | failed, never the raw exception
    error: str | None = None
    tries: int | None = None
    progress: Progress | None = None  # while a long job runs


# a repeated Idempotency-Key: the job it queued before
DUPLICATE: dict[str, Any] = {
    "model": TaskAccepted,
    "description": "Already queued with this Idempotency-Key: that job",
}
# Redis did not confirm the enqueue (503 means not queued, this may be queued)
UNCONFIRMED: dict[str, Any] = {
    "model": Unconfirmed,
    "description": "Not confirmed in time: the job may be queued. Retrying with the "
    "same Idempotency-Key never queues it twice",
}


class CancelResponse(BaseModel):
    task_id: str
    cancelled: bool
    status: str


# arq's words in those of every queue runner's API (arq defers a job only for a retry)
STATUS_WORDS = {JobStatus.deferred.value: "retrying"}
ERROR_WORDS = {"aborted": "cancelled", "may_have_been_sent": "unconfirmed"}


def _status_word(state: JobStatus) -> str:
    return STATUS_WORDS.get(state.value, state.value)


def _error_word(result: Any) -> str:
    kind = error_kind(result)
    return ERROR_WORDS.get(kind, kind)


def _progress(stored: bytes | None) -> Progress | None:
    """The Progress a job stored as "<done>/<total>"; None when there is none."""
    done, _, total = (stored or b"").decode(errors="replace").partition("/")
    if not (done.isdigit() and total.isdigit() and int(total) > 0):
        return None
    current, steps = int(done), int(total)
    return Progress(current=current, total=steps, percent=current * 100 // steps)


def _job(queue: ArqRedis, job_id: str) -> Job:
    return Job(
        job_id,
        queue,
        _queue_name=queue.default_queue_name,
        _deserializer=queue.job_deserializer,
    )


async def _enqueue(
    request: Request,
    response: Response,
    function: str,
    idempotency_key: str | None,
    **kwargs: Any,
) -> TaskAccepted:
    queue = queue_of(request)
    caller = caller_of(request)
    with queue_errors_as_503():
        job_id = None
        if idempotency_key:
            secret = await job_id_secret(queue)
            scope = IdempotencyScope(caller=caller, key=idempotency_key)
            job_id = scoped_job_id(secret, function, scope)
        try:
            job = await queue.enqueue_job(
                function, _job_id=job_id, _owner=caller, **kwargs
            )
        except EnqueueOutcomeUnknown as exc:
            raise _unconfirmed(exc.job_id) from None
        if job is not None:
            return TaskAccepted(
                task_id=job.job_id,
                status=JobStatus.queued.value,
                status_url=_status_path(request, job.job_id),
            )
        if job_id is None:  # arq picked a random id: cannot collide, never trust that
            raise HTTPException(status_code=503, detail="task queue unavailable")
        # None: a job with this id exists already. Answer with it; enqueue nothing.
        existing = _job(queue, job_id)
        state = await existing.status()
    response.status_code = 200
    return TaskAccepted(
        task_id=job_id,
        status=_status_word(state),
        status_url=_status_path(request, job_id),
        duplicate=True,
    )


def _unconfirmed(job_id: str) -> HTTPException:
    """504 for a job Redis may have received without confirming it: its id."""
    logger.warning("job %s: enqueue not confirmed by Redis", job_id)
    detail = {"message": UNCONFIRMED_MESSAGE, "task_id": job_id, "outcome": "unknown"}
    return HTTPException(status_code=504, detail=detail)


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


async def _usable_job(request: Request, queue: ArqRedis, job_id: str) -> Job:
    """The job, when the caller may use it (see may_use_task); 404 otherwise, the
    answer for an unknown id, so nobody learns which ids others hold."""
    owner = await job_owner(queue, job_id)
    if not may_use_task(caller_of(request), owner, task_access(request)):
        raise HTTPException(status_code=404, detail=UNKNOWN_ID)
    return _job(queue, job_id)


@router.post(
    "/send-email",
    status_code=202,
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
    return await _enqueue(
        request,
        response,
        "send_email",
        idempotency_key,
        to=str(payload.to),
        subject=payload.subject,
        body=payload.body,
    )


@router.post(
    "/process-data",
    status_code=202,
    summary="Queue a data processing job",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 503)},
)
async def queue_process_data(
    payload: ProcessDataRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        request,
        response,
        "process_data",
        idempotency_key,
        data_id=payload.data_id,
        values=payload.values,
    )


@router.post(
    "/long-running",
    status_code=202,
    summary="Queue a long job that reports progress",
    responses={200: DUPLICATE, 504: UNCONFIRMED, **errors(413, 415, 503)},
)
async def queue_long_running(
    payload: LongRunningRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    return await _enqueue(
        request, response, "long_running_task", idempotency_key, steps=payload.steps
    )


@router.get(
    "/status/{task_id}",
    summary="A task's state and result",
    responses=errors(404, 503),
)
async def get_task_status(task_id: TaskId, request: Request) -> TaskStatus:
    """The task's state; its result once it succeeded; 404 for an unknown id."""
    job_id = task_id
    queue = queue_of(request)
    with queue_errors_as_503():
        job = await _usable_job(request, queue, job_id)
        state = await job.status()
        if state == JobStatus.not_found:
            raise HTTPException(status_code=404, detail=UNKNOWN_ID)
        answer = TaskStatus(task_id=job_id, status=_status_word(state))
        if state == JobStatus.complete:
            try:
                info = await job.result_info()
            except DeserializationError:
                logger.warning("job %s: stored result is not valid JSON", job_id)
                answer.success, answer.error = False, "failed"
                return answer
            if info is not None:  # None: the result expired a moment ago
                answer.tries = info.job_try
                answer.success = info.success
                if info.success:
                    answer.result = info.result
                else:
                    answer.error = _error_word(info.result)
        elif state == JobStatus.in_progress:
            answer.progress = _progress(await queue.get(progress_key(job_id)))
    return answer


@router.post(
    "/cancel/{task_id}",
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
    """Cancel a queued or running task, waiting up to `wait` seconds for the outcome.

    200 with `"cancelled": true` once this request stopped it; 409 when the task had
    finished (before the request, or first during the wait: `"cancelled"` says whether
    it ended cancelled); 202 when it has not stopped yet (the cancel stays asked for: a
    queued task is dropped when a worker reaches it).
    """
    job_id = task_id
    queue = queue_of(request)
    with queue_errors_as_503():
        job = await _usable_job(request, queue, job_id)
        state = await job.status()
        if state == JobStatus.not_found:
            raise HTTPException(status_code=404, detail=UNKNOWN_ID)
        finished_before = state == JobStatus.complete
        if not finished_before:
            # With JSON results abort() raises SerializationError even when the job
            # was aborted, and a timeout only means the worker has not reacted yet
            # (asyncio's TimeoutError differs from the builtin before Python 3.11).
            # The stored result below says what really happened.
            with contextlib.suppress(
                SerializationError, asyncio.TimeoutError, TimeoutError
            ):
                await job.abort(timeout=wait, poll_delay=CANCEL_POLL_SECONDS)
            state = await job.status()
        aborted = False
        if state == JobStatus.complete:
            try:
                info = await job.result_info()
            except DeserializationError:
                info = None
            aborted = (
                info is not None
                and not info.success
                and error_kind(info.result) == "aborted"
            )
            if not aborted:
                # The job finished before the worker saw the request, which arq then
                # keeps for good: a later job under this id would be dropped unrun.
                await queue.zrem(abort_jobs_ss, job_id)
    if state != JobStatus.complete:
        response.status_code = 202
    elif finished_before or not aborted:
        response.status_code = 409  # nothing left to stop, as celery's cancel answers
    return CancelResponse(
        task_id=task_id, cancelled=aborted, status=_status_word(state)
    )


class FailedEntry(BaseModel):
    """A job that failed for good ("failed"), was lost with its workers ("lost"), or
    a message dropped as poison ("poison": never run, its raw bytes in `raw`)."""

    id: str
    kind: str
    task: str
    args: list[Any]  # a job with personal data (send_email): each shown as hidden
    kwargs: dict[str, Any]
    error_type: str
    error: str
    traceback: str
    attempts: int
    first_failed_at: float  # Unix times
    last_failed_at: float
    worker: str
    replay_of: str | None = None  # the entry this job replayed
    replayed_as: str | None = None  # the job id of its latest replay
    replayed_at: float | None = None
    raw_size: int | None = None  # poison: its size in bytes
    raw: str | None = None  # poison: its first bytes, base64


class FailedPage(BaseModel):
    entries: list[FailedEntry]
    total: int  # entries kept
    dropped: int  # entries the limits removed so far


class Replayed(BaseModel):
    entry_id: str
    task_id: str  # the new job
    status_url: str


class EarlierReplay(BaseModel):
    message: str
    replayed_as: str  # the job id it was replayed as


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
    summary="Jobs that failed for good, newest first",
    responses=errors(503),
)
async def failed_list(
    request: Request,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=arq_inbox.MAX_PAGE)] = 20,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> FailedPage:
    """A page of the inbox, optionally of one task (its registered name); send_email's
    arguments are shown as hidden."""
    with queue_errors_as_503():
        found, total, dropped = await arq_inbox.page(
            queue_of(request), offset, limit, task
        )
    entries = [FailedEntry(**item) for item in found]
    return FailedPage(entries=entries, total=total, dropped=dropped)


@router.get(
    "/failed/{entry_id}",
    name="bgtasks_failed_entry",
    summary="One entry of the failed-task inbox",
    responses={404: NOT_IN_INBOX, **errors(503)},
)
async def failed_entry(entry_id: TaskId, request: Request) -> FailedEntry:
    with queue_errors_as_503():
        found = await arq_inbox.entry(queue_of(request), entry_id)
    if found is None:
        raise _not_in_inbox()
    return FailedEntry(**arq_inbox.public(found))


@router.post(
    "/failed/{entry_id}/replay",
    status_code=202,
    name="bgtasks_failed_replay",
    summary="Queue a failed job again, under a new job id",
    responses={
        404: NOT_IN_INBOX,
        409: {"model": ReplayConflict, "description": "Replayed before: its job id"},
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
    """Queue the entry's job with its arguments again; the new job is the caller's.
    Once per entry: again only with `force=true`. A failure of the new job is an
    entry of its own, with `replay_of` naming this one."""
    with queue_errors_as_503():
        try:
            task_id = await arq_inbox.replay_on(
                queue_of(request), entry_id, force, owner=caller_of(request)
            )
        except arq_inbox.ReplayRefused as refused:
            detail = {"message": str(refused), "replayed_as": refused.earlier}
            raise HTTPException(status_code=409, detail=detail) from None
        except LookupError:
            raise _not_in_inbox() from None
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        except EnqueueOutcomeUnknown as exc:
            raise _unconfirmed(exc.job_id) from None
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
async def failed_discard(entry_id: TaskId, request: Request) -> Response:
    with queue_errors_as_503():
        removed = await arq_inbox.discard(queue_of(request), entry_id)
    if not removed:
        raise _not_in_inbox()
    return Response(status_code=204)

"""Routes that hand work to FastAPI's BackgroundTasks and answer 202 at once.

A request body larger than MAX_BODY_BYTES is refused with 413 before it is read, and a
422 names what is wrong without echoing the input (see BoundedRoute). A POST must say
`Content-Type: application/json` (415 otherwise).

Who may call these routes is decided by `authorize_task_access` in
app.tasks.auth,
the one place to edit: as generated, callers send `Authorization: Bearer <token>`, the
token being the value of
BGTASKS_API_TOKEN; anything else is 401. Emails are limited per
caller (429 beyond EMAIL_RATE_LIMIT a window), counted in this process: BackgroundTasks
have no shared store, so each web process counts on its own. A limit at the proxy in
front is the exact one.

Idempotency: send an `Idempotency-Key` header (1-64 characters of A-Z a-z 0-9 _ . -)
to queue the work at most once per caller, route and key. A repeat within
IDEMPOTENCY_WINDOW_SECONDS answers 200 with the first answer and `"duplicate": true`,
and schedules nothing. Like the email limit, the keys are remembered in this process
only (at most IDEMPOTENCY_ENTRIES of them, the oldest forgotten first): a repeat that
reaches another web process, or comes after a restart, runs the work again.
"""

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    Header,
    HTTPException,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, EmailStr, Field
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from app.tasks import error_reporting
from app.tasks import notifications as jobs
from app.tasks.auth import Caller, authorize_task_access
from app.tasks.email import (
    checked_recipient,
    checked_subject,
    send_email,
)

# this process's error reports, the background tasks' included, once the DSN setting
# is set (error_reporting.py)
error_reporting.set_up("web")

# The largest request body read (413 beyond). The largest valid one is an email of
# 10 000 characters, which a client escaping every character as \uXXXX (12 bytes for
# an emoji's surrogate pair) sends as about 120 kB.
MAX_BODY_BYTES = 128 * 1024

# Emails one caller may queue per window, in this process (see above); the callers
# remembered are bounded, so a flood of distinct tokens cannot grow memory without end.
EMAIL_RATE_LIMIT = 20
EMAIL_RATE_WINDOW_SECONDS = 60.0
EMAIL_RATE_CALLERS = 10_000
_email_times: OrderedDict[str, deque[float]] = OrderedDict()


def count_email(caller: str) -> None:
    """One more email for `caller`; 429 when the window already holds the limit."""
    now = time.monotonic()
    times = _email_times.pop(caller, None) or deque()
    while times and now - times[0] >= EMAIL_RATE_WINDOW_SECONDS:
        times.popleft()
    _email_times[caller] = times  # the most recent caller last: evicted last
    if len(times) >= EMAIL_RATE_LIMIT:
        raise HTTPException(status_code=429, detail="Too many emails, try again later")
    times.append(now)
    while len(_email_times) > EMAIL_RATE_CALLERS:
        _email_times.popitem(last=False)


async def limit_email_rate(caller: Caller) -> None:
    count_email(caller)


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
    prefix="/notifications",
    tags=["notifications"],
    dependencies=[Depends(authorize_task_access)],
    route_class=BoundedRoute,
    responses=errors(401),
)

# Headers: one line each, also once encoded words are decoded (see the email module).
Recipient = Annotated[EmailStr, AfterValidator(checked_recipient)]


class EmailRequest(BaseModel):
    to: Recipient
    subject: Annotated[
        str, Field(min_length=1, max_length=200), AfterValidator(checked_subject)
    ]
    body: str = Field(min_length=1, max_length=10_000)


class NotificationRequest(BaseModel):
    user_id: int = Field(ge=1)
    message: str = Field(min_length=1, max_length=2_000)
    # also email the user when given
    email: Recipient | None = None


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str
    duplicate: bool = False  # true: a repeated Idempotency-Key, nothing queued again


# a repeated Idempotency-Key: the first answer, nothing scheduled again
DUPLICATE: dict[str, Any] = {
    "model": Accepted,
    "description": "Already queued with this Idempotency-Key: the first answer",
}


# How long, and for how many (caller, route, key) at most, this process remembers the
# first answer to an Idempotency-Key (see above).
IDEMPOTENCY_WINDOW_SECONDS = 3600.0
IDEMPOTENCY_ENTRIES = 10_000
# oldest first: an entry is never refreshed, so insertion order is time order
_answers: OrderedDict[tuple[str, str, str], tuple[float, Accepted]] = OrderedDict()

# The same header as the queue runners' routes take, validated by FastAPI.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
    ),
]


def repeated_answer(
    caller: str,
    route: str,
    key: str | None,
    response: Response,
) -> Accepted | None:
    """The first answer to `caller`'s `key` on `route` within the window, marked a
    duplicate (and the response made a 200); None when the work is to be queued."""
    now = time.monotonic()
    while _answers:
        at, _ = next(iter(_answers.values()))
        if now - at < IDEMPOTENCY_WINDOW_SECONDS:
            break
        _answers.popitem(last=False)
    found = _answers.get((caller, route, key)) if key else None
    if found is None:
        return None
    response.status_code = 200
    return Accepted(detail=found[1].detail, duplicate=True)


def remember_answer(
    caller: str,
    route: str,
    key: str | None,
    answer: Accepted,
) -> Accepted:
    """Keep `answer` for repeats of `key` (none without one); `answer` itself."""
    if key:
        _answers[(caller, route, key)] = (time.monotonic(), answer)
        while len(_answers) > IDEMPOTENCY_ENTRIES:
            _answers.popitem(last=False)
    return answer


@router.post(
    "/send-email",
    status_code=202,
    summary="Queue an email",
    dependencies=[Depends(limit_email_rate)],
    responses={200: DUPLICATE, **errors(413, 415, 429)},
)
async def send_email_later(
    request: EmailRequest,
    background_tasks: BackgroundTasks,
    response: Response,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Accepted:
    """Send an email after the response; failures are logged, never retried."""
    earlier = repeated_answer(caller, "send_email", idempotency_key, response)
    if earlier is not None:
        return earlier
    background_tasks.add_task(
        jobs.safely(send_email), str(request.to), request.subject, request.body
    )
    answer = Accepted(detail="the email will be sent after this response")
    return remember_answer(caller, "send_email", idempotency_key, answer)


@router.post(
    "/process",
    status_code=202,
    summary="Queue a notification",
    responses={200: DUPLICATE, **errors(413, 415, 429)},
)
async def process_later(
    request: NotificationRequest,
    background_tasks: BackgroundTasks,
    response: Response,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Accepted:
    """Process a notification (and email it) after the response, each job isolated."""
    earlier = repeated_answer(caller, "process", idempotency_key, response)
    if earlier is not None:
        return earlier  # before the email count: a repeat sends nothing
    if request.email is not None:
        count_email(caller)  # the copy by email counts like any other email
    background_tasks.add_task(
        jobs.safely(jobs.process_notification), request.user_id, request.message
    )
    if request.email is not None:
        background_tasks.add_task(
            jobs.safely(send_email),
            str(request.email),
            "New notification",
            request.message,
        )
    answer = Accepted(detail="the notification will be processed after this response")
    return remember_answer(caller, "process", idempotency_key, answer)

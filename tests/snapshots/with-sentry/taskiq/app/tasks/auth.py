"""Who may queue, read and cancel taskiq tasks: the hook every task route depends on.

Edit `authorize_task_access` below, nothing else: it is the one place that decides.
Clients send `Authorization: Bearer <token>` (the BGTASKS_API_TOKEN
setting) and `Content-Type: application/json`.
"""

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from app.core.config import settings
from app.tasks import taskiq_dashboard as dashboard

logger = logging.getLogger(__name__)


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

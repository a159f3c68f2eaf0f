"""Who may queue background work: the hook every generated task route depends on.

Edit `authorize_task_access` below, nothing else: it is the one place that decides.
Clients send `Content-Type: application/json` and `Authorization: Bearer <token>`,
the token being the value of
BGTASKS_API_TOKEN.
"""

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from app.core.config import settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskAccess:
    """What a request to the task routes asks for."""

    action: str  # "queue": these routes only queue work
    task_id: str | None  # the task it reads or cancels; None when queueing


def task_access(request: Request) -> TaskAccess:
    """The action and task id of a request, from its method and path."""
    del request  # every route here queues
    return TaskAccess("queue", None)


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

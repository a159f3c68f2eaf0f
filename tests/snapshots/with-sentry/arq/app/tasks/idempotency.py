"""Idempotency keys, scoped per caller, and the job ids derived from them.

A key is only unique to the caller who sent it: two callers who pick the same key get
two jobs, so nobody can claim a key first to make a later request of someone else
answer "duplicate" (and never run). The job id is `<function>:<HMAC-SHA256 of caller,
function and key>`, so it cannot be guessed from the key either. The caller is the
identity the router's auth hook returns: `token:<hash of the API token>` as generated
(never the token itself), the client address when anonymous access is allowed, or
whatever the hook returns once it knows your users.

The HMAC secret is the `BGTASKS_JOB_ID_SECRET` environment variable (set it to a long
random value, the same for every web process of one deployment). Without it, a random
secret is created once in Redis (`bgtasks:job-id-secret`) and shared by every process
that uses that Redis: job ids then stay unguessable to API clients, but anyone who can
read Redis can read the secret (and the jobs). Changing the secret only means that a
key sent before the change enqueues a new job.
"""

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from arq.connections import ArqRedis

SECRET_ENV = "BGTASKS_JOB_ID_SECRET"
SECRET_REDIS_KEY = "bgtasks:job-id-secret"
_CACHE_ATTRIBUTE = "bgtasks_job_id_secret"


@dataclass(frozen=True)
class IdempotencyScope:
    """An `Idempotency-Key` header together with the caller who sent it."""

    caller: str
    key: str


async def job_id_secret(queue: ArqRedis) -> bytes:
    """The HMAC secret: the environment variable, else the one kept in Redis."""
    configured = os.environ.get(SECRET_ENV, "")
    if configured:
        return configured.encode()
    cached = getattr(queue, _CACHE_ATTRIBUTE, None)
    if isinstance(cached, bytes):
        return cached
    # NX: the first process to ask creates it, every other one reads that same value
    await queue.set(SECRET_REDIS_KEY, secrets.token_hex(32), nx=True)
    stored = await queue.get(SECRET_REDIS_KEY)
    if not stored:
        raise RuntimeError(f"{SECRET_REDIS_KEY} vanished from Redis")
    secret = bytes(stored)
    setattr(queue, _CACHE_ATTRIBUTE, secret)
    return secret


def scoped_job_id(secret: bytes, function: str, scope: IdempotencyScope) -> str:
    """The job id for `scope`'s key sent to `function`: the same for the same caller,
    function and key, unrelated for any other caller."""
    # JSON keeps the three parts apart whatever characters the caller's identity holds
    message = json.dumps([scope.caller, function, scope.key]).encode()
    digest = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return f"{function}:{digest}"

"""Task bookkeeping in Redis: issued ids, cancel flags, liveness, the beat lock, and
whether an email task's message may already have gone out.

Celery reports an id it has never seen as PENDING forever, so the API records every
id it hands out, with the caller who queued it (its owner), and answers 404 for the
rest. An Idempotency-Key is claimed here too (claim_key): the id of the task it
queued, for as long as that task's record lasts. A running task cannot be revoked
safely (terminate=True kills the process mid-write), so cancel sets a flag the task
checks.

A running task keeps a short-lived "alive" key fresh (see liveness.py): once its worker
is gone the key expires, and the API reports the task as lost instead of progressing.
One `celery beat` at a time holds the beat lock (see beat_lock.py).

One connection pool per process, created on first use and shared by all threads; the
result backend's Redis (a Redis URL with either broker) holds these keys. The API's
reads (status, cancel, the email rate limit) use redis.asyncio instead (async_client),
each bounded by READ_TIMEOUT: a stalled Redis answers 503 at once and holds neither
the request nor a thread of FastAPI's threadpool.
"""

import asyncio
import hashlib
import json
import threading
import time
import weakref
from collections.abc import Awaitable, MutableMapping
from dataclasses import dataclass
from typing import TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.config import settings

KEY_PREFIX = "bgtasks:celery"
# The longest the API waits for one read of this Redis (status, cancel, rate limit).
READ_TIMEOUT = 0.5
# An issued-id record's value: the owner after this prefix, or "1" for a task queued
# by other code than the API (no owner: every caller the API admits may read it).
OWNER_PREFIX = "by:"
NO_OWNER = "1"
_lock = threading.Lock()
_client: redis.Redis | None = None


def client() -> redis.Redis:
    """The process-wide Redis client; its pool is bounded and its sockets time out."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                pool = redis.BlockingConnectionPool.from_url(
                    str(settings.CELERY_RESULT_BACKEND),
                    max_connections=50,
                    timeout=5,  # seconds to wait for a free connection
                    socket_timeout=5,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                )
                _client = redis.Redis(connection_pool=pool)
    return _client


def _issued_key(task_id: str) -> str:
    return f"{KEY_PREFIX}:issued:{task_id}"


def issued_key(task_id: str) -> str:
    """The key recording an issued id (fast_publish writes it with the message)."""
    return _issued_key(task_id)


def _cancel_key(task_id: str) -> str:
    return f"{KEY_PREFIX}:cancel:{task_id}"


def issued_value(owner: str | None) -> str:
    """What an issued-id record holds for a task `owner` queued (None: no owner)."""
    return OWNER_PREFIX + owner if owner else NO_OWNER


def owner_in(value: object) -> str | None:
    """The owner an issued-id record's value names; None for a task without one."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text[len(OWNER_PREFIX) :] if text.startswith(OWNER_PREFIX) else None


def claim_key(caller: str, task_name: str, key: str) -> str:
    """The key claiming an Idempotency-Key sent by `caller` to queue `task_name`: its
    value is the id of the task queued with it. Another caller's same key is another
    claim; a hash, so neither the key nor the caller is spelled out in Redis."""
    # JSON keeps the three parts apart whatever characters the caller's identity holds
    parts = json.dumps([caller, task_name, key]).encode()
    return f"{KEY_PREFIX}:key:{hashlib.sha256(parts).hexdigest()}"


# Claim KEYS[1] for ARGV[1] unless held (then its holder is the answer), and record the
# issued id KEYS[2] with ARGV[2], both for ARGV[3] seconds: in one step.
_CLAIM_AND_REMEMBER = """
local held = redis.call('GET', KEYS[1])
if held then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return ''
"""
# Release a claim only if it still names this task.
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def remember(
    task_id: str, ttl: int, owner: str | None = None, claim: str | None = None
) -> str | None:
    """Record an id this API is about to hand out (before publishing the task), with
    its owner. With `claim` (see claim_key), only if no earlier task holds that claim:
    then nothing is recorded and that task's id is returned."""
    if claim is None:
        client().set(_issued_key(task_id), issued_value(owner), ex=ttl)
        return None
    held = client().eval(
        _CLAIM_AND_REMEMBER,
        2,
        claim,
        _issued_key(task_id),
        task_id,
        issued_value(owner),
        ttl,
    )
    text = held.decode() if isinstance(held, bytes) else str(held or "")
    return text or None


def forget(task_id: str, claim: str | None = None) -> None:
    """Remove an id's record (its task was never published), and its claim if given."""
    client().delete(_issued_key(task_id))
    if claim is not None:
        client().eval(_RELEASE_CLAIM, 1, claim, task_id)


def was_issued(task_id: str) -> bool:
    return bool(client().exists(_issued_key(task_id)))


def request_cancel(task_id: str, ttl: int) -> None:
    client().set(_cancel_key(task_id), 1, ex=ttl)


def cancel_requested(task_id: str) -> bool:
    return bool(client().exists(_cancel_key(task_id)))


def _mail_key(task_id: str) -> str:
    return f"{KEY_PREFIX}:mail:{task_id}"


# What became of an email task's message: MAIL_MAYBE_SENT from the moment the end of
# its data goes to the SMTP server until the server answers, then MAIL_SENT (or no
# record, when the server refused it).
MAIL_MAYBE_SENT = "may-have-been-sent"
MAIL_SENT = "sent"


def record_mail(task_id: str, outcome: str, ttl: int) -> None:
    client().set(_mail_key(task_id), outcome, ex=ttl)


def mail_outcome(task_id: str) -> str | None:
    outcome = client().get(_mail_key(task_id))
    return outcome.decode() if isinstance(outcome, bytes) else None


def forget_mail(task_id: str) -> None:
    client().delete(_mail_key(task_id))


def _alive_key(task_id: str) -> str:
    return f"{KEY_PREFIX}:alive:{task_id}"


def alive_key(task_id: str) -> str:
    """The key a running task keeps fresh (the dashboard reads it)."""
    return _alive_key(task_id)


def _started_key(task_id: str) -> str:
    return f"{KEY_PREFIX}:started:{task_id}"


def record_start(task_id: str, alive_ttl: int, ttl: int) -> None:
    """Note when a run of the task started, and that it is alive for now."""
    pipe = client().pipeline()
    pipe.set(_started_key(task_id), repr(time.time()), ex=ttl)
    pipe.set(_alive_key(task_id), 1, ex=alive_ttl)
    pipe.execute()


def keep_alive(task_ids: list[str], alive_ttl: int) -> None:
    pipe = client().pipeline()
    for task_id in task_ids:
        pipe.set(_alive_key(task_id), 1, ex=alive_ttl)
    pipe.execute()


def record_end(task_id: str) -> None:
    client().delete(_alive_key(task_id))


def liveness(task_id: str) -> tuple[bool, float | None]:
    """(a worker is running it, when its latest run started as a Unix time)."""
    alive, started = client().mget(_alive_key(task_id), _started_key(task_id))
    return alive is not None, float(started) if started is not None else None


def _lock_key(name: str) -> str:
    return f"{KEY_PREFIX}:lock:{name}"


# Compare-and-act on the lock's value: only the holder may extend or release it.
_REFRESH_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def take_lock(name: str, token: str, ttl: int) -> bool:
    """Take the lock if it is free, or extend it if `token` already holds it."""
    key = _lock_key(name)
    if client().set(key, token, ex=ttl, nx=True):
        return True
    return bool(client().eval(_REFRESH_LOCK, 1, key, token, ttl))


def release_lock(name: str, token: str) -> None:
    client().eval(_RELEASE_LOCK, 1, _lock_key(name), token)


def lock_holder(name: str) -> str | None:
    holder = client().get(_lock_key(name))
    return holder.decode() if isinstance(holder, bytes) else None


def hit(key: str, window_seconds: int) -> int:
    """Count one event in a fixed time window; returns the count so far."""
    full_key = f"{KEY_PREFIX}:rate:{key}"
    pipe = client().pipeline()
    # SET NX EX starts the window with its expiry in one step; INCR keeps the TTL.
    pipe.set(full_key, 0, ex=window_seconds, nx=True)
    pipe.incr(full_key)
    _, count = pipe.execute()
    return int(count)


# The API's side: redis.asyncio, one client per event loop, every call bounded.
_async_clients: MutableMapping[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)
T = TypeVar("T")


def async_client() -> redis.asyncio.Redis:
    """This event loop's client of the same Redis as client(): short timeouts, and no
    retries (a read that timed out is answered 503, not tried again meanwhile)."""
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            str(settings.CELERY_RESULT_BACKEND),
            max_connections=50,
            timeout=READ_TIMEOUT,  # to wait for a free connection
            socket_timeout=READ_TIMEOUT,
            socket_connect_timeout=READ_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        found = _async_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return found


async def aclose() -> None:
    """Close this event loop's async connections (the app's shutdown)."""
    found = _async_clients.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.connection_pool.disconnect()


async def bounded(call: Awaitable[T]) -> T:
    """Await one call to Redis for at most READ_TIMEOUT: RedisTimeoutError beyond."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            return await call
    except TimeoutError:
        raise RedisTimeoutError("Redis did not answer in time") from None


@dataclass(frozen=True)
class TaskRecord:
    """What Redis holds on a task, read at once: its issued-id record, the result
    backend's value for it, and its liveness."""

    issued: bool
    owner: str | None
    meta: bytes | None  # the result backend's raw value
    alive: bool
    started_at: float | None


async def read_task(task_id: str, meta_key: bytes | None) -> TaskRecord:
    """One round trip: whether the id was issued and to whom, the value the result
    backend stores under `meta_key` (None: a result backend elsewhere), and the
    task's liveness."""
    keys = [_issued_key(task_id), _alive_key(task_id), _started_key(task_id)]
    if meta_key is not None:
        keys.append(meta_key.decode())
    values = await bounded(async_client().mget(keys))
    issued, alive, started = values[:3]
    meta = values[3] if meta_key is not None else None
    return TaskRecord(
        issued=issued is not None,
        owner=None if issued is None else owner_in(issued),
        meta=meta if isinstance(meta, bytes) else None,
        alive=alive is not None,
        started_at=float(started) if started is not None else None,
    )


async def read_meta(meta_key: bytes) -> bytes | None:
    """The result backend's value under `meta_key` (None: nothing stored yet)."""
    value = await bounded(async_client().get(meta_key.decode()))
    return value if isinstance(value, bytes) else None


async def request_cancel_then_read(
    task_id: str, ttl: int, meta_key: bytes | None
) -> bytes | None:
    """Set the cancel flag, then read the result backend's value under `meta_key`
    (None: not here, nothing read): in that order, in one round trip, so a task that
    starts after the flag was set skips its run."""
    async with async_client().pipeline(transaction=True) as pipe:
        pipe.set(_cancel_key(task_id), 1, ex=ttl)
        if meta_key is not None:
            pipe.get(meta_key.decode())
        answers = await bounded(pipe.execute())
    meta = answers[1] if meta_key is not None else None
    return meta if isinstance(meta, bytes) else None


async def hit_async(key: str, window_seconds: int) -> int:
    """hit() for the API: count one event in a fixed time window, bounded."""
    full_key = f"{KEY_PREFIX}:rate:{key}"
    async with async_client().pipeline(transaction=True) as pipe:
        pipe.set(full_key, 0, ex=window_seconds, nx=True)
        pipe.incr(full_key)
        _, count = await bounded(pipe.execute())
    return int(count)

"""Task bookkeeping in Redis: issued ids, cancel flags, liveness, the beat lock, and
whether an email task's message may already have gone out.

Celery reports an id it has never seen as PENDING forever, so the API records every
id it hands out and answers 404 for the rest. A running task cannot be revoked safely
(terminate=True kills the process mid-write), so cancel sets a flag the task checks.

A running task keeps a short-lived "alive" key fresh (see liveness.py): once its worker
is gone the key expires, and the API reports the task as lost instead of progressing.
One `celery beat` at a time holds the beat lock (see beat_lock.py).

One connection pool per process, created on first use and shared by all threads; the
result backend's Redis (a Redis URL with either broker) holds these keys.
"""

import threading
import time

import redis

from app.core.config import settings

KEY_PREFIX = "bgtasks:celery"
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


def remember(task_id: str, ttl: int) -> None:
    """Record an id this API is about to hand out (before publishing the task)."""
    client().set(_issued_key(task_id), 1, ex=ttl)


def forget(task_id: str) -> None:
    client().delete(_issued_key(task_id))


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

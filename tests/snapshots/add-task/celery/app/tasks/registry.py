"""Task bookkeeping in Redis: the ids the API issued, and cooperative cancel flags.

Celery reports an id it has never seen as PENDING forever, so the API records every
id it hands out and answers 404 for the rest. A running task cannot be revoked safely
(terminate=True kills the process mid-write), so cancel sets a flag the task checks.

One connection pool per process, created on first use and shared by all threads; the
result backend's Redis (a Redis URL with either broker) holds these keys.
"""

import threading

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


def hit(key: str, window_seconds: int) -> int:
    """Count one event in a fixed time window; returns the count so far."""
    full_key = f"{KEY_PREFIX}:rate:{key}"
    pipe = client().pipeline()
    # SET NX EX starts the window with its expiry in one step; INCR keeps the TTL.
    pipe.set(full_key, 0, ex=window_seconds, nx=True)
    pipe.incr(full_key)
    _, count = pipe.execute()
    return int(count)

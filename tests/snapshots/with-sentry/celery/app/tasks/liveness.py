"""Liveness of running tasks, so the API can tell a lost task from a slow one.

A worker killed outright (SIGKILL, OOM kill, a host that vanished) leaves its task's
last STARTED or PROGRESS state in the result backend, and on Redis the message waits
the whole visibility timeout before another worker gets it. While a task runs, a
thread in the process running it refreshes an "alive" key with a short TTL; when the
process dies the key expires within ALIVE_TTL seconds, and the status API reports the
task as lost, with the time its message is due to be delivered again.
"""

import logging
import os
import threading

from redis.exceptions import RedisError

from app.tasks import registry

logger = logging.getLogger(__name__)

# Refresh every REFRESH_SECONDS; a key not refreshed for ALIVE_TTL seconds means the
# process that ran the task is gone (three missed refreshes, not one slow one).
REFRESH_SECONDS = 5
ALIVE_TTL = 15

_lock = threading.Lock()
_running: set[str] = set()
_wake = threading.Event()
_thread_pid = 0


def task_started(task_id: str, record_ttl: int) -> None:
    """Mark a run as alive and keep it so until task_finished (call in the process
    that runs the task)."""
    global _thread_pid
    with _lock:
        _running.add(task_id)
        # A forked pool process inherits the set but not the thread: start its own.
        if _thread_pid != os.getpid():
            _thread_pid = os.getpid()
            threading.Thread(
                target=_refresh_forever, name="bgtasks-liveness", daemon=True
            ).start()
    try:
        registry.record_start(task_id, alive_ttl=ALIVE_TTL, ttl=record_ttl)
    except RedisError:
        logger.warning("could not record the start of task %s", task_id)


def task_finished(task_id: str) -> None:
    with _lock:
        _running.discard(task_id)
    try:
        registry.record_end(task_id)
    except RedisError:
        # The key expires by itself; until then the task still reads as alive.
        logger.warning("could not clear the alive key of task %s", task_id)


def _refresh_forever() -> None:
    while not _wake.wait(REFRESH_SECONDS):
        with _lock:
            task_ids = sorted(_running)
        if not task_ids:
            continue
        try:
            registry.keep_alive(task_ids, alive_ttl=ALIVE_TTL)
        except RedisError:
            logger.warning("could not refresh %d alive key(s)", len(task_ids))

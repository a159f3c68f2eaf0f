"""Keep the worker alive when a message on its queue is not a task it can run.

Celery itself drops some bad messages (an unknown task name, a body that is not
JSON) but dies on others, and a message that kills the worker before it is
acknowledged is restored on the next start and kills it again. Messages come from
anything that can write to the broker, so every task checks its message's shape before
Celery reads it, and a message that fails is rejected without requeue (dropped), logged
with its task id, and recorded as FAILURE so a status request does not wait forever.

GuardedRedisTransport does the same one step earlier: an entry on the queue that is not
a kombu envelope at all (not JSON) is dropped with a log line, where kombu would raise
out of the worker's event loop.
"""

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import InvalidTaskError
from celery.worker import strategy
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class MalformedMessage(Exception):
    """The stored outcome of a message that was dropped before its task could run."""


def problem_with(message: Any) -> str | None:
    """Why Celery could not run this message (protocol 2), or None when it can."""
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        return "its headers carry no task id"
    try:
        payload = message.payload
    except Exception as exc:  # any decoding failure: the body cannot be read
        logger.debug("undecodable message body", exc_info=True)
        return f"its body cannot be decoded ({type(exc).__name__})"
    if isinstance(payload, dict) and "args" in payload:
        return None  # protocol 1: Celery converts and checks it itself
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        return "its body is not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return "its args are not a list or its kwargs not an object"
    if embed is not None and not isinstance(embed, dict):
        return "its embed (callbacks, chain) is not an object"
    return None


def guarded_strategy(
    task: Task, app: Celery, consumer: Any, **options: Any
) -> Callable[..., Any]:
    """Celery's default strategy behind a shape check (Task.Strategy points here)."""
    handle = strategy.default(task, app, consumer, **options)

    def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        problem = problem_with(message)
        if problem is None:
            return handle(message, body, *args, **kwargs)
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        logger.error(
            "dropped a malformed %s message (task id %s): %s",
            task.name,
            task_id,
            problem,
        )
        if isinstance(task_id, str):
            try:
                task.backend.mark_as_failure(task_id, MalformedMessage(problem))
            except Exception:  # the drop matters more than the record
                logger.warning(
                    "could not record FAILURE for task %s", task_id, exc_info=True
                )
        # Celery's consumer answers this error with a reject without requeue.
        raise InvalidTaskError(f"malformed message for {task.name}: {problem}")

    return on_message


class GuardedRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, minus the crash on a queue entry that is not a message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        read = self.handlers["BRPOP"]

        def guarded_read(**options: Any) -> Any:
            try:
                return read(**options)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                problem = type(exc).__name__
            # BRPOP already removed the entry: nothing is left to requeue.
            logger.error("dropped a queue entry that is not a message (%s)", problem)
            return False

        self.handlers["BRPOP"] = guarded_read


class GuardedRedisTransport(kombu_redis.Transport):
    Channel = GuardedRedisChannel

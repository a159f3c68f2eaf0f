"""Keep the worker alive when a message on its queue is not a task it can run.

Celery itself drops some bad messages (an unknown task name, a body that is not
JSON) but dies on others, and a message that kills the worker before it is
acknowledged is restored on the next start and kills it again. Messages come from
anything that can write to the broker, so every task checks its message's shape before
Celery reads it, and a message that fails is rejected without requeue (dropped), logged
with its task id, and recorded as FAILURE so a status request does not wait forever.
Every message dropped here lands in the failed-task inbox (celery_inbox.py) as poison:
the reason and its raw bytes, never run.

GuardedRedisTransport does the same one step earlier: an entry on the queue that is not
a kombu envelope at all (not JSON) is dropped with a log line, where kombu would raise
out of the worker's event loop.
"""

import logging
import math
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import InvalidTaskError
from celery.utils.iso8601 import parse_iso8601
from celery.worker import strategy
from kombu.transport import redis as kombu_redis

from app.tasks import celery_inbox

logger = logging.getLogger(__name__)


class MalformedMessage(Exception):
    """The stored outcome of a message that was dropped before its task could run."""


def raw_body(message: Any) -> bytes:
    """A message's body as it came (bytes), for the failed-task inbox."""
    body = getattr(message, "body", b"")
    if isinstance(body, str):
        return body.encode("utf-8", "replace")
    return bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else b""


def problem_with(message: Any) -> str | None:
    """Why Celery could not run this message (protocol 2), or None when it can."""
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        return "its headers carry no task id"
    problem = problem_with_headers(headers)
    if problem is not None:
        return problem
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


# Header fields that hold a task id or a name: the worker, the result backend and the
# events use them as strings.
TEXT_HEADERS = ("task", "root_id", "parent_id", "group", "shadow")


def problem_with_headers(headers: dict[str, Any]) -> str | None:
    """Why the worker could not use these headers, or None when it can.

    The worker converts eta, expires, timelimit and retries without checking them
    first; a bad value there raises in the worker's main process (a timelimit of
    ["a", "b"] stops it) instead of failing one task. (A countdown is no header: the
    client turns it into an eta before it publishes.)
    """
    for name in TEXT_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"its {name} is not a string"
    for name in ("eta", "expires"):
        if not _is_time(headers.get(name)):
            return f"its {name} is not an ISO 8601 time"
    timelimit = headers.get("timelimit")
    if timelimit is not None and timelimit != []:
        if not isinstance(timelimit, (list, tuple)) or len(timelimit) != 2:
            return "its timelimit is not [hard, soft]"
        if not all(limit is None or _is_seconds(limit) for limit in timelimit):
            return "its timelimit holds something other than seconds"
    retries = headers.get("retries")
    if retries is not None and not (
        isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0
    ):
        return "its retries is not a count"
    return None


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_time(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        when = parse_iso8601(value)
        # The worker converts it to the system's time zone, then to a timestamp: this
        # fails where that would.
        when.astimezone().timestamp()
    except (ValueError, TypeError, OverflowError):
        return False
    return True


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
        celery_inbox.keep_poison(problem, raw_body(message), task_id, task.name)
        # Celery's consumer answers this error with a reject without requeue.
        raise InvalidTaskError(f"malformed message for {task.name}: {problem}")

    return on_message


class GuardedRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, minus the crash on a queue entry that is not a message."""

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        def guarded(message: Any) -> Any:
            headers = message.headers
            task = headers.get("task") if isinstance(headers, dict) else None
            if task is not None and not isinstance(task, str):
                # Celery looks the task up by this name before any task's check runs
                # (a list there raises in the worker's event loop).
                logger.error(
                    "dropped a malformed message (task id %s): "
                    "its task is not a string",
                    headers.get("id"),
                )
                celery_inbox.keep_poison(
                    "its task is not a string", raw_body(message), headers.get("id")
                )
                message.ack()
                return None
            return callback(message)

        return super().basic_consume(queue, no_ack, guarded, consumer_tag, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        read = self.handlers["BRPOP"]
        replies: list[Any] = []

        def guarded_read(**options: Any) -> Any:
            replies.clear()
            _note_replies(self.client, replies)
            try:
                return read(**options)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                problem = type(exc).__name__
            # BRPOP already removed the entry: nothing is left to requeue.
            logger.error("dropped a queue entry that is not a message (%s)", problem)
            reason = f"its queue entry is not a message ({problem})"
            celery_inbox.keep_poison(reason, _popped(replies))
            return False

        self.handlers["BRPOP"] = guarded_read


def _note_replies(client: Any, replies: list[Any]) -> None:
    """Have `client` note its BRPOP replies in `replies`: kombu parses the entry it
    popped in the same call, so a raw entry that is not a message is kept only here."""
    if getattr(client.parse_response, "bgtasks_notes", None) is replies:
        return
    parse = client.parse_response

    def noted(connection: Any, command: Any, **options: Any) -> Any:
        reply = parse(connection, command, **options)
        if command == "BRPOP":
            replies.append(reply)
        return reply

    noted.bgtasks_notes = replies  # type: ignore[attr-defined]
    client.parse_response = noted


def _popped(replies: list[Any]) -> bytes:
    """The raw entry of the last BRPOP reply noted (queue name, entry), or b""."""
    reply = replies[-1] if replies else None
    if not isinstance(reply, (list, tuple)) or len(reply) != 2:
        return b""
    raw = reply[1]
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")


class GuardedRedisTransport(kombu_redis.Transport):
    Channel = GuardedRedisChannel

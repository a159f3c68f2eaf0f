"""The failed-task inbox: what failed for good, kept for an operator.

A task that failed after its last retry, a message the worker's guards dropped as
poison (with the reason and its raw size; a body that cannot be parsed is kept as at
most MAX_RAW_BYTES of bytes, never executed), or a task whose worker died and that will
not be delivered again lands here: one JSON entry per task id in Redis, with its task
name, arguments, error type and message, a bounded traceback summary, attempts, first
and last failure time and the worker that saw it.

Bounded twice, in one atomic script per write: entries older than the retention go,
and beyond the maximum number of entries the oldest go; `dropped` counts both. Both
limits are settings (BGTASKS_FAILED_MAX_ENTRIES,
BGTASKS_FAILED_RETENTION_SECONDS).

The arguments of tasks that carry personal data (PRIVATE_TASKS) are kept for replay
and never shown: `public(entry)` is what listings, logs and the dashboard get.

The same Redis keeps the task board the dashboard reads (at the end of this module):
the runs going on now, the recent outcomes, and which workers and schedulers are alive.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import traceback
from typing import Any

import redis.asyncio
from celery import Task
from celery.exceptions import WorkerLostError
from celery.utils import uuid
from celery.utils.log import get_logger

from app.core.config import settings
from app.tasks import registry

PREFIX = "bgtasks:celery:failed"  # one inbox per runner of a project
INDEX_KEY = f"{PREFIX}:index"  # sorted set: entry id by its last failure time
DROPPED_KEY = f"{PREFIX}:dropped"  # how many entries the limits have removed
ENTRY_PREFIX = f"{PREFIX}:entry:"
REPLAY_OF_PREFIX = (
    f"{PREFIX}:replay-of:"  # a replayed task's id -> the entry it replays
)
MAX_MESSAGE_CHARS = 1_000
MAX_TRACEBACK_CHARS = 4_000
MAX_RAW_BYTES = 4_096
MAX_PAGE = 100
# tasks whose arguments are personal data: kept for replay, never listed or logged
PRIVATE_TASKS = frozenset({"app.tasks.tasks.send_email"})
HIDDEN = "<hidden: personal data>"

# One write: the entry (merged with an earlier one of the same id: its first failure
# stays), the link to the entry it replays, the index, then both limits. KEYS: index,
# dropped, the entry, its replay link. ARGV: entry prefix, id, entry JSON, now,
# retention seconds, max entries. (The limits name old entries' keys from the prefix:
# one Redis, not a cluster.)
_RECORD = """
local prefix, id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local retention, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local entry = cjson.decode(ARGV[3])
local earlier = redis.call('GET', KEYS[3])
if earlier then
  local old = cjson.decode(earlier)
  entry['first_failed_at'] = old['first_failed_at'] or entry['first_failed_at']
end
local of = redis.call('GET', KEYS[4])
if of then
  entry['replay_of'] = of
end
redis.call('SET', KEYS[3], cjson.encode(entry), 'EX', retention)
redis.call('ZADD', KEYS[1], now, id)
local dropped = 0
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - retention)) do
  redis.call('DEL', prefix .. old)
  dropped = dropped + 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention)
local over = redis.call('ZCARD', KEYS[1]) - limit
if over > 0 then
  for i, old in ipairs(redis.call('ZPOPMIN', KEYS[1], over)) do
    if i % 2 == 1 then
      redis.call('DEL', prefix .. old)
      dropped = dropped + 1
    end
  end
end
if dropped > 0 then
  redis.call('INCRBY', KEYS[2], dropped)
end
return dropped
"""

# Mark an entry replayed as a new task id, once, and link the new id back to it:
# returns the id it was already replayed as (the caller then refuses unless forced),
# or "" when marked now; nil when the entry is gone. KEYS: the entry, the new id's
# replay link. ARGV: entry id, new id, now, force ("1" or "0"), retention seconds.
_MARK_REPLAYED = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  return nil
end
local entry = cjson.decode(raw)
local before = entry['replayed_as']
if before and before ~= cjson.null and ARGV[4] ~= '1' then
  return before
end
entry['replayed_as'] = ARGV[2]
entry['replayed_at'] = tonumber(ARGV[3])
redis.call('SET', KEYS[1], cjson.encode(entry), 'KEEPTTL')
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[5]))
return ''
"""


def inbox_limits() -> tuple[int, int]:
    """(max entries, retention seconds), from the settings: at least 1 each."""
    config = settings
    return (
        max(1, int(config.BGTASKS_FAILED_MAX_ENTRIES)),
        max(1, int(config.BGTASKS_FAILED_RETENTION_SECONDS)),
    )


def worker_name() -> str:
    """Who saw the failure: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_entry(
    task_id: str,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    error: BaseException,
    attempts: int,
    kind: str = "failed",
) -> dict[str, Any]:
    """The entry of a task that failed for good (`kind` "failed"), or was lost with
    its worker and will not be delivered again ("lost")."""
    now = time.time()
    summary = "".join(
        traceback.format_exception(type(error), error, error.__traceback__)
    )
    return {
        "id": task_id,
        "kind": kind,
        "task": task,
        "args": args,
        "kwargs": kwargs,
        "error_type": type(error).__name__,
        "error": _bounded(str(error), MAX_MESSAGE_CHARS),
        # the end of the traceback is where the error is: keep that part
        "traceback": summary[-MAX_TRACEBACK_CHARS:],
        "attempts": attempts,
        "first_failed_at": now,
        "last_failed_at": now,
        "worker": worker_name(),
        "replay_of": None,
        "replayed_as": None,
    }


def poison_entry(
    entry_id: str, reason: str, raw: bytes, task: str = ""
) -> dict[str, Any]:
    """The entry of a message dropped as poison: the reason and its raw size, and at
    most MAX_RAW_BYTES of it as base64 (kept to read, never run: no arguments)."""
    now = time.time()
    return {
        "id": entry_id,
        "kind": "poison",
        "task": task,
        "args": [],
        "kwargs": {},
        "error_type": "Poison",
        "error": _bounded(reason, MAX_MESSAGE_CHARS),
        "traceback": "",
        "attempts": 1,
        "first_failed_at": now,
        "last_failed_at": now,
        "worker": worker_name(),
        "raw_size": len(raw),
        "raw": base64.b64encode(raw[:MAX_RAW_BYTES]).decode("ascii"),
        "replay_of": None,
        "replayed_as": None,
    }


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as listings show it: a private task's arguments hidden."""
    if entry.get("task") not in PRIVATE_TASKS:
        return entry
    args = [HIDDEN for _ in entry.get("args") or []]
    kwargs = {name: HIDDEN for name in entry.get("kwargs") or {}}
    return {**entry, "args": args, "kwargs": kwargs}


def record_arguments(entry: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the record script for `entry`."""
    max_entries, retention = inbox_limits()
    now = float(entry.get("last_failed_at") or time.time())
    body = json.dumps(entry, default=str)
    keys = [
        INDEX_KEY,
        DROPPED_KEY,
        ENTRY_PREFIX + entry["id"],
        REPLAY_OF_PREFIX + entry["id"],
    ]
    return keys, [ENTRY_PREFIX, entry["id"], body, now, retention, max_entries]


def record(client: Any, entry: dict[str, Any]) -> int:
    """Keep `entry` (a synchronous redis client: a Celery worker); returns how many
    older entries the limits removed."""
    keys, argv = record_arguments(entry)
    return int(client.eval(_RECORD, len(keys), *keys, *argv))


async def arecord(client: Any, entry: dict[str, Any]) -> int:
    """`record` for an asyncio redis client (arq, taskiq, the web app)."""
    keys, argv = record_arguments(entry)
    return int(await client.eval(_RECORD, len(keys), *keys, *argv))


def _decoded(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    # Redis' Lua JSON writes an empty list back as {}: read both as empty
    entry["args"] = list(entry.get("args") or [])
    entry["kwargs"] = dict(entry.get("kwargs") or {})
    return entry


async def entry(client: Any, entry_id: str) -> dict[str, Any] | None:
    """One entry, arguments included (for replay); None when it is not kept."""
    return _decoded(await client.get(ENTRY_PREFIX + entry_id))


async def page(
    client: Any, offset: int = 0, limit: int = 20, task: str | None = None
) -> tuple[list[dict[str, Any]], int, int]:
    """Entries newest first, as listings show them (`public`), optionally of one task:
    (entries, total kept, dropped so far)."""
    limit = max(1, min(limit, MAX_PAGE))
    total = int(await client.zcard(INDEX_KEY))
    dropped = int(await client.get(DROPPED_KEY) or 0)
    found: list[dict[str, Any]] = []
    skipped = 0
    start = 0
    # without a filter one range read is the page; with one, walk in chunks
    chunk = limit + offset if task is None else 200
    while len(found) < limit:
        ids = await client.zrevrange(INDEX_KEY, start, start + chunk - 1)
        if not ids:
            break
        start += len(ids)
        raws = await client.mget([ENTRY_PREFIX + _text(i) for i in ids])
        for raw in raws:
            item = _decoded(raw)
            if item is None or (task is not None and item.get("task") != task):
                continue
            if skipped < offset:
                skipped += 1
                continue
            found.append(public(item))
            if len(found) == limit:
                break
    return found, total, dropped


async def discard(client: Any, entry_id: str) -> bool:
    """Remove an entry; False when it was not kept."""
    removed = await client.delete(ENTRY_PREFIX + entry_id)
    await client.zrem(INDEX_KEY, entry_id)
    return bool(removed)


async def mark_replayed(
    client: Any, entry_id: str, new_id: str, force: bool = False
) -> str | None:
    """Record that `entry_id` was queued again as `new_id`: "" when marked, the id of
    an earlier replay when there was one (and not `force`), None when not kept."""
    keys = [ENTRY_PREFIX + entry_id, REPLAY_OF_PREFIX + new_id]
    flag = "1" if force else "0"
    _, retention = inbox_limits()
    argv = [entry_id, new_id, time.time(), flag, retention]
    result = await client.eval(_MARK_REPLAYED, len(keys), *keys, *argv)
    return None if result is None else _text(result)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# The task board: the workers note each run's start and outcome and say they are alive;
# the dashboard reads it. Every write is one round trip and bounded: the running set
# loses a run's entry when it finishes (or, for a worker killed mid-task, after
# RUNNING_FORGET_SECONDS), recent outcomes keep the last RECENT_MAX, a worker or
# scheduler that stops saying it is alive is forgotten after ALIVE_FORGET_SECONDS.
BOARD_PREFIX = "bgtasks:celery:board"
RUNNING_KEY = f"{BOARD_PREFIX}:running"  # sorted set: task id by start time
RUNNING_TASK_KEY = f"{BOARD_PREFIX}:running-task"  # hash: task id -> task name
RECENT_KEY = f"{BOARD_PREFIX}:recent"  # list of outcome JSON, newest first
WORKERS_KEY = f"{BOARD_PREFIX}:workers"  # sorted set: worker name by last heartbeat
SCHEDULERS_KEY = f"{BOARD_PREFIX}:schedulers"  # the same for schedulers
RECENT_MAX = 50
HEARTBEAT_SECONDS = 10
ALIVE_WITHIN_SECONDS = 3 * HEARTBEAT_SECONDS  # two missed heartbeats: not alive
ALIVE_FORGET_SECONDS = 24 * 60 * 60
RUNNING_FORGET_SECONDS = 24 * 60 * 60
MAX_RUNNING_SHOWN = 50

# A run started (pipelines may send it too: see started_arguments). KEYS: running,
# running-task. ARGV: task id, task name, now.
STARTED_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""

# A run ended: out of the running set, and its outcome (when it has one: a retry has
# not ended the task) first in the recent list. KEYS: running, running-task, recent.
# ARGV: task id, outcome JSON or "", how many outcomes to keep.
FINISHED_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[2])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
end
"""


def started_arguments(task_id: str, task: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the started script."""
    return [RUNNING_KEY, RUNNING_TASK_KEY], [task_id, task, time.time()]


def finished_arguments(
    task_id: str, task: str, outcome: str, error_type: str = "", retried: bool = False
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the finished script. `outcome`: "succeeded", "failed", or ""
    (the run ended and the task goes on: a retry, `retried` when it is one). Only the
    error's type is kept: its message may hold a task's private arguments."""
    body = ""
    if outcome:
        body = json.dumps(
            {
                "task": task,
                "task_id": task_id,
                "success": outcome == "succeeded",
                "error": error_type,
                "finished_at": time.time(),
            }
        )
    del retried  # counted only with the metrics
    return [RUNNING_KEY, RUNNING_TASK_KEY, RECENT_KEY], [task_id, body, RECENT_MAX]


def note_started(client: Any, task_id: str, task: str) -> None:
    """`task_id` started running (a synchronous redis client: a Celery worker)."""
    keys, argv = started_arguments(task_id, task)
    client.eval(STARTED_SCRIPT, len(keys), *keys, *argv)


def note_finished(
    client: Any,
    task_id: str,
    task: str,
    outcome: str,
    error_type: str = "",
    retried: bool = False,
) -> None:
    """A run of `task_id` ended (see finished_arguments)."""
    keys, argv = finished_arguments(task_id, task, outcome, error_type, retried)
    client.eval(FINISHED_SCRIPT, len(keys), *keys, *argv)


async def anote_started(client: Any, task_id: str, task: str) -> None:
    """`note_started` for an asyncio redis client (arq, taskiq)."""
    keys, argv = started_arguments(task_id, task)
    await client.eval(STARTED_SCRIPT, len(keys), *keys, *argv)


async def anote_finished(
    client: Any,
    task_id: str,
    task: str,
    outcome: str,
    error_type: str = "",
    retried: bool = False,
) -> None:
    """`note_finished` for an asyncio redis client."""
    keys, argv = finished_arguments(task_id, task, outcome, error_type, retried)
    await client.eval(FINISHED_SCRIPT, len(keys), *keys, *argv)


def heartbeat(client: Any, key: str, name: str) -> None:
    """Say that worker or scheduler `name` is alive (`key`: WORKERS_KEY or
    SCHEDULERS_KEY); a synchronous client."""
    client.zadd(key, {name: time.time()})


async def aheartbeat(client: Any, key: str, name: str) -> None:
    """`heartbeat` for an asyncio redis client."""
    await client.zadd(key, {name: time.time()})


async def aforget(client: Any, key: str, name: str) -> None:
    """A worker or scheduler that stops cleanly says so at once."""
    await client.zrem(key, name)


async def board(client: Any) -> dict[str, Any]:
    """What the workers said, in one round trip: the runs going on now (id, task,
    start time; newest first), the recent outcomes, and how many workers and
    schedulers said they were alive within ALIVE_WITHIN_SECONDS. Entries past their
    forget time are removed on the way."""
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(RUNNING_KEY, "-inf", now - RUNNING_FORGET_SECONDS)
        pipe.zrevrange(RUNNING_KEY, 0, MAX_RUNNING_SHOWN - 1, withscores=True)
        pipe.lrange(RECENT_KEY, 0, RECENT_MAX - 1)
        for key in (WORKERS_KEY, SCHEDULERS_KEY):
            pipe.zremrangebyscore(key, "-inf", now - ALIVE_FORGET_SECONDS)
            pipe.zcount(key, now - ALIVE_WITHIN_SECONDS, "+inf")
        _, running, recent, _, workers, _, schedulers = await pipe.execute()
    ids = [_text(member) for member, _ in running]
    names = await client.hmget(RUNNING_TASK_KEY, ids) if ids else []
    runs = [
        {
            "task_id": task_id,
            "task": _text(names[index] or b""),
            "started_at": float(running[index][1]),
        }
        for index, task_id in enumerate(ids)
    ]
    outcomes = []
    for raw in recent:
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict):
            outcomes.append(item)
    return {
        "running": runs,
        "recent": outcomes,
        "workers": int(workers),
        "schedulers": int(schedulers),
    }


logger = get_logger(__name__)

# The Redis calls of async_client() (the `bgtasks failed` CLI, a replay outside the
# app): bounded, so an unreachable Redis is an error, never a wait without end.
CLIENT_TIMEOUT = 5.0
# A poison message keeps its own task id as its entry's id when the id is this plain
# (the routes take it in a path); any other gets a new one.
MAX_ID_CHARS = 64


# The worker's side: Celery's task_failure signal (celery_app.py) and the message
# guards (message_guard.py) hand over what failed; a failure to record is logged and
# never raised into the worker.


def keep(found: dict[str, Any]) -> None:
    """Record `found` with the worker's Redis client (registry.client())."""
    try:
        dropped = record(registry.client(), found)
    except Exception:  # Redis down, or a value it refused: the task's outcome stands
        logger.warning(
            "could not keep %s %s in the failed-task inbox",
            found.get("kind"),
            found.get("id"),
            exc_info=True,
        )
        return
    if dropped:
        logger.warning("the failed-task inbox is full: %d older entries went", dropped)


def keep_failure(
    task: Task,
    task_id: str,
    error: BaseException,
    args: Any,
    kwargs: Any,
    einfo: Any = None,
) -> None:
    """A task that failed for good: after its last retry, an error it does not retry,
    or its worker lost with no retry left (kind "lost")."""
    try:
        retries = int(getattr(task.request, "retries", 0) or 0)
        kind = "lost" if isinstance(error, WorkerLostError) else "failed"
        found = failure_entry(
            task_id,
            str(task.name),
            list(args or ()),
            dict(kwargs or {}),
            error,
            attempts=retries + 1,
            kind=kind,
        )
        text = getattr(einfo, "traceback", None)
        if error.__traceback__ is None and isinstance(text, str):
            # raised in a pool process that is gone: Celery's text is all there is
            found["traceback"] = text[-MAX_TRACEBACK_CHARS:]
    except Exception:  # the worker goes on, whatever this meets
        logger.warning(
            "could not describe the failure of task %s", task_id, exc_info=True
        )
        return
    keep(found)


def keep_poison(reason: str, raw: bytes, task_id: Any = None, task: Any = None) -> None:
    """A message the guards dropped (never run): the reason and its raw bytes."""
    entry_id = task_id if _plain_id(task_id) else f"poison-{uuid()}"
    keep(poison_entry(entry_id, reason, raw, task if isinstance(task, str) else ""))


def _plain_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_CHARS
        and value.isascii()
        and all(char.isalnum() or char == "-" for char in value)
    )


# The operator's side: the app's routes and the `bgtasks failed` CLI.


def async_client() -> redis.asyncio.Redis:
    """A client of the Redis the worker records into (the result backend's), with its
    own connections: the caller closes it (`await client.aclose()`)."""
    return redis.asyncio.Redis.from_url(
        str(settings.CELERY_RESULT_BACKEND),
        socket_timeout=CLIENT_TIMEOUT,
        socket_connect_timeout=CLIENT_TIMEOUT,
    )


class ReplayRefused(Exception):
    """The entry was replayed before, as `earlier`; with force it is queued again."""

    def __init__(self, entry_id: str, earlier: str) -> None:
        super().__init__(f"{entry_id} was replayed before, as {earlier}")
        self.earlier = earlier


async def replay(entry_id: str, force: bool = False) -> str:
    """Queue the entry's task again with its arguments under a new task id; returns
    that id. Opens and closes its own connections (it runs outside the app too).

    ReplayRefused when it was replayed before (unless `force`), LookupError when the
    entry is not kept, ValueError when there is nothing to run (a poison message, a
    task this app does not define). OperationalError (kombu) when the broker cannot
    be reached: nothing was queued.
    """
    # imported here: celery_app imports this module (its failure hook records here)
    from app.tasks import fast_publish

    client = async_client()
    try:
        return await replay_with(client, entry_id, force)
    finally:
        await client.aclose()
        await fast_publish.aclose()


# Undo a mark whose task could not be queued: the entry's earlier replay (or none)
# again, if the mark is still this one. KEYS: the entry, the new id's replay link.
# ARGV: the new id, the earlier replay's id ("" for none).
_UNMARK = """
local raw = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[2])
if not raw then
  return 0
end
local entry = cjson.decode(raw)
if entry['replayed_as'] ~= ARGV[1] then
  return 0
end
entry['replayed_as'] = ARGV[2] ~= '' and ARGV[2] or cjson.null
redis.call('SET', KEYS[1], cjson.encode(entry), 'KEEPTTL')
return 1
"""


async def replay_with(
    client: Any, entry_id: str, force: bool = False, owner: str | None = None
) -> str:
    """replay() on `client` (the app's own): the new task is issued to `owner` (the
    caller of the route, as its status route reads it; None: every caller)."""
    # imported here: celery_app imports this module (its failure hook records here)
    import app.tasks.tasks  # noqa: F401 - registers the app's tasks
    from app.tasks import fast_publish
    from app.tasks.celery_app import RESULT_EXPIRES, celery_app

    found = await entry(client, entry_id)
    if found is None:
        raise LookupError(f"no entry {entry_id} in the failed-task inbox")
    if found.get("kind") == "poison":
        raise ValueError("a message dropped as poison: there is nothing to run")
    task = celery_app.tasks.get(str(found.get("task")))
    if task is None:
        raise ValueError(f"this app defines no task {found.get('task')!r}")
    new_id = uuid()
    # Marked first, atomically: two replays at once queue the task once, and the new
    # id is linked to this entry before it can fail and be recorded itself.
    earlier = await mark_replayed(client, entry_id, new_id, force)
    if earlier is None:
        raise LookupError(f"no entry {entry_id} in the failed-task inbox")
    if earlier:
        raise ReplayRefused(entry_id, earlier)
    options: dict[str, Any] = {"ignore_result": False}  # its status can be read
    if found["args"]:
        options["args"] = tuple(found["args"])
    try:
        return await fast_publish.enqueue(
            task,
            found["kwargs"],
            task_id=new_id,
            ttl=RESULT_EXPIRES,
            owner=owner,
            **options,
        )
    except fast_publish.OutcomeUnknown:
        raise  # it may be queued: the mark stays
    except BaseException:
        # not queued: the entry may be replayed again without force
        keys = [ENTRY_PREFIX + entry_id, REPLAY_OF_PREFIX + new_id]
        previous = found.get("replayed_as") or ""
        try:
            await client.eval(_UNMARK, len(keys), *keys, new_id, previous)
        except Exception:  # the error that stopped the replay is the one to raise
            logger.warning(
                "could not undo the replay mark of %s", entry_id, exc_info=True
            )
        raise


# The worker's notes on the task board (celery_app.py's signals): never raised into
# the worker, a task runs whether or not Redis took the note.


def board_started(task_id: str, task: str) -> None:
    """task_prerun: a run of `task_id` begins."""
    try:
        note_started(registry.client(), task_id, task)
    except Exception:
        logger.warning("could not note the start of task %s", task_id, exc_info=True)


def board_finished(task_id: str, task: str, state: Any, result: Any) -> None:
    """task_postrun: a run ended in Celery state `state` (a retry is no outcome yet)."""
    if state == "SUCCESS":
        outcome, error = "succeeded", ""
    elif state in ("FAILURE", "REVOKED"):
        outcome = "failed"
        error = type(result).__name__ if isinstance(result, BaseException) else state
    else:
        outcome, error = "", ""
    try:
        retried = state == "RETRY"
        note_finished(registry.client(), task_id, task, outcome, error, retried)
    except Exception:
        logger.warning("could not note the end of task %s", task_id, exc_info=True)


class Heartbeat:
    """A worker's or a scheduler's "alive" on the task board, said every
    HEARTBEAT_SECONDS from a thread of its own until stop()."""

    def __init__(self, key: str, name: str) -> None:
        self.key, self.name = key, name
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name="bgtasks-heartbeat", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.is_set():
            try:
                heartbeat(registry.client(), self.key, self.name)
            except Exception:  # Redis away: the board shows it down meanwhile
                logger.warning("could not say %s is alive", self.name, exc_info=True)
            self._stopped.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self._stopped.set()
        try:
            registry.client().zrem(self.key, self.name)
        except Exception:  # forgotten after ALIVE_WITHIN_SECONDS anyway
            logger.warning("could not say %s stopped", self.name, exc_info=True)

"""arq worker settings. Start a worker (as many as you like) with:

    arq app.tasks.arq_worker.WorkerSettings

On SIGTERM a worker stops taking jobs, gives running ones `job_completion_wait` seconds
to finish, then cancels them; cancelled jobs go back to the queue and run again. Each
such run counts as a try of the job's `max_tries`: a job still running at every one of
`max_tries` shutdowns in a row (a rolling deploy restarts each worker once) fails with
"max retries exceeded". A job that ends within `job_completion_wait` is never cut
short that way; long_running_task (up to 100 s) can be, so it has tries to spare
(max_tries=5). Size `max_tries` of your own long jobs the same way.

A Redis outage does not stop a worker: every Redis command is retried with capped
exponential backoff and jitter for at least REDIS_OUTAGE_BUDGET seconds (a warning is
logged while it waits), so the worker carries on, with the jobs it was running, once
Redis answers again. A longer outage may end the worker: its process manager restarts
it (compose.yaml: `restart: unless-stopped`). A worker told to stop during an outage
waits the same way to unregister, until its stop grace period runs out.

The worker's log names each job it runs, never the job's arguments or result: those are
addresses, message text and whatever your own jobs take (see HideJobArguments).

A queue entry arq cannot take (an id that is not UTF-8, a score that is no time) or a
job record it cannot use (serialization.py) would stop arq's loop, and the next
worker's after it. Such an entry is logged with its reason and size and dropped (see
drop_poison_entries); the worker goes on with the next job.

What failed for good lands in the failed-task inbox (arq_inbox.py), for every
registered function and cron job alike (record_failures, at the end of this module):
an error a job does not retry, or its last try asking for another; a job cut by its
timeout; a job arq refuses before it runs (its record unreadable: poison; its tries
used up by workers that stopped or died during it: lost; its function unknown); a
queue entry the guard above drops (poison). A failure to record is logged, never
raised into the worker.
"""

import asyncio
import dataclasses
import datetime
import functools
import hashlib
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from arq import cron, func
from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from arq.cron import CronJob
from arq.jobs import DeserializationError
from arq.worker import Function, JobExecutionFailed, RetryJob
from arq.worker import Retry as JobRetry
from arq.worker import func as as_function
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from app.core.config import settings
from app.tasks import arq_inbox, arq_tasks, error_reporting
from app.tasks.serialization import (
    RecordRefused,
    deserialize,
    serialize,
)

# arq's own line for a job it starts: "<waited>s -> <job id>:<function>(<args>)<try>",
# its arrow written as an escape here to keep this file ASCII
JOB_START_FORMAT = "%6.2fs \u2192 %s(%s)%s"


class HideJobArguments(logging.Filter):
    """Drops the arguments from arq's "job started" log line, keeps the rest of it.

    arq (0.28) logs a repr of every job's arguments at INFO and has no setting to stop
    it; for send_email that is the recipient, the subject and the body.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == JOB_START_FORMAT and isinstance(args, tuple):
            # four values, one per placeholder of the format
            waited, job, _arguments, job_try = args
            record.args = (waited, job, "<arguments hidden>", job_try)
        return True


# On arq's logger itself (a filter on a logger sees only its own records), once.
_arq_worker_logger = logging.getLogger("arq.worker")
if not any(isinstance(f, HideJobArguments) for f in _arq_worker_logger.filters):
    _arq_worker_logger.addFilter(HideJobArguments())


# How long a worker keeps retrying Redis at least before it gives up (seconds), and
# the longest wait between two tries of one command
REDIS_OUTAGE_BUDGET = 60.0
REDIS_RETRY_MAX_DELAY = 2.0
REDIS_RETRY_BASE_DELAY = 0.05
# log the 1st failure of a command, then every REDIS_RETRY_LOG_EVERY-th
REDIS_RETRY_LOG_EVERY = 10

_redis_logger = logging.getLogger(__name__)


class LoggedBackoff(AbstractBackoff):
    """Exponential backoff with equal jitter, capped, that says when Redis is away.

    redis-py retries silently: without the warning an outage would leave no trace in
    the worker's log.
    """

    def compute(self, failures: int) -> float:
        ceiling = min(REDIS_RETRY_MAX_DELAY, REDIS_RETRY_BASE_DELAY * 2.0**failures)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if failures == 1 or failures % REDIS_RETRY_LOG_EVERY == 0:
            _redis_logger.warning(
                "Redis unreachable (try %d of a command), retrying in %.2fs",
                failures,
                delay,
            )
        return delay


def resilient_redis_settings(url: str) -> RedisSettings:
    """arq's settings for `url`, with every command retried through an outage.

    arq's own conn_retries covers only the first connection: once the worker runs,
    one failed command (a Redis restart) raises out of its main loop and it exits.
    """
    settings = RedisSettings.from_dsn(url)
    # after the first few doublings each wait is at least half of the cap
    tries = int(REDIS_OUTAGE_BUDGET / (REDIS_RETRY_MAX_DELAY / 2)) + 6
    # also used to (re)connect, so a worker started while Redis is down waits too;
    # OSError: a refused connection reaches the retry as the socket's own error
    settings.retry = Retry(
        LoggedBackoff(),
        retries=tries,
        # redis-py's hint allows only its own errors; it catches any type given
        supported_errors=(
            RedisConnectionError,
            RedisTimeoutError,
            OSError,
        ),  # type: ignore[arg-type]
    )
    # timeouts are listed here rather than with retry_on_timeout=True, which appends
    # to this list each time a pool is created
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    return settings


# a connection lost while watching is watched again at most this often per command
REWATCH_TRIES = 3


def _unusable(member: bytes, score: float) -> str:
    """Why arq's loop cannot take this queue entry ("" when it can)."""
    try:
        member.decode()
    except UnicodeDecodeError:
        return "job id is not UTF-8"
    # a time in ms: arq turns it into an int, and skips a 0 forever
    if not math.isfinite(score) or score <= 0:
        return f"score {score!r} is not a time"
    return ""


async def _drop_entries(redis: ArqRedis, queue: str, entries: list[bytes]) -> None:
    """Remove unusable entries from `queue`, with what arq keeps beside each job."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(queue, *entries)
        for member in entries:
            pipe.delete(
                job_key_prefix.encode() + member,
                in_progress_key_prefix.encode() + member,
                retry_key_prefix.encode() + member,
            )
        await pipe.execute()


class RewatchingPipeline(Pipeline):
    """A pipeline that takes its WATCH again when the connection drops under it.

    arq's worker watches a job's in-progress key, then reads it and the queue, outside
    any error handling: a connection lost in between (a Redis restart) raises
    WatchError out of its loop and the worker exits. Here the keys are watched again on
    a new connection (through the pool's retry, so an outage is waited out) and the
    read is repeated: the transaction still goes through only if nothing changed after
    the new WATCH.
    """

    watched: tuple[Any, ...] = ()

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        self.watched = names
        return await super().watch(*names)

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        parent: Any = super()  # redis-py's method has no annotations
        for _ in range(REWATCH_TRIES):
            try:
                return await parent.immediate_execute_command(*args, **options)
            except WatchError:
                # the connection died while watching (a changed key is told at EXEC)
                if args[0] == "WATCH" or not self.watched:
                    raise
                _redis_logger.warning("connection lost while watching: watching again")
                await parent.watch(*self.watched)
        return await parent.immediate_execute_command(*args, **options)


def rewatching_pipelines(redis: ArqRedis) -> None:
    """Make the worker's pipelines RewatchingPipeline (see there)."""

    def pipeline(transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return RewatchingPipeline(
            redis.connection_pool, redis.response_callbacks, transaction, shard_hint
        )

    redis.pipeline = pipeline  # type: ignore[method-assign]


async def drop_poison_entries(ctx: dict[str, Any]) -> None:
    """on_startup: the worker's queue reads skip and drop entries arq cannot take.

    arq (0.28) decodes every job id it reads from the queue and turns every score into
    an int outside any error handling: one foreign entry there stops the worker, and
    every worker started after it. The worker's reads of its queue go through here:
    such an entry is logged (reason, size) and removed, the others are returned.
    """
    redis: ArqRedis = ctx["redis"]
    rewatching_pipelines(redis)  # a Redis restart mid-watch: see RewatchingPipeline
    queue = redis.default_queue_name or default_queue_name
    read = redis.zrangebyscore

    async def zrangebyscore(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name != queue:
            return await read(name, *args, **kwargs)
        withscores = kwargs.pop("withscores", False)
        entries = await read(name, *args, **{**kwargs, "withscores": True})
        usable: list[Any] = []
        poison: dict[bytes, str] = {}
        for member, score in entries:
            reason = _unusable(member, score)
            if not reason:
                usable.append((member, score) if withscores else member)
                continue
            poison[member] = reason
            _redis_logger.error(
                "dropped queue entry %r (%d bytes): %s",
                member[:40],
                len(member),
                reason,
            )
        if poison:
            await _drop_entries(redis, queue, list(poison))
            await asyncio.gather(
                *(
                    keep(redis, _dropped_entry(member, reason))
                    for member, reason in poison.items()
                )
            )
        return usable

    redis.zrangebyscore = zrangebyscore  # type: ignore[method-assign]


# -- the failed-task inbox -------------------------------------------------------------

# The longest a record may take (seconds): the end of the job that failed waits for it.
RECORD_TIMEOUT = 5.0
# arq's own default, for functions registered without max_tries
ARQ_MAX_TRIES = 5
# A job id the inbox routes take as it is in their path (the rule of arq's ids there);
# any other is kept under a hash of it.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

_inbox_logger = logging.getLogger(f"{__name__}.inbox")
# records handed over by the job serializer (see serialize_job_or_result), until done
_pending: set[asyncio.Task[None]] = set()
# an exception record_failures already kept: arq's result then says nothing new
_KEPT = "_bgtasks_kept"


def _entry_id(job_id: object) -> str:
    """The inbox entry id of a job id (str) or a raw queue entry (bytes)."""
    if isinstance(job_id, str) and _PLAIN_ID.fullmatch(job_id):
        return job_id
    raw = job_id if isinstance(job_id, bytes) else str(job_id).encode(errors="replace")
    return f"job-{hashlib.sha256(raw).hexdigest()[:32]}"


def _dropped_entry(member: bytes, reason: str) -> dict[str, Any]:
    entry_id = _entry_id(member)
    return arq_inbox.poison_entry(entry_id, f"queue entry dropped: {reason}", member)


async def keep(redis: Any, entry: dict[str, Any]) -> None:
    """Record `entry` in the inbox; a failure to is logged, never raised."""
    try:
        dropped = await asyncio.wait_for(
            arq_inbox.arecord(redis, entry), RECORD_TIMEOUT
        )
    except Exception:  # Redis down or slow: the job's own outcome stands
        _inbox_logger.warning(
            "could not keep %s %s in the failed-task inbox",
            entry.get("kind"),
            entry.get("id"),
            exc_info=True,
        )
        return
    if dropped:
        _inbox_logger.warning(
            "failed-task inbox full: %d older entries dropped", dropped
        )


async def _keep_failure(
    ctx: dict[str, Any],
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: BaseException,
) -> None:
    try:
        found = arq_inbox.failure_entry(
            _entry_id(ctx.get("job_id", "")),
            task,
            list(args),
            dict(kwargs),
            error,
            attempts=int(ctx.get("job_try") or 1),
        )
    except Exception:  # the worker goes on, whatever this meets
        _inbox_logger.warning(
            "could not describe job %s", ctx.get("job_id"), exc_info=True
        )
        return
    await keep(ctx["redis"], found)


WorkerCoroutine = Callable[..., Awaitable[Any]]


def _recording(coroutine: WorkerCoroutine, task: str, max_tries: int) -> Any:
    """`coroutine`, keeping its failure in the inbox when arq will not run it again."""

    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # in the scope the arq integration opens for this job; its asyncio task ends
        # with the job, and the arguments searched for with it
        error_reporting.tag_task(task, str(ctx.get("job_id")), args, kwargs)
        await _note(arq_inbox.anote_started(ctx["redis"], str(ctx.get("job_id")), task))
        try:
            return await coroutine(ctx, *args, **kwargs)
        except (JobRetry, RetryJob) as exc:  # both retried by arq
            if int(ctx.get("job_try") or 1) < max_tries:
                await _note_retry(ctx, task)
            if int(ctx.get("job_try") or 1) >= max_tries:
                # arq refuses the try this asks for ("max retries exceeded"): the
                # error behind it is the failure
                cause = exc.__cause__
                error = cause if isinstance(cause, Exception) else exc
                await _keep_failure(ctx, task, args, kwargs, error)
                setattr(exc, _KEPT, True)
                error_reporting.capture_task_error(error)
            raise
        except Exception as exc:  # arq retries only Retry: failed for good
            await _keep_failure(ctx, task, args, kwargs, exc)
            setattr(exc, _KEPT, True)
            error_reporting.capture_task_error(exc)
            raise
        # CancelledError: an abort (asked for), a shutdown (run again) or the job's
        # timeout, which arq reports as TimeoutError (serialize_job_or_result)

    return run


def _decided_by_arq(
    data: dict[str, Any],
) -> dict[str, Any] | None:
    """The inbox entry of a failure arq decided around the job's code, from the
    result record it writes; None when there is none to keep."""
    error = data.get("r")
    if not isinstance(error, Exception) or getattr(error, _KEPT, False):
        return None  # an abort (CancelledError), or kept when it was raised
    job_id = _entry_id(data.get("id", ""))
    task, job_try = str(data.get("f") or ""), int(data.get("t") or 1)
    if task == "<unknown>":  # arq's name for a job whose record it could not read
        task = ""
    args, kwargs = list(data.get("a") or ()), dict(data.get("k") or {})
    if isinstance(error, DeserializationError):
        refused = error.__cause__
        reason = str(refused) if isinstance(refused, RecordRefused) else "unreadable"
        raw = refused.raw if isinstance(refused, RecordRefused) else b""
        found = arq_inbox.poison_entry(job_id, f"job record refused: {reason}", raw)
        found["raw_size"] = refused.size if isinstance(refused, RecordRefused) else 0
        return found
    kind = "failed"
    if isinstance(error, JobExecutionFailed):
        # tries used up by workers that stopped or died during them, or a job whose
        # record expired before it ran: nothing will deliver it again
        message = str(error)
        if message.startswith("max ") or message == "job expired":
            kind = "lost"
            job_try = max(1, job_try - 1)  # the try arq refused never ran
    found = arq_inbox.failure_entry(
        job_id, task, args, kwargs, error, attempts=job_try, kind=kind
    )
    if isinstance(error, TimeoutError) and not found["error"]:
        found["error"] = "cut by the job's timeout"  # arq's TimeoutError says nothing
    return found


async def _keep_decided(found: dict[str, Any]) -> None:
    client = arq_inbox.async_client()
    try:
        if found["kind"] == "lost" and await arq_inbox.entry(client, found["id"]):
            return  # its last try's failure is kept already (see _recording)
        await keep(client, found)
    except Exception:  # Redis down: logged, never raised into the worker
        _inbox_logger.warning(
            "could not keep %s in the failed-task inbox", found["id"], exc_info=True
        )
    finally:
        await client.aclose()


async def _note(writing: Awaitable[None]) -> None:
    """A note on the task board (arq_inbox): bounded, and never raised into the job."""
    try:
        await asyncio.wait_for(writing, RECORD_TIMEOUT)
    except Exception:  # Redis down or slow: the job runs all the same
        _inbox_logger.warning("could not note a run on the task board", exc_info=True)


# the worker's one client for outcome notes (the serializer has no ctx["redis"])
_board_clients: dict[asyncio.AbstractEventLoop, Any] = {}


async def _note_retry(ctx: dict[str, Any], task: str) -> None:
    """A run arq will try again: this run is over (and counted as retried), the job
    is not."""
    job_id, redis = str(ctx.get("job_id")), ctx["redis"]
    await _note(arq_inbox.anote_finished(redis, job_id, task, "", retried=True))


async def _note_outcome(data: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    client = _board_clients.get(loop)
    if client is None:
        client = _board_clients[loop] = arq_inbox.async_client()
    success = data.get("s") is True
    await _note(
        arq_inbox.anote_finished(
            client,
            str(data.get("id") or ""),
            str(data.get("f") or ""),
            "succeeded" if success else "failed",
            "" if success else type(data.get("r")).__name__,
        )
    )


def serialize_job_or_result(data: dict[str, Any]) -> bytes:
    """The worker's job_serializer: `serialize`, and a failure arq decides outside the
    job's own code (a record it cannot read, tries used up, a timeout) handed to the
    inbox. arq hands every result it writes through here, and no hook after it: the
    task board learns each job's outcome here too."""
    if "s" in data and data.get("id"):  # a result, not a job
        try:
            task = asyncio.get_running_loop().create_task(_note_outcome(data))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
        except Exception:  # the result is written all the same
            _inbox_logger.warning(
                "could not note job %s on the task board", data.get("id"), exc_info=True
            )
    if data.get("s") is False:
        try:
            found = _decided_by_arq(data)
            if found is not None:
                task = asyncio.get_running_loop().create_task(_keep_decided(found))
                _pending.add(task)
                task.add_done_callback(_pending.discard)
        except Exception:  # the result is written all the same
            _inbox_logger.warning(
                "could not describe job %s", data.get("id"), exc_info=True
            )
    return serialize(data)


async def start_worker(ctx: dict[str, Any]) -> None:
    """on_startup: this process's error reports (error_reporting.py), then
    drop_poison_entries."""
    error_reporting.set_up("worker")
    await drop_poison_entries(ctx)


async def finish_records(ctx: dict[str, Any]) -> None:
    """on_shutdown: wait (briefly) for the records still being written."""
    del ctx
    if _pending:
        await asyncio.wait(set(_pending), timeout=RECORD_TIMEOUT)


def record_failures(settings: Any) -> None:
    """Make every function and cron job of `settings` keep its failures in the inbox.

    Called once below, so that functions add-task registers take part with no code
    of their own.
    """
    # (no local named like the two lists, no call named func or cron: bgtasks finds
    # the registrations by those names)
    default_tries = int(vars(settings).get("max_tries", ARQ_MAX_TRIES))
    registered: list[Function] = []
    for item in vars(settings).get("functions", ()):
        function = as_function(item)  # a Function, or a bare coroutine
        tries = default_tries if function.max_tries is None else function.max_tries
        wrapped = _recording(function.coroutine, function.name, tries)
        registered.append(dataclasses.replace(function, coroutine=wrapped))
    scheduled: list[CronJob] = []
    for job in vars(settings).get("cron_jobs", ()):
        wrapped = _recording(job.coroutine, job.name, job.max_tries)
        scheduled.append(dataclasses.replace(job, coroutine=wrapped))
    settings.functions = registered
    settings.cron_jobs = scheduled


def capped_timeout(seconds: int) -> int:
    """`seconds`, capped by the ARQ_JOB_TIMEOUT setting.

    A worker marks each job it starts "in progress" for the LARGEST timeout among its
    functions + 10 s: a job whose worker was killed runs again only after that. So keep
    timeouts realistic, and lower the setting where a quick re-run matters (tests).
    """
    return max(1, min(seconds, int(settings.ARQ_JOB_TIMEOUT)))


class WorkerSettings:
    redis_settings = resilient_redis_settings(str(settings.REDIS_URL))
    # JSON, never pickle: the web app's pool (pool.py) uses the same format; this
    # serializer also hands what arq fails for good to the failed-task inbox
    job_serializer = serialize_job_or_result
    job_deserializer = deserialize
    # keep them when you add your own: call them from yours first
    on_startup = start_worker
    on_shutdown = finish_records

    # Function objects with explicit names: the names the API enqueues by.
    functions: ClassVar[list[Function]] = [
        func(
            arq_tasks.send_email,
            name="send_email",
            timeout=capped_timeout(60),
            max_tries=arq_tasks.SEND_EMAIL_MAX_TRIES,
            # the stored result includes the job's arguments (address, body)
            keep_result=arq_tasks.SEND_EMAIL_KEEP_RESULT,
        ),
        func(
            arq_tasks.process_data,
            name="process_data",
            timeout=capped_timeout(120),
            max_tries=3,
        ),
        # at most 1000 steps of 0.1 s
        func(
            arq_tasks.long_running_task,
            name="long_running_task",
            timeout=capped_timeout(180),
            # each shutdown while it runs costs a try (see above)
            max_tries=5,
        ),
    ]
    # 03:00 UTC (see `timezone` below); unique=True: once, however many workers run
    cron_jobs: ClassVar[list[CronJob]] = [
        cron(
            arq_tasks.daily_cleanup,
            name="daily_cleanup",
            hour=3,
            minute=0,
            timeout=capped_timeout(300),
            unique=True,
        ),
    ]

    # cron times are UTC, whatever the server's zone (datetime.UTC needs Python 3.11)
    timezone = datetime.timezone.utc  # noqa: UP017
    job_timeout = capped_timeout(300)  # for anything registered without its own timeout
    max_jobs = 10
    keep_result = arq_tasks.KEEP_RESULT
    # Results stay readable through the API, but out of the log (see HideJobArguments).
    log_results = False
    allow_abort_jobs = True  # POST /arq-tasks/abort/{job_id} cancels running jobs
    job_completion_wait = 25  # seconds; below a typical 30 s termination grace period
    health_check_interval = 60


record_failures(WorkerSettings)

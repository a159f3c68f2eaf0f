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
"""

import datetime
import logging
import math
import random
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
from arq.worker import Function
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.config import settings
from app.tasks import arq_tasks
from app.tasks.serialization import deserialize, serialize

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


async def drop_poison_entries(ctx: dict[str, Any]) -> None:
    """on_startup: the worker's queue reads skip and drop entries arq cannot take.

    arq (0.28) decodes every job id it reads from the queue and turns every score into
    an int outside any error handling: one foreign entry there stops the worker, and
    every worker started after it. The worker's reads of its queue go through here:
    such an entry is logged (reason, size) and removed, the others are returned.
    """
    redis: ArqRedis = ctx["redis"]
    queue = redis.default_queue_name or default_queue_name
    read = redis.zrangebyscore

    async def zrangebyscore(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name != queue:
            return await read(name, *args, **kwargs)
        withscores = kwargs.pop("withscores", False)
        entries = await read(name, *args, **{**kwargs, "withscores": True})
        usable: list[Any] = []
        poison: list[bytes] = []
        for member, score in entries:
            reason = _unusable(member, score)
            if not reason:
                usable.append((member, score) if withscores else member)
                continue
            poison.append(member)
            _redis_logger.error(
                "dropped queue entry %r (%d bytes): %s",
                member[:40],
                len(member),
                reason,
            )
        if poison:
            await _drop_entries(redis, queue, poison)
        return usable

    redis.zrangebyscore = zrangebyscore  # type: ignore[method-assign]


def capped_timeout(seconds: int) -> int:
    """`seconds`, capped by the ARQ_JOB_TIMEOUT setting.

    A worker marks each job it starts "in progress" for the LARGEST timeout among its
    functions + 10 s: a job whose worker was killed runs again only after that. So keep
    timeouts realistic, and lower the setting where a quick re-run matters (tests).
    """
    return max(1, min(seconds, int(settings.ARQ_JOB_TIMEOUT)))


class WorkerSettings:
    redis_settings = resilient_redis_settings(str(settings.REDIS_URL))
    # JSON, never pickle: the web app's pool (pool.py) uses the same pair
    job_serializer = serialize
    job_deserializer = deserialize
    # keep it when you add your own on_startup: call it from there first
    on_startup = drop_poison_entries

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
        func(
            arq_tasks.resize_image,
            name="resize_image",
            timeout=capped_timeout(300),
            max_tries=4,
        ),
        func(
            arq_tasks.nightly_report,
            name="nightly_report",
            timeout=capped_timeout(120),
            max_tries=2,
        ),
        func(
            arq_tasks.heartbeat,
            name="heartbeat",
            timeout=capped_timeout(300),
            max_tries=4,
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
        cron(
            arq_tasks.nightly_report,
            hour=6,
            minute=0,
            weekday=set(range(0, 5, 1)),
            second=0,
            timeout=capped_timeout(120),
            unique=True,
        ),
        cron(
            arq_tasks.heartbeat,
            second={0, 30},
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

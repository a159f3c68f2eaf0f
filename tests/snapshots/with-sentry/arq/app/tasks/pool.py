"""The web app's one arq Redis pool, and the `TaskQueue` dependency that hands it out.

The pool is opened once by `lifespan`, the lifespan of the generated router: FastAPI
runs an included router's lifespan with the app's own (and keeps running the app's
`@app.on_event` handlers when it has no lifespan of its own), so the app's
`FastAPI(...)` call needs no change. The pool is kept on `app.state` and closed on
shutdown.

Never open a pool per request: each opens its own connections, so 200 concurrent
requests would open (and leak) 200 of them. The pool is bounded too: a request waits
briefly for a free connection instead of opening one more.

An enqueue that fails before its job reached Redis raises the Redis error (the API
answers 503: not queued). One that Redis may have received but did not confirm in time
(a Redis that hangs, then runs what it was sent once it resumes) raises
EnqueueOutcomeUnknown with the job id (the API answers 504, never 503): the job may be
queued. Retrying with the same `_job_id` (the API's Idempotency-Key) never queues it
twice.

A job queued through the API records its owner, the caller's identity, under
owner_key(job_id) in the same script call that stores the job. The record outlives the
job by OWNER_KEPT_EXTRA_MS, longer than any job runs and its result is kept as
generated, so a finished job never loses its owner while its status is readable.
"""

import asyncio
import contextlib
import gc
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import (
    Annotated,
    Any,
    Generic,
    TypeVar,
)

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import timestamp_ms, to_ms, to_unix_ms
from fastapi import Depends, FastAPI, HTTPException, Request
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.config import settings
from app.tasks.serialization import deserialize, serialize

logger = logging.getLogger(__name__)

# Most Redis connections the web process opens. Enqueues share one (a batch in flight,
# see Batches) and a status read holds one for a round trip, so a small pool serves
# hundreds of concurrent requests.
MAX_CONNECTIONS = 20
# Seconds a request waits for a free connection, then for Redis itself, before failing
# with 503 instead of hanging.
POOL_TIMEOUT = 5
SOCKET_TIMEOUT = 5.0

# the attribute of app.state that holds the pool
STATE_KEY = "arq_pool"
_HANDLERS_FLAG = "bgtasks_runs_event_handlers"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]

# arq's enqueue_job takes three round trips (WATCH, EXISTS, MULTI/EXEC); this script
# does the same for a batch of jobs in one, each atomically: store the job and its
# owner unless its id is taken, then queue it. KEYS, per job: job key, result key,
# queue, owner key. ARGV, per job: expiry ms, job bytes, score, job id, owner ("" for
# none: a stale record under the id is dropped), owner expiry ms. Answers 1 (queued) or
# 0 (id taken) per job.
ENQUEUE_SCRIPT = """
local created = {}
for i = 0, #KEYS / 4 - 1 do
    local k, a = 4 * i, 6 * i
    if redis.call('EXISTS', KEYS[k + 1], KEYS[k + 2]) > 0 then
        created[i + 1] = 0
    else
        redis.call('PSETEX', KEYS[k + 1], ARGV[a + 1], ARGV[a + 2])
        if ARGV[a + 5] == '' then
            redis.call('DEL', KEYS[k + 4])
        else
            redis.call('PSETEX', KEYS[k + 4], ARGV[a + 6], ARGV[a + 5])
        end
        redis.call('ZADD', KEYS[k + 3], ARGV[a + 3], ARGV[a + 4])
        created[i + 1] = 1
    end
end
return created
"""
# Where a job's owner is kept, and how much longer than the job itself: a job may start
# until its key expires, then run (the job timeout setting caps it) and keep its result
# (the BGTASKS_RESULT_RETENTION_SECONDS setting): a day, or an hour
# more than results are kept.
OWNER_KEY_PREFIX = "bgtasks:owner:"
OWNER_KEPT_EXTRA_MS = 1000 * max(
    86_400, int(settings.BGTASKS_RESULT_RETENTION_SECONDS) + 3_600
)


def owner_key(job_id: str) -> str:
    """The Redis key of the identity that queued `job_id` through the API."""
    return OWNER_KEY_PREFIX + job_id


async def job_owner(queue: ArqRedis, job_id: str) -> str | None:
    """Who queued `job_id` through the API; None for a job queued by other code."""
    stored = await queue.get(owner_key(job_id))
    return None if stored is None else bytes(stored).decode()


# The longest an enqueue waits, for its batch's turn and Redis's answer together (one
# batch is in flight at a time, so it rarely waits for a free connection).
ENQUEUE_TIMEOUT = SOCKET_TIMEOUT + 1.0

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
# The most items one batch sends.
MAX_BATCH = 64


@dataclass(eq=False)
class _Waiting(Generic[ItemT, ResultT]):
    item: ItemT
    done: asyncio.Future[ResultT]


class Batches(Generic[ItemT, ResultT]):
    """One event loop's calls to Redis, sent a batch at a time by one `send(items)`.

    One batch is in flight at a time; the items submitted meanwhile go together in the
    next one. Under load one round trip, and one pass through redis-py (which costs
    more CPU per call than building a message), serves many requests; an idle app
    sends each item at once, without waiting for company. A batch that takes longer
    than `timeout` fails with TimeoutError. An item given up on (its caller cancelled
    or timed out) before its batch went is never sent.
    """

    def __init__(
        self,
        send: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
        timeout: float,
    ) -> None:
        self._send = send
        self._timeout = timeout
        self._waiting: list[_Waiting[ItemT, ResultT]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        """Send `item` with the next batch; its result, or the batch's exception."""
        loop = asyncio.get_running_loop()
        waiting: _Waiting[ItemT, ResultT] = _Waiting(item, loop.create_future())
        self._waiting.append(waiting)
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        try:
            return await waiting.done
        except BaseException:
            if waiting in self._waiting:  # its batch never went
                self._waiting.remove(waiting)
            raise

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    async with asyncio.timeout(self._timeout):
                        results = await self._send([waiting.item for waiting in batch])
                except BaseException as exc:
                    for waiting in batch:
                        if not waiting.done.done():
                            waiting.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the event loop is closing
                else:
                    for index, waiting in enumerate(batch):
                        if not waiting.done.done():
                            waiting.done.set_result(results[index])
        finally:
            self._sender = None


class EnqueueOutcomeUnknown(RedisError):
    """Redis may have received the job but did not confirm it: it may be queued.

    A Redis that stops answering (paused, overloaded, a network that holds packets)
    still runs what it was sent once it resumes, after the client gave up. Retry with
    the same job id (an Idempotency-Key) to be sure: an existing id is never queued
    twice.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(f"enqueue of job {job_id} not confirmed")
        self.job_id = job_id


@dataclass(eq=False)
class _Handover:
    """Where a job of a batch stands. `started`: its batch got a connection to Redis,
    from then on the job may run. `abandoned`: its caller gave up first (and answered
    "not queued"), so its batch must never be sent. Both are set by synchronous code
    on one event loop: exactly one of them is ever true."""

    started: bool = False
    abandoned: bool = False


# The handovers of the batch being sent, in the task that sends it.
_SENDING: ContextVar[tuple[_Handover, ...]] = ContextVar("_SENDING", default=())


class EnqueuePool(BlockingConnectionPool):
    """A BlockingConnectionPool that hands the batch being sent over to Redis once it
    holds a connected connection. A failure before that (no free connection, Redis
    refusing connections or not answering while one is set up) means nothing reached
    Redis. A batch one of whose callers gave up meanwhile is not sent at all: that
    caller has answered "not queued"."""

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> Any:
        connection = await super().get_connection(command_name, *keys, **options)
        batch = _SENDING.get()
        if any(handover.abandoned for handover in batch):
            await self.release(connection)
            raise RedisTimeoutError("enqueue given up before it was sent")
        for handover in batch:
            handover.started = True
        return connection


# One job of a batch: its keys and arguments for ENQUEUE_SCRIPT, and its handover.
_Job = tuple[list[str], list[Any], _Handover]


class QueueClient(ArqRedis):
    """ArqRedis whose enqueue_job takes one Redis round trip instead of three.

    The job is stored under arq's own keys and encoding, so arq's worker runs it
    unchanged; the arguments and the answer (a Job, or None when the id is taken) are
    enqueue_job's. Concurrent enqueues share script calls (Batches).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._enqueue_script = self.register_script(ENQUEUE_SCRIPT)
        self._batches: Batches[_Job, int] = Batches(
            self._enqueue_batch, ENQUEUE_TIMEOUT
        )

    async def _enqueue_batch(self, jobs: list[_Job]) -> list[int]:
        keys = [key for job_keys, _, _ in jobs for key in job_keys]
        args = [arg for _, job_args, _ in jobs for arg in job_args]
        sending = _SENDING.set(tuple(handover for _, _, handover in jobs))
        try:
            created = await self._enqueue_script(keys=keys, args=args)
        finally:
            _SENDING.reset(sending)
        return [int(flag) for flag in created]

    async def enqueue_job(
        self,
        function: str,
        *args: Any,
        _job_id: str | None = None,
        _queue_name: str | None = None,
        _defer_until: datetime | None = None,
        _defer_by: float | timedelta | None = None,
        _expires: float | timedelta | None = None,
        _job_try: int | None = None,
        _owner: str | None = None,
        **kwargs: Any,
    ) -> Job | None:
        """arq's enqueue_job; `_owner`, when given, is recorded with the job (see
        owner_key), in the same script call."""
        if _defer_until is not None and _defer_by is not None:
            raise RuntimeError("use either 'defer_until' or 'defer_by' or neither")
        queue_name = _queue_name or self.default_queue_name
        job_id = _job_id or uuid.uuid4().hex
        enqueued_ms = timestamp_ms()
        if _defer_until is not None:
            score = to_unix_ms(_defer_until)
        else:
            score = enqueued_ms + (to_ms(_defer_by) or 0)
        # arq's default: expire a day (expires_extra_ms) after the job is due
        expires_ms = to_ms(_expires) or score - enqueued_ms + self.expires_extra_ms
        job = serialize_job(
            function,
            args,
            kwargs,
            _job_try,
            enqueued_ms,
            serializer=self.job_serializer,
        )
        keys = [
            job_key_prefix + job_id,
            result_key_prefix + job_id,
            queue_name,
            owner_key(job_id),
        ]
        owner_ms = expires_ms + OWNER_KEPT_EXTRA_MS
        job_args = [expires_ms, job, score, job_id, _owner or "", owner_ms]
        handover = _Handover()
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT):
                created = await self._batches.submit((keys, job_args, handover))
        except TimeoutError as exc:
            if handover.started:
                raise EnqueueOutcomeUnknown(job_id) from exc
            handover.abandoned = True  # its batch, still connecting, is never sent
            raise RedisTimeoutError(f"enqueue of job {job_id} timed out") from exc
        except RedisError as exc:
            # sent, then no answer: an error reply, a timeout or a lost connection
            # cannot tell whether the script ran
            if handover.started:
                raise EnqueueOutcomeUnknown(job_id) from exc
            raise
        except BaseException:
            # cancelled (the client went away): nobody was told it is queued
            handover.abandoned = not handover.started
            raise
        if not created:
            return None
        return Job(
            job_id, self, _queue_name=queue_name, _deserializer=self.job_deserializer
        )


def create_queue() -> QueueClient:
    """A QueueClient on a bounded connection pool, with the JSON serializers."""
    connections = EnqueuePool.from_url(
        str(settings.REDIS_URL),
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )
    return QueueClient(
        connections, job_serializer=serialize, job_deserializer=deserialize
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the pool on `app.state` at startup (and freeze what is loaded by then: see
    freeze_startup_objects); close it and its connections at exit."""
    queue = create_queue()
    try:
        await queue.ping()
    except RedisError:
        # Start anyway: the rest of the app works, task endpoints answer 503 meanwhile.
        logger.warning("Redis is not reachable; task endpoints answer 503 until it is")
    setattr(app.state, STATE_KEY, queue)
    if FREEZE_STARTUP_OBJECTS:
        freeze_startup_objects()
    try:
        yield
    finally:
        delattr(app.state, STATE_KEY)
        await queue.aclose(close_connection_pool=True)


# False leaves Python's garbage collector as it is at the app's startup.
FREEZE_STARTUP_OBJECTS = True
_frozen = False


def freeze_startup_objects() -> None:
    """Keep Python's cyclic garbage collector off what the process has loaded so far.

    Modules, the task queue's client, the routes live as long as the process. Under
    load, the objects of the requests in flight survive young collections, and once
    enough have, the collector walks every tracked object of the process: with FastAPI,
    pydantic and the queue's libraries loaded, a pause of tens of milliseconds on the
    event loop, several times a second, which is the queue endpoints' p99. Frozen
    objects are left out of those walks (reference counting still frees them).
    Process-wide, as any `gc.freeze()`; `gc.unfreeze()` undoes it. Once per process: a
    later startup (each TestClient block of a test session) leaves it be, so what dies
    after it, such as a test's app, is collected as usual.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()


def _warn_if_event_handlers_skipped(app: FastAPI) -> None:
    handlers = len(app.router.on_startup) + len(app.router.on_shutdown)
    if handlers and not getattr(app.state, _HANDLERS_FLAG, False):
        logger.warning(
            "%d on_event startup/shutdown handler(s) are not run: FastAPI skips them "
            "once the app has a lifespan (an included router's own handlers still run "
            "through that router). To run them: lifespan=combine_lifespans("
            "on_event_handlers, lifespan) from %s.",
            handlers,
            __name__,
        )


@asynccontextmanager
async def on_event_handlers(app: FastAPI) -> AsyncIterator[None]:
    """Run the app's `@app.on_event("startup")` / `("shutdown")` handlers.

    FastAPI runs them only while `FastAPI(lifespan=...)` is unset; once a lifespan is
    set they are silently skipped. Put this first in `combine_lifespans(...)` to run
    them as FastAPI did without a lifespan: in registration order, startup before the
    other lifespans, shutdown after them.
    """
    setattr(app.state, _HANDLERS_FLAG, True)
    for handler in app.router.on_startup:
        result = handler()
        if inspect.isawaitable(result):
            await result
    try:
        yield
    finally:
        for handler in app.router.on_shutdown:
            result = handler()
            if inspect.isawaitable(result):
                await result


def combine_lifespans(*lifespans: Callable[[FastAPI], Any]) -> Lifespan:
    """One lifespan that enters `lifespans` in order and exits them in reverse.

    Accepts what `FastAPI(lifespan=...)` accepts: `@asynccontextmanager` functions and
    bare async (or sync) generator functions. State mappings they yield are merged.
    """

    @asynccontextmanager
    async def combined(app: FastAPI) -> AsyncIterator[Any]:
        state: dict[str, Any] = {}
        async with AsyncExitStack() as stack:
            for item in lifespans:
                if inspect.isasyncgenfunction(item):
                    context = asynccontextmanager(item)(app)
                    value = await stack.enter_async_context(context)
                elif inspect.isgeneratorfunction(item):
                    value = stack.enter_context(contextlib.contextmanager(item)(app))
                else:
                    value = await stack.enter_async_context(item(app))
                if isinstance(value, Mapping):
                    state.update(value)
            yield state or None

    return combined


def queue_of(request: Request) -> QueueClient:
    """The pool the lifespan opened for the app serving `request` (503 without one)."""
    queue = getattr(request.app.state, STATE_KEY, None)
    # a QueueClient: a plain ArqRedis would hand `_owner` to the job as an argument
    if not isinstance(queue, QueueClient):
        logger.error(
            "no arq pool on app.state: %s.lifespan is not running (is the router "
            "included in the app that serves? in tests, use TestClient in a `with`)",
            __name__,
        )
        raise HTTPException(status_code=503, detail="task queue unavailable")
    return queue


async def get_task_queue(request: Request) -> ArqRedis:
    """FastAPI dependency: the pool the lifespan opened for this app.

    async on purpose: FastAPI runs a plain `def` dependency in its threadpool, a hop
    that cost a fifth of the enqueue endpoints' throughput under load. (The generated
    routes call queue_of directly: every dependency costs FastAPI a resolution per
    request.)
    """
    return queue_of(request)


TaskQueue = Annotated[ArqRedis, Depends(get_task_queue)]


# the body of a 504: the job may be queued (see EnqueueOutcomeUnknown)
UNCONFIRMED_MESSAGE = (
    "the task queue did not confirm in time: the job may be queued; retry with the "
    "same Idempotency-Key (never queued twice) or read its status"
)


@contextlib.contextmanager
def queue_errors_as_503() -> Iterator[None]:
    """Turn a Redis outage into 503 for the client (and one log line), not a 500.

    503 means not queued. An enqueue Redis may have run without confirming it is
    504, with the job id (its outcome is unknown, see EnqueueOutcomeUnknown).
    """
    try:
        yield
    except EnqueueOutcomeUnknown as exc:
        logger.warning("job %s: enqueue not confirmed by Redis", exc.job_id)
        detail = {
            "message": UNCONFIRMED_MESSAGE,
            "job_id": exc.job_id,
            "outcome": "unknown",
        }
        raise HTTPException(status_code=504, detail=detail) from None
    except RedisError as exc:
        logger.warning("task queue unavailable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="task queue unavailable") from None

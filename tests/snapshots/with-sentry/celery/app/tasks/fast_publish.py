"""Queue Celery tasks from `async def` endpoints without blocking the event loop.

Celery publishes with blocking sockets. Called on the event loop, a slow or unreachable
broker freezes every endpoint of the app; called in the threadpool, each publish pays
the thread hop, contention among the pool's threads and a second round trip for the
issued-id record. With a Redis broker, `enqueue` does neither:

- the message is built by Celery and kombu themselves: `task.apply_async` runs with a
  kombu Producer whose channel keeps the message instead of sending it (protocol 2
  headers and body, the envelope, the body encoding, delivery tag, delivery info,
  priority and the queue's list key all come from their code, countdown/ETA included);
- after the first message of a task with given options, the next ones are made from
  that one (_Template): Celery's create_task_message runs again with the arguments
  send_task gave it, only the id and the task's arguments change, and what send_task
  and kombu added around it is copied. Most of apply_async's time goes
  to those additions, which never change. Not for a task whose apply_async or
  shadow_name is overridden, an ETA, or while publish signals have receivers;
- none of this while an integration wraps Celery's or kombu's publish functions to
  add headers of its own to each message (wrapper_in_the_way): apply_async in the
  threadpool then runs the wrapper for each message;
- it is written with redis.asyncio in one round trip, together with the issued-id
  record and its owner (registry.py): one Lua script does both when the broker and
  the result backend are the same Redis server (their databases may differ), else
  two calls. With an Idempotency-Key's claim the script takes the claim (SET NX) and
  writes the message only if it did; held already, it writes nothing and answers
  with the task that holds it.
  The messages queued while a write is in flight go together in the next one
  (Batches): under load one call serves many requests, and a lone message goes at
  once.

One bounded connection pool per process and event loop, created on first use; every
wait is bounded (PUBLISH_TIMEOUT), and the event loop keeps serving meanwhile. A
failure that proves the message was not written (no connection could be made: none
was sent) is an OperationalError, the API's 503; once the script was handed to a
connection, a Redis that does not answer may still run it (a paused or overloaded
server runs what it was sent when it resumes): OutcomeUnknown, the API's 504 with the
task id. A message given up on before its batch was sent is never sent.

Verified against celery 5.7.0 with kombu 5.7.0, and celery 5.6.3 with kombu 5.6.2
(tests/test_bgtasks_celery_publish.py compares what this module stores with what
apply_async stores, field by field, and fails on any other release series). Other
releases, other brokers (RabbitMQ), and publishes this module does not reproduce (an
exchange other than the default direct one, a queue with an expiry, eager mode,
task-sent events) take the blocking path in the threadpool instead: correct first; the
app says so once, at startup, in a warning with the reason. Signals: before_task_publish
and after_task_publish are sent while the message is built, just before it is written.

TLS (rediss://, or TLS options on a redis:// URL) takes the fast path too, with the
options kombu and Celery resolved from the URL and the app's settings (broker_use_ssl,
redis_backend_use_ssl): the same certificate checks as the blocking path, never a
fallback to plain TCP.

`aclose()` closes the current event loop's connections; `lifespan` calls it at the
app's shutdown, and at its startup keeps the garbage collector off the objects loaded
by then (freeze_startup_objects: the pauses it spares are the p99).
The generated router runs that lifespan with the app's own.
"""

import asyncio
import contextlib
import functools
import gc
import inspect
import json
import logging
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, final

import celery
import celery.app.base
import celery.app.task
import kombu
import kombu.messaging
from celery import Celery, Task, signals
from fastapi import FastAPI
from kombu import serialization
from kombu.exceptions import OperationalError
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import SSLConnection as BlockingSSLConnection
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app.tasks import registry
from app.tasks.celery_app import SOCKET_TIMEOUT, ResultBackend, celery_app

logger = logging.getLogger(__name__)

# (celery, kombu) release series whose messages this module reproduces.
VERIFIED_RELEASES = (("5.7.", "5.7."), ("5.6.", "5.6."))
# Most Redis connections one process opens for publishing (per event loop).
MAX_CONNECTIONS = 20
# The longest an enqueue waits, for a free connection and for Redis together.
PUBLISH_TIMEOUT = SOCKET_TIMEOUT + 1.0

# What kombu's Redis channel sends when it publishes a message (LPUSH, and PEXPIRE for
# a queue with an expiry) and declares a queue (SADD of its bindings). Anything else,
# a read such as routing through an exchange's bindings, is not reproduced here.
_WRITES = frozenset({"lpush", "sadd", "pexpire"})

# Per message, in the result backend's database: take its Idempotency-Key's claim when
# it has one (unless held: then the holder's id is its answer and nothing of it is
# written), and record its issued id with the owner. KEYS from k: the claim (or a
# placeholder), the issued id, the message's writes. ARGV from a: whether it has a
# claim, the TTL, the issued record's value, the task id, the number of writes, then
# each write's command and value. `held[m]` is '' for a message to write.
_CLAIM_AND_ISSUE = """
local held, plan = {}, {}
for m = 1, messages do
  local claimed, ttl, writes = ARGV[a] == '1', ARGV[a + 1], tonumber(ARGV[a + 4])
  local holder = false
  if claimed then
    holder = redis.call('GET', KEYS[k])
  end
  if holder then
    held[m] = holder
  else
    held[m] = ''
    if claimed then
      redis.call('SET', KEYS[k], ARGV[a + 3], 'EX', ttl)
    end
    redis.call('SET', KEYS[k + 1], ARGV[a + 2], 'EX', ttl)
  end
  plan[m] = {a + 5, k + 2, writes}
  a = a + 5 + 2 * writes
  k = k + 2 + writes
end
"""
# The messages' writes (their keys and ARGV as above) of the messages to write.
_WRITE_MESSAGES = """
for m = 1, messages do
  if held[m] == '' then
    local at, key = plan[m][1], plan[m][2]
    for w = 0, plan[m][3] - 1 do
      redis.call(ARGV[at + 2 * w], KEYS[key + w], ARGV[at + 2 * w + 1])
    end
  end
end
"""
# Broker and result backend on one server. ARGV: the result backend's database, the
# broker's, D queue declarations (kombu's SADD of bindings: KEYS 1..D, ARGV command and
# value each), the number of messages, then the messages. SELECT inside a script
# applies to that script only.
_ONE_ROUND_TRIP = (
    """
local declarations = tonumber(ARGV[3])
local messages = tonumber(ARGV[4 + 2 * declarations])
local a, k = 5 + 2 * declarations, declarations + 1
redis.call('SELECT', ARGV[1])
"""
    + _CLAIM_AND_ISSUE
    + """
redis.call('SELECT', ARGV[2])
for i = 1, declarations do
  redis.call(ARGV[2 + 2 * i], KEYS[i], ARGV[3 + 2 * i])
end
"""
    + _WRITE_MESSAGES
    + """
return held
"""
)
# Two servers, first the result backend's: claims and issued ids alone (ARGV: the
# number of messages, then the messages, each with no writes).
_ISSUED_ONLY = (
    """
local messages = tonumber(ARGV[1])
local a, k = 2, 1
"""
    + _CLAIM_AND_ISSUE
    + """
return held
"""
)
# ... then the broker's: the writes alone (declarations included), KEYS the keys, ARGV
# each write's command and value.
_WRITES_ONLY = """
for i = 1, #KEYS do
    redis.call(ARGV[2 * i - 1], KEYS[i], ARGV[2 * i])
end
return #KEYS
"""
# Release the claims of messages that were not written, if they still name them.
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
  end
end
return 0
"""

# kombu's own methods a message and a declaration go through; a transport that
# overrides any of them publishes differently, so it keeps the blocking path.
_CHANNEL_METHODS = (
    "prepare_message",
    "basic_publish",
    "_inplace_augment_message",
    "encode_body",
    "_next_delivery_tag",
    "_put",
    "_get_message_priority",
    "_q_for_pri",
    "priority",
    "exchange_declare",
    "queue_declare",
    "queue_bind",
    "_new_queue",
    "_queue_bind",
    "_size",
)


# The TLS options redis.asyncio's SSLConnection takes (kombu and Celery give the same
# names to redis-py's blocking SSLConnection).
_TLS_OPTIONS = frozenset(
    name
    for name in inspect.signature(SSLConnection.__init__).parameters
    if name.startswith("ssl_")
)


# The functions every message goes through, with the modules that define them. An
# integration that adds headers of its own to each message (sentry-sdk's Celery
# integration adds sentry-trace and baggage) replaces one of them with a wrapper.
_PUBLISH_FUNCTIONS = (
    (Task, "apply_async", celery.app.task),
    (Celery, "send_task", celery.app.base),
    (Producer, "publish", kombu.messaging),
)
_wrappers_logged: set[str] = set()


class Unsupported(Exception):
    """A publish this module does not reproduce; the blocking path sends it."""


class OutcomeUnknown(OperationalError):
    """The message may be queued: it was handed to the broker (or its script to
    Redis), which did not confirm it in time. A stalled server still runs what it was
    sent when it resumes. Its id and claim stay recorded: the same Idempotency-Key
    then answers with this task instead of queueing another."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not confirmed in time: it may be queued")
        self.task_id = task_id


def nothing_sent(exc: BaseException) -> bool:
    """Whether `exc` proves the message never left: no connection could be made (it
    was refused, the name did not resolve, none was free, the connection was never
    set up). Anything else, a timeout while writing or waiting for the answer above
    all, may have queued it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionRefusedError, socket.gaierror, NotSent)):
            return True
        text = str(current)
        if isinstance(current, RedisError) and (
            "connecting to" in text or "No connection available" in text
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class NotSent(RedisError):
    """A batch given up on before it had a connection: nothing of it was sent."""


@dataclass(eq=False)
class _Handover:
    """Where a message of a batch stands. `started`: its batch holds a connection to
    the broker's Redis, from then on the message may be queued. `abandoned`: its
    caller gave up first (and answered "not queued"), so its batch must never be
    sent. Both are set by synchronous code of one event loop: never both."""

    started: bool = False
    abandoned: bool = False


# The handovers of the batch being written, in the task that writes it.
_SENDING: ContextVar[tuple[_Handover, ...]] = ContextVar("_SENDING", default=())


class _SendingPool(BlockingConnectionPool):
    """The broker's pool: hands the batch being written over once it holds a connected
    connection, or refuses to send it when one of its callers has given up."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().get_connection(*args, **kwargs)
        batch = _SENDING.get()
        if any(handover.abandoned for handover in batch):
            await self.release(connection)
            raise NotSent("the batch was given up on before it was sent")
        for handover in batch:
            handover.started = True
        return connection


@final  # its __enter__ returns exactly a Recorder
class Recorder:
    """Stands in for kombu's Redis client and its pipelines: keeps the writes."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _WRITES:

            def write(key: Any, value: Any) -> "Recorder":
                self.writes.append((name.upper(), str(key), value))
                return self

            return write
        if name == "llen":  # queue_declare counts the queue's messages: unused
            return lambda key: self
        raise Unsupported(f"kombu would send {name.upper()} to Redis")

    def pipeline(self, transaction: bool = True) -> "Recorder":
        return self

    def execute(self) -> list[Any]:
        return []

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class KeepingChannel(kombu_redis.Channel):
    """kombu's Redis channel on a Recorder instead of a connection.

    Nothing of kombu's __init__ runs (it connects); what publishing and declaring
    read is set the same way: the transport options (body encoding, priority steps,
    key prefix, ...) and the exchange types.
    """

    def __init__(self, transport: Any) -> None:
        self.connection = transport
        options = transport.client.transport_options
        for name in self.from_transport_options:
            if name in options:
                setattr(self, name, options[name])
        kinds = {name: kind(self) for name, kind in self.exchange_types.items()}
        setattr(self, "exchange_types", kinds)  # noqa: B010 - instances, as kombu's
        self.auto_delete_queues: set[str] = set()
        self._expires: dict[str, Any] = {}
        self.recorder = Recorder()

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Recorder]:
        yield self.recorder

    def _create_client(self, asynchronous: bool = False) -> Any:
        raise Unsupported("kombu would open a Redis connection")

    def _get_pool(self, asynchronous: bool = False) -> Any:
        raise Unsupported("kombu would open a Redis connection")


class KeepingProducer(Producer):
    """A kombu Producer on a KeepingChannel: it sends nothing, its channel records."""

    def __init__(self, channel: KeepingChannel) -> None:
        super().__init__(channel, auto_declare=False)
        self.__connection__ = channel.connection.client
        self.sent: list[dict[str, Any]] = []

    def maybe_declare(self, entity: Any, retry: bool = False, **policy: Any) -> Any:
        arguments = getattr(entity, "queue_arguments", None) or {}
        if "x-expires" in arguments:
            # kombu refreshes such a queue's bindings with a script of its own
            raise Unsupported(f"queue {entity.name!r} has an expiry")
        # kombu's own declaration, cached per connection as kombu caches it
        return super().maybe_declare(entity, retry=False)

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(kwargs)
        # nothing is sent here, so there is no connection to retry
        kwargs["retry"] = False
        return super().publish(body, *args, **kwargs)


@dataclass
class _Route:
    """Where and how the fast path writes, worked out once per process."""

    transport: Any
    broker: dict[str, Any]
    backend: dict[str, Any]
    prefix: str
    retry_policy: dict[str, Any]

    @property
    def broker_db(self) -> int:
        return int(self.broker.get("db", 0))

    @property
    def backend_db(self) -> int:
        return int(self.backend.get("db", 0))

    @property
    def same_server(self) -> bool:
        fields = ("host", "port", "username", "password", "connection_class")
        return all(self.broker.get(f) == self.backend.get(f) for f in fields)


_route: _Route | None = None
_route_checked = False
_blocking_reason: str | None = None
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients]" = (
    weakref.WeakKeyDictionary()
)
_pending_declarations: list[tuple[str, str, Any]] = []


def _find_route() -> _Route | None:
    """The fast path's settings, or None (reason logged) for the blocking path."""
    conf = celery_app.conf
    versions = (celery.__version__, kombu.__version__)
    if not any(
        versions[0].startswith(c) and versions[1].startswith(k)
        for c, k in VERIFIED_RELEASES
    ):
        return _blocking(f"celery {versions[0]} / kombu {versions[1]} are not verified")
    schemes = ("redis://", "rediss://")
    broker_url = conf.broker_write_url or conf.broker_url
    if not isinstance(broker_url, str) or not broker_url.startswith(schemes):
        return _blocking("the broker is not a redis:// or rediss:// URL")
    backend_url = str(conf.result_backend or "")
    if not backend_url.startswith(schemes):
        return _blocking("the result backend is not a redis:// or rediss:// URL")
    if conf.task_always_eager or conf.task_send_sent_event:
        return _blocking("task_always_eager or task_send_sent_event is set")
    if not isinstance(celery_app.backend, ResultBackend):
        # Celery's stock Redis backend subscribes (blocking) to every published task
        return _blocking("the result backend is not celery_app.ResultBackend")
    connection = celery_app.connection_for_write()
    transport = connection.transport
    channel = getattr(transport, "Channel", None)
    if not isinstance(channel, type) or not issubclass(channel, kombu_redis.Channel):
        return _blocking("the broker transport is not kombu's Redis transport")
    for name in _CHANNEL_METHODS:
        if getattr(channel, name) is not getattr(kombu_redis.Channel, name):
            return _blocking(f"the broker transport overrides Channel.{name}")
    # TLS as kombu's channel uses it (a non-empty dict of options) ...
    broker_tls = _tls(
        "broker",
        broker_url,
        isinstance(connection.ssl, dict) and bool(connection.ssl),
        connection.ssl,
    )
    # ... and as Celery's Redis backend resolved it (URL, redis_backend_use_ssl)
    backend_params = getattr(celery_app.backend, "connparams", None) or {}
    backend_class = backend_params.get("connection_class")
    backend_tls = _tls(
        "result backend",
        backend_url,
        isinstance(backend_class, type)
        and issubclass(backend_class, BlockingSSLConnection),
        {k: v for k, v in backend_params.items() if k.startswith("ssl_")},
    )
    for tls in (broker_tls, backend_tls):
        if isinstance(tls, str):
            return _blocking(tls)
    assert isinstance(broker_tls, dict) and isinstance(backend_tls, dict)
    options = transport.client.transport_options
    return _Route(
        transport=transport,
        broker={**_server(broker_url), **broker_tls},
        backend={**_server(backend_url), **backend_tls},
        prefix=str(options.get("global_keyprefix", "")),
        retry_policy=dict(conf.task_publish_retry_policy or {}),
    )


def _server(url: str) -> dict[str, Any]:
    """Host, port, database and credentials of a redis:// URL."""
    fields = ("host", "port", "db", "username", "password")
    return {k: v for k, v in parse_url(url).items() if k in fields}


def _tls(name: str, url: str, enabled: bool, options: Any) -> dict[str, Any] | str:
    """The async client's TLS parameters ({} for plain TCP), or why it cannot
    connect the way the blocking client does."""
    if not enabled:
        if url.startswith("rediss://"):
            # the blocking client would speak plain TCP to a TLS port: not followed
            return f"the {name} URL is rediss:// but its client has no TLS options"
        return {}
    unknown = sorted(set(options) - _TLS_OPTIONS)
    if unknown:
        return f"redis.asyncio does not take the {name} TLS option(s) {unknown}"
    return {**options, "connection_class": SSLConnection}


def _blocking(reason: str) -> _Route | None:
    # A warning, once per process (route() keeps the answer), at the app's startup:
    # the blocking path works, but every publish then costs a threadpool hop.
    global _blocking_reason
    _blocking_reason = reason
    logger.warning(
        "fast_publish is off, tasks are published in the threadpool: %s", reason
    )
    return None


def route() -> _Route | None:
    """The fast path's route, or None when tasks are published the blocking way."""
    global _route, _route_checked
    if not _route_checked:
        _route = _find_route()
        _route_checked = True
    return _route


def fallback_reason() -> str | None:
    """Why tasks are published through apply_async in the threadpool right now, or
    None while the fast path is on (`bgtasks doctor` reports it)."""
    if route() is None:
        return _blocking_reason
    wrapped = wrapper_in_the_way()
    if wrapped is not None:
        return f"{wrapped} is wrapped (an integration adds headers to each message)"
    return None


class _Clients:
    """This event loop's Redis clients: the broker's, and the backend's if apart."""

    def __init__(self, found: _Route) -> None:
        self.broker = _client(found.broker, _SendingPool)
        self.backend = (
            self.broker
            if found.same_server
            else _client(found.backend, BlockingConnectionPool)
        )
        self.one_round_trip = self.broker.register_script(_ONE_ROUND_TRIP)
        self.writes_only = self.broker.register_script(_WRITES_ONLY)
        self.issued_only = self.backend.register_script(_ISSUED_ONLY)
        self.release = self.backend.register_script(_RELEASE)
        send = functools.partial(_write_batch, found, self)
        self.batches: Batches[_Message, str] = Batches(send, PUBLISH_TIMEOUT)


def _client(params: dict[str, Any], kind: type[BlockingConnectionPool]) -> Redis:
    pool = kind(
        max_connections=MAX_CONNECTIONS,
        timeout=PUBLISH_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        # retries are ours (refused connections only): a retried timeout could
        # queue the task twice
        retry=Retry(NoBackoff(), 0),
        **params,
    )
    return Redis(connection_pool=pool)


async def aclose() -> None:
    """Close this event loop's Redis connections (a later enqueue opens new ones)."""
    clients = _clients.pop(asyncio.get_running_loop(), None)
    if clients is not None:
        await clients.broker.connection_pool.disconnect()
        await clients.backend.connection_pool.disconnect()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At startup, freeze what the app has loaded (see freeze_startup_objects); at
    shutdown, close the connections enqueue opened: left open they outlive the app
    until the process exits (each TestClient block leaves its own)."""
    del app
    # The publish route's objects made now, not on the first request; a fallback to
    # the blocking path is logged here, at startup.
    if route() is not None:
        wrapper_in_the_way()
    if FREEZE_STARTUP_OBJECTS:
        freeze_startup_objects()
    try:
        yield
    finally:
        await aclose()
        await registry.aclose()


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


def _clients_for_this_loop(found: _Route) -> _Clients:
    loop = asyncio.get_running_loop()
    clients = _clients.get(loop)
    if clients is None:
        clients = _clients[loop] = _Clients(found)
    return clients


@dataclass
class Built:
    """A message as kombu would write it: (command, key, value), in order."""

    route: _Route
    writes: list[tuple[str, str, Any]]
    repeated: bool = False  # made from a template, not by apply_async itself


_keeping = threading.local()
# Templates kept per thread (a message's reply_to is its publishing thread's).
MAX_TEMPLATES = 256


@dataclass
class _Template:
    """One apply_async of a task with some options, to repeat for other ids and args.

    create_task_message (Celery's protocol 2 headers, properties and body) runs again
    for each message with the arguments send_task gave it then, except the id and the
    task's arguments; what send_task and kombu added around its result (delivery info,
    mode, priority, routing headers) depends on the task and the options only, so it
    is copied from that first envelope. The test module checks both kinds of message
    against apply_async's.
    """

    create: Any  # the app's create_task_message
    arguments: dict[str, Any]  # what send_task passed it, by name
    options: dict[str, Any]  # ... and its **options
    headers: dict[str, Any]  # headers added to create_task_message's
    properties: dict[str, Any]  # properties added to create_task_message's
    serializer: str
    key: str  # the queue's list


def _recording_create(amqp: Any) -> Any:
    """The app's create_task_message, noting its calls while a build records them."""
    create = amqp.create_task_message
    if getattr(create, "bgtasks_recording", False):
        return create

    def recording(*args: Any, **kwargs: Any) -> Any:
        message = create(*args, **kwargs)
        calls = getattr(_keeping, "calls", None)
        if calls is not None:
            headers, properties = dict(message[0]), dict(message[1])
            calls.append((create, args, kwargs, headers, properties))
        return message

    recording.bgtasks_recording = True  # type: ignore[attr-defined]
    # create_task_message is a cached_property of the AMQP instance
    amqp.__dict__["create_task_message"] = recording
    return recording


def _can_repeat(task: Task, options: dict[str, Any]) -> bool:
    """Whether an apply_async of `task` depends on its id and arguments only."""
    kind = type(task)
    return (
        kind.apply_async is Task.apply_async
        and kind.shadow_name is Task.shadow_name
        and getattr(task, "_dump_pydantic_arguments", None) is None
        and "eta" not in options
        and not signals.before_task_publish.receivers
        and not signals.after_task_publish.receivers
    )


def _template_key(task: Task, options: dict[str, Any]) -> Any:
    try:
        key = (task.name, frozenset(options.items()))
        hash(key)
    except TypeError:
        return None
    return key


def wrapper_in_the_way() -> str | None:
    """The publish function an integration wrapped, or None when all are the libraries'.

    A message made from a template (_Template) would carry the headers the wrapper
    added to the first one (one trace id for every message), and the wrapper would not
    run for it. So while any is wrapped, every message goes through apply_async in the
    threadpool, wrapper included; checked on each publish, since an integration may
    be set up after the app started. Logged once per function, as a warning.
    """
    for owner, name, module in _PUBLISH_FUNCTIONS:
        kind = type(celery_app) if owner is Celery else owner
        code = getattr(getattr(kind, name, None), "__code__", None)
        if code is not None and code.co_filename == module.__file__:
            continue
        where = f"{owner.__name__}.{name}"
        if where not in _wrappers_logged:
            _wrappers_logged.add(where)
            logger.warning(
                "fast_publish steps aside, tasks are published in the threadpool: "
                "%s is wrapped (an integration adds its own headers to each message)",
                where,
            )
        return where
    return None


def build(task: Task, kwargs: dict[str, Any], task_id: str, **options: Any) -> Built:
    """The writes kombu would send for `task.apply_async(...)`, in order, unsent."""
    found = route()
    if found is None:
        raise Unsupported("tasks are published the blocking way")
    wrapped = wrapper_in_the_way()
    if wrapped is not None:
        raise Unsupported(f"{wrapped} is wrapped")
    producer = getattr(_keeping, "producer", None)
    if producer is None:
        producer = _keeping.producer = KeepingProducer(KeepingChannel(found.transport))
        _keeping.templates = {}
    # a task of @celery_app.task is a proxy until the app is finalized
    current = getattr(task, "_get_current_object", None)
    task = current() if callable(current) else task
    key = _template_key(task, options) if _can_repeat(task, options) else None
    template = _keeping.templates.get(key) if key is not None else None
    if template is not None:
        write = _repeat(template, producer.channel, task, kwargs, task_id)
        return Built(found, [write], repeated=True)
    return _apply(found, producer, task, kwargs, task_id, options, key)


def _apply(
    found: _Route,
    producer: KeepingProducer,
    task: Task,
    kwargs: dict[str, Any],
    task_id: str,
    options: dict[str, Any],
    key: Any,
) -> Built:
    """Run apply_async on the KeepingProducer; keep a template when it can repeat."""
    _check_destination(task, kwargs, options)
    recorder = producer.channel.recorder = Recorder()
    producer.sent = []
    _recording_create(task.app.amqp)
    calls: list[Any] = []
    _keeping.calls = calls
    try:
        task.apply_async(kwargs=kwargs, task_id=task_id, producer=producer, **options)
    finally:
        _keeping.calls = None
    pushes = [write for write in recorder.writes if write[0] == "LPUSH"]
    if len(pushes) != 1:
        raise Unsupported(f"{len(pushes)} messages instead of one")
    writes = []
    for name, list_key, value in recorder.writes:
        write = (name, found.prefix + list_key, value)
        if name != "SADD":
            writes.append(write)
        elif write not in _pending_declarations:
            # kombu declares a queue once per connection (this process, here): its
            # bindings go with the next write that succeeds
            _pending_declarations.append(write)
    if key is not None and len(writes) == 1 and len(calls) == 1:
        template = _template(calls[0], producer.sent, writes[0])
        if template is not None:
            if len(_keeping.templates) >= MAX_TEMPLATES:
                _keeping.templates.clear()
            _keeping.templates[key] = template
    return Built(found, writes)


def _check_destination(task: Task, kwargs: dict[str, Any], options: Any) -> None:
    """Refuse a queue kombu declares with a script of its own (one with an expiry)
    before apply_async runs: once it has sent before_task_publish, the blocking path
    would send it a second time."""
    merged = {**task._get_exec_options(), **options}
    queue = task.app.amqp.router.route(merged, task.name, (), kwargs, task).get("queue")
    if "x-expires" in (getattr(queue, "queue_arguments", None) or {}):
        raise Unsupported(f"queue {queue.name!r} has an expiry")


def _template(call: Any, sent: list[dict[str, Any]], write: Any) -> _Template | None:
    create, args, kwargs, made_headers, made_properties = call
    if len(sent) != 1 or sent[0].get("compression") or sent[0].get("content_type"):
        return None
    envelope = json.loads(write[2])
    headers, properties = envelope["headers"], envelope["properties"]
    if any(properties.get(k) != v for k, v in made_properties.items()):
        return None
    named = dict(inspect.signature(create).bind(*args, **kwargs).arguments)
    extra = named.pop("options", {})
    return _Template(
        create=create,
        arguments=named,
        options=extra,
        headers={
            k: v
            for k, v in headers.items()
            if k not in made_headers or made_headers[k] != v
        },
        properties={
            k: v
            for k, v in properties.items()
            if k not in made_properties and k != "delivery_tag"
        },
        serializer=str(sent[0].get("serializer") or celery_app.conf.task_serializer),
        key=write[1],
    )


def plain_kwargs_repr(kwargs: dict[str, Any], maxsize: int) -> str | None:
    """What Celery's saferepr(kwargs, maxsize) says, for keywords whose values are
    str, int, float, bool or None and a text shorter than maxsize; None otherwise."""
    parts = []
    for key, value in kwargs.items():
        if type(key) is not str:
            return None
        kind = type(value)
        if kind is str:
            shown = "'" + value.replace("'", "\\'") + "'"
        elif kind is int or kind is float or kind is bool:
            shown = str(value)
        elif value is None:
            shown = "None"
        else:
            return None
        parts.append("'" + key.replace("'", "\\'") + "': " + shown)
    text = "{" + ", ".join(parts) + "}"
    return text if len(text) < maxsize else None


def _repeat(
    template: _Template,
    channel: KeepingChannel,
    task: Task,
    kwargs: dict[str, Any],
    task_id: str,
) -> tuple[str, str, Any]:
    """The LPUSH of a new message from `template`, as apply_async would write it."""
    if task.typing:
        task.__header__(**kwargs)  # apply_async's argument check: TypeError
    arguments = {**template.arguments, "task_id": task_id, "args": (), "kwargs": kwargs}
    # the arguments' reprs are the slowest part of create_task_message: given here
    # for plain ones, the same text (the test module compares them)
    if arguments.get("argsrepr") is None:
        arguments["argsrepr"] = "()"
    if arguments.get("kwargsrepr") is None:
        maxsize = task.app.amqp.kwargsrepr_maxsize
        arguments["kwargsrepr"] = plain_kwargs_repr(kwargs, maxsize)
    headers, properties, body, _ = template.create(**arguments, **template.options)
    headers.update(template.headers)
    properties.update(template.properties)
    properties["delivery_tag"] = channel._next_delivery_tag()
    content_type, content_encoding, data = serialization.dumps(
        body, serializer=template.serializer
    )
    encoded, encoding = channel.encode_body(data, channel.body_encoding)
    properties["body_encoding"] = encoding
    envelope = {
        "body": encoded,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return ("LPUSH", template.key, kombu_json.dumps(envelope))


async def enqueue(
    task: Task,
    kwargs: dict[str, Any],
    *,
    task_id: str,
    ttl: int,
    owner: str | None = None,
    claim: str | None = None,
    **options: Any,
) -> str:
    """Queue `task` with `kwargs` under `task_id`, recording the id as issued (with
    `owner`, the caller who queued it) first or in the same step.

    With `claim` (registry.claim_key of an Idempotency-Key) the task is queued only if
    no earlier task holds that claim; otherwise nothing is queued and that task's id is
    returned. Returns the id the task is queued under.

    Raises OperationalError when the broker or the result backend cannot be reached
    within PUBLISH_TIMEOUT and nothing was queued (nothing stays recorded then), and
    OutcomeUnknown, a subclass, when the message may have been queued.
    """
    try:
        built = build(task, kwargs, task_id, **options)
    except Unsupported as reason:
        if route() is not None:
            logger.debug("task %s published in the threadpool: %s", task_id, reason)
        return await run_in_threadpool(
            _publish_blocking, task, kwargs, task_id, ttl, options, owner, claim
        )
    issued = registry.issued_key(task_id)
    value = registry.issued_value(owner)
    message = _Message(built, task_id, issued, value, ttl, claim)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            held = await _write(message)
    except (TimeoutError, RedisError, OSError) as exc:
        if message.handover.started and not nothing_sent(exc):
            raise OutcomeUnknown(task_id) from exc
        # never sent; and now never will be, should its batch still get a connection
        message.handover.abandoned = True
        raise OperationalError(f"could not queue task {task_id}: {exc!r}") from exc
    return held or task_id


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


@dataclass(eq=False)
class _Message:
    """A message and its issued id (and claim), as one item of a batch."""

    built: Built
    task_id: str
    issued: str  # the issued-id key
    issued_value: str  # what it holds: the owner
    ttl: int
    claim: str | None = None  # an Idempotency-Key's claim
    handover: _Handover = field(default_factory=_Handover)

    def claim_and_issue(self, writes: list[tuple[str, str, Any]]) -> tuple[Any, Any]:
        """This message's KEYS and ARGV for _CLAIM_AND_ISSUE, with `writes`."""
        keys = [self.claim or self.issued, self.issued, *(key for _, key, _ in writes)]
        args = [
            "1" if self.claim else "0",
            self.ttl,
            self.issued_value,
            self.task_id,
            len(writes),
            *(part for name, _, value in writes for part in (name, value)),
        ]
        return keys, args


async def _write(message: _Message) -> str:
    clients = _clients_for_this_loop(message.built.route)
    return await clients.batches.submit(message)


async def _write_batch(
    found: _Route, clients: _Clients, batch: list[_Message]
) -> list[str]:
    """Write a batch's claims, ids and messages: one script call, or two on two
    servers. Per message: '' when it was written, else the id of the task holding its
    claim (nothing of it written)."""
    declarations = list(_pending_declarations)
    declared = [part for name, _, value in declarations for part in (name, value)]
    sending = _SENDING.set(tuple(one.handover for one in batch))
    try:
        if found.same_server:
            keys = [key for _, key, _ in declarations]
            args: list[Any] = [found.backend_db, found.broker_db, len(declarations)]
            args += [*declared, len(batch)]
            for one in batch:
                one_keys, one_args = one.claim_and_issue(one.built.writes)
                keys += one_keys
                args += one_args
            held = await _retrying_refused(
                found, clients.one_round_trip, keys=keys, args=args
            )
        else:
            held = await _write_apart(found, clients, batch, declarations)
    finally:
        _SENDING.reset(sending)
    for write in declarations:
        if write in _pending_declarations:
            _pending_declarations.remove(write)
    return [_text(one) for one in held]


async def _write_apart(
    found: _Route,
    clients: _Clients,
    batch: list[_Message],
    declarations: list[tuple[str, str, Any]],
) -> list[Any]:
    """The claims and ids on the result backend's server, then the messages of the
    claimed ones on the broker's; the claims and ids are removed again when the
    messages were certainly not written."""
    keys: list[Any] = []
    args: list[Any] = [len(batch)]
    for one in batch:
        one_keys, one_args = one.claim_and_issue([])
        keys += one_keys
        args += one_args
    # not the broker's pool: nothing is handed over yet
    handovers = _SENDING.set(())
    try:
        held = await _retrying_refused(found, clients.issued_only, keys=keys, args=args)
    finally:
        _SENDING.reset(handovers)
    written = [one for i, one in enumerate(batch) if not _text(held[i])]
    writes = [*declarations, *(w for one in written for w in one.built.writes)]
    try:
        await _retrying_refused(
            found,
            clients.writes_only,
            keys=[key for _, key, _ in writes],
            args=[part for name, _, value in writes for part in (name, value)],
        )
    except BaseException as exc:
        if not any(one.handover.started for one in batch) or nothing_sent(exc):
            await asyncio.shield(_forget(clients, written))
        raise
    return list(held)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


async def _forget(clients: _Clients, messages: list[_Message]) -> None:
    """Remove the ids and claims of messages that were not written."""
    try:
        await clients.backend.delete(*(one.issued for one in messages))
        claimed = [one for one in messages if one.claim]
        if claimed:
            await clients.release(
                keys=[one.claim or "" for one in claimed],
                args=[one.task_id for one in claimed],
            )
    except RedisError:
        logger.warning(
            "could not remove the records of unsent tasks %s",
            [one.task_id for one in messages],
        )


async def _retrying_refused(found: _Route, call: Any, *args: Any, **kwargs: Any) -> Any:
    """Await `call(*args, **kwargs)`; retry it while the connection is refused.

    Nothing was sent then, so it is safe to send again; the retries follow
    task_publish_retry_policy, within PUBLISH_TIMEOUT. Any other error is raised at
    once: after a timeout the write may have happened.
    """
    try:
        return await call(*args, **kwargs)
    except RedisError as exc:
        error = exc
    policy = found.retry_policy
    wait = float(policy.get("interval_start", 0))
    for _ in range(int(policy.get("max_retries") or 0)):
        if not isinstance(error.__cause__ or error.__context__, ConnectionRefusedError):
            break
        await asyncio.sleep(wait)
        step = float(policy.get("interval_step", 0.2))
        wait = min(wait + step, float(policy.get("interval_max", 1.0)))
        try:
            return await call(*args, **kwargs)
        except RedisError as exc:
            error = exc
    raise error


def _publish_blocking(
    task: Task,
    kwargs: dict[str, Any],
    task_id: str,
    ttl: int,
    options: dict[str, Any],
    owner: str | None = None,
    claim: str | None = None,
) -> str:
    """The blocking path (run in the threadpool): record the id (and take the claim),
    then apply_async. The id of the task queued, or of the one holding the claim."""
    # Recorded before publishing, so a status call can never race the record.
    try:
        held = registry.remember(task_id, ttl=ttl, owner=owner, claim=claim)
    except RedisError:
        if claim is not None:
            # Redis may yet take the claim: release it, or the key would name a task
            # never published
            with contextlib.suppress(RedisError):
                registry.forget(task_id, claim=claim)
        raise
    if held is not None:
        return held
    try:
        task.apply_async(kwargs=kwargs, task_id=task_id, **options)
    except Exception as exc:
        connection_error = isinstance(exc, (OperationalError, RedisError, OSError))
        if connection_error and not nothing_sent(exc):
            # the broker may have it: the record and the claim stay
            raise OutcomeUnknown(task_id) from exc
        registry.forget(task_id, claim=claim)
        raise
    return task_id

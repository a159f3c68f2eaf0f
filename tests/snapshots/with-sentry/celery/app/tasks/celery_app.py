"""The Celery application: broker, result backend, reliability settings, beat schedule.

Start a worker with `celery -A app.tasks.celery_app worker --loglevel=info`
and the scheduler with `celery -A app.tasks.celery_app beat --loglevel=info`.
"""

import ssl
from datetime import timedelta
from typing import Any

from celery import Celery, Task, signals
from celery.backends.redis import RedisBackend
from celery.exceptions import Ignore
from celery.schedules import crontab
from celery.utils.log import get_task_logger
from redis.exceptions import RedisError

from app.core.config import settings
from app.tasks import celery_inbox, error_reporting, liveness, registry

logger = get_task_logger(__name__)

# str(): a reused settings field may be a pydantic URL type.
BROKER_URL = str(settings.CELERY_BROKER_URL)
RESULT_BACKEND_URL = str(settings.CELERY_RESULT_BACKEND)
# rediss:// (TLS, the default of managed Redis services): the server's certificate is
# verified against the system's certificate authorities, or the file the URL names
# (`?ssl_ca_certs=/path/ca.pem`; URL parameters replace these). Without this, Celery's
# Redis result backend refuses the URL and kombu would not use TLS with the
# transport below.
BROKER_TLS = (
    {"ssl_cert_reqs": ssl.CERT_REQUIRED} if BROKER_URL.startswith("rediss://") else None
)
RESULT_BACKEND_TLS = (
    {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if RESULT_BACKEND_URL.startswith("rediss://")
    else None
)

# Time limits apply to every task. The soft limit raises SoftTimeLimitExceeded inside
# the task so it can clean up; the hard limit kills the pool process.
TASK_SOFT_TIME_LIMIT = 5 * 60
TASK_TIME_LIMIT = 6 * 60
# Exponential retry backoff never waits longer than this between two attempts.
RETRY_BACKOFF_MAX = 10 * 60
# A task whose pool process died (OOM kill, segfault) is sent again after this delay.
WORKER_LOST_RETRY_DELAY = 5
# Results (and the ids the API issued) are kept this long (seconds; the
# BGTASKS_RESULT_RETENTION_SECONDS setting, a day as generated).
RESULT_EXPIRES = max(60, int(settings.BGTASKS_RESULT_RETENTION_SECONDS))

# Redis hands an unacknowledged message to another worker after visibility_timeout.
# It must outlast the longest run (the hard limit, with a 2x margin) and the longest
# retry countdown (a retried task waits unacknowledged in the worker until its ETA),
# or a task still running or waiting would be delivered twice. A worker that is
# stopped (SIGTERM, with REMAP_SIGTERM=SIGQUIT as the run files set it) hands its
# messages back at once (soft shutdown, below); only one killed outright leaves them
# for this long.
VISIBILITY_TIMEOUT = 2 * TASK_TIME_LIMIT + RETRY_BACKOFF_MAX
# How often a worker looks for messages whose visibility timeout has passed.
UNACKED_SWEEP_SECONDS = 10
# A task whose worker was killed runs again at most this long after it started.
REDELIVERY_DELAY = VISIBILITY_TIMEOUT + UNACKED_SWEEP_SECONDS
# On a stop, running tasks get this long to finish; the rest are handed back to the
# broker (celery 5.5+ soft shutdown). Keep the run files' stop grace period above it.
SOFT_SHUTDOWN_TIMEOUT = 30
# Retry countdowns are ETA messages a worker holds beside its prefetch of one: at most
# this many per worker, so one worker cannot sit on a backlog of delayed retries.
WORKER_ETA_TASK_LIMIT = 20

# A worker retries a result it could not store (Redis restarting) this many times,
# about 30 s in all, before the task is reported FAILURE.
RESULT_WRITE_RETRIES = 30

# Bounded socket timeouts: without them a publish to a broker that vanished without
# closing the TCP connection waits forever (and so does the HTTP request behind it).
SOCKET_TIMEOUT = 5


class CancellableTask(Task):
    """Base task that honours the API's cancel flag before it runs.

    revoke() only reaches workers that are running when it is sent, and they forget it
    on restart; the flag lives in Redis, so a task cancelled while no worker was up is
    still skipped when a worker picks it up later. Its messages are checked before
    Celery reads them (message_guard): a malformed one is dropped, not fatal.
    """

    Strategy = "app.tasks.message_guard:guarded_strategy"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        try:
            cancelled = registry.cancel_requested(task_id)
        except RedisError:
            # The revoke() broadcast still applies; do not fail the task over this.
            logger.warning("could not read the cancel flag of task %s", task_id)
            return
        if cancelled:
            stop_cancelled(self)


def stop_cancelled(task: Task) -> None:
    """Record REVOKED for the current task and stop it without running (more of) it."""
    logger.info("task %s[%s] cancelled", task.name, task.request.id)
    task.backend.mark_as_revoked(
        task.request.id, reason="cancelled", request=task.request
    )
    # Ignore: the worker acknowledges the message and stores nothing over REVOKED.
    raise Ignore()


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, without a SUBSCRIBE on every publish.

    Celery subscribes to a task's result channel as it publishes the task, in case the
    caller then waits with AsyncResult.get(), and unsubscribes when the AsyncResult is
    dropped: two extra Redis calls per publish (over a quarter of its time) that the
    API never uses. get() still works: it subscribes when it is called.
    """

    def __init__(self, app: Celery, url: Any = None, **kwargs: Any) -> None:
        # Celery gives a backend class set on the app no URL: use the configured one.
        super().__init__(app=app, url=url or app.conf.result_backend, **kwargs)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


celery_app = Celery(
    "app",
    broker=BROKER_URL,
    # Redis for results with either broker: PROGRESS and REVOKED need a real backend.
    backend=RESULT_BACKEND_URL,
    include=["app.tasks.tasks"],
    task_cls=CancellableTask,
)
# By name: celery 5.6 takes only a string here (a class breaks its backend lookup).
celery_app.backend_cls = "app.tasks.celery_app:ResultBackend"

celery_app.conf.update(
    # JSON only, in both directions: pickle would let anyone who can write to the
    # broker or the result backend run code in the worker or the API.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    task_track_started=True,
    task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
    task_time_limit=TASK_TIME_LIMIT,
    result_expires=RESULT_EXPIRES,
    # Acknowledge after the task ran, so a crash mid-task hands it to another worker...
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # ...and count a lost worker as a retry, bounded by each task's max_retries, so a
    # task that kills its own process is not requeued forever (new in celery 5.7).
    task_retry_on_worker_lost=True,
    # A redelivered message whose task already succeeded is not run again.
    worker_deduplicate_successful_tasks=True,
    # Take one message at a time: long tasks do not hold others hostage.
    worker_prefetch_multiplier=1,
    # On a lost broker connection, let running tasks finish. Cancelling them (celery's
    # opt-in) records RETRY in the result backend first, and that backend is usually
    # the same Redis that just went away: the write fails, Celery then reports the
    # killed task REVOKED ("terminated") and acknowledges its message, so it never runs
    # again. Left running, a task acknowledges its own message when it ends; a message
    # whose acknowledgement could not reach Redis comes back after VISIBILITY_TIMEOUT,
    # and worker_deduplicate_successful_tasks skips it if its SUCCESS was stored.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=SOCKET_TIMEOUT,
    # Stop (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT): wait for running tasks up
    # to SOFT_SHUTDOWN_TIMEOUT, then hand them and any held retries back to the broker.
    worker_soft_shutdown_timeout=SOFT_SHUTDOWN_TIMEOUT,
    worker_enable_soft_shutdown_on_idle=True,
    worker_eta_task_limit=WORKER_ETA_TASK_LIMIT,
    # Queue entries that are not messages are dropped instead of stopping the worker.
    broker_transport="app.tasks.message_guard:GuardedRedisTransport",
    # Celery's Redis caveat: the visibility timeout goes in all three places.
    broker_use_ssl=BROKER_TLS,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": UNACKED_SWEEP_SECONDS,
        # sweep on every interval, not every tenth one
        "unacked_restore_throttle": 1,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
    },
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    visibility_timeout=VISIBILITY_TIMEOUT,
    # A publish to an unreachable broker is retried 3 times within about 2 seconds
    # (each connection attempt bounded by SOCKET_TIMEOUT), then fails: the API says 503.
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": 3,
        "interval_start": 0.2,
        "interval_step": 0.5,
        "interval_max": 1.0,
    },
    redis_backend_use_ssl=RESULT_BACKEND_TLS,
    redis_socket_timeout=SOCKET_TIMEOUT,
    # How a worker retries a result write that met a lost Redis connection (switched on
    # in workers only, below): up to RESULT_WRITE_RETRIES times, sleeping a random
    # 0.1 s .. 2 s in between, so a Redis restart does not turn finished tasks into
    # FAILUREs ("Exception raised outside body").
    result_backend_max_retries=RESULT_WRITE_RETRIES,
    result_backend_base_sleep_between_retries_ms=100,
    result_backend_max_sleep_between_retries_ms=2000,
    redis_socket_connect_timeout=SOCKET_TIMEOUT,
    # At most one beat sends the schedule; a second one stands by (beat_lock.py).
    beat_scheduler="app.tasks.beat_lock:SingleBeatScheduler",
    beat_schedule={
        "cleanup-expired-tokens": {
            "task": "app.tasks.tasks.cleanup_expired_tokens",
            "schedule": timedelta(hours=1),
            # A run that could not start within the hour is dropped, not piled up.
            "options": {"expires": 50 * 60},
        },
        "send-daily-reports": {
            "task": "app.tasks.tasks.send_daily_reports",
            # beat needs a schedule object: a plain dict here crashes `celery beat`.
            "schedule": crontab(hour=9, minute=0),
            "options": {"expires": 60 * 60},
        },
    },
)


@signals.worker_init.connect
def _retry_result_writes(**_: Any) -> None:
    # Workers only: a task that finished while Redis restarts waits to store its
    # result. The API keeps failing fast (503) instead of holding requests open.
    celery_app.conf.result_backend_always_retry = True


@signals.task_prerun.connect
def _mark_alive(task_id: str, task: Task, **_: Any) -> None:
    # Before Celery stores STARTED, so a running task never reads as lost.
    liveness.task_started(task_id, record_ttl=RESULT_EXPIRES)
    celery_inbox.board_started(task_id, str(task.name))


@signals.task_postrun.connect
def _mark_done(
    task_id: str, task: Task, retval: Any = None, state: Any = None, **_: Any
) -> None:
    liveness.task_finished(task_id)
    celery_inbox.board_finished(task_id, str(task.name), state, retval)


# Error reports (error_reporting.py): set up before the pool starts, so the Celery
# integration wraps the tasks' tracers the pool's processes build; each run's events
# are tagged with its task's name and id, its arguments kept out.
@signals.worker_init.connect
def _report_worker_errors(**_: Any) -> None:
    error_reporting.set_up("worker")


@signals.task_prerun.connect
def _tag_error_reports(
    task_id: str, task: Task, args: Any = (), kwargs: Any = None, **_: Any
) -> None:
    error_reporting.tag_task(str(task.name), task_id, args or (), kwargs or {})


@signals.task_postrun.connect
def _untag_error_reports(**_: Any) -> None:
    error_reporting.forget_task()


# The worker says it is alive on the task board (the dashboard reads it), from its main
# process, for as long as it consumes.
_heartbeats: list[celery_inbox.Heartbeat] = []


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "hostname", "") or celery_inbox.worker_name())
    heartbeat = celery_inbox.Heartbeat(celery_inbox.WORKERS_KEY, name)
    heartbeat.start()
    _heartbeats.append(heartbeat)


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    while _heartbeats:
        _heartbeats.pop().stop()


@signals.task_failure.connect
def _keep_failure(
    sender: Task,
    task_id: str,
    exception: BaseException,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    # Sent once a task failed for good (never for a retry): after its last retry, for
    # an error it does not retry, or for a worker lost with no retry left. Every task
    # of the app, added ones included, lands in the failed-task inbox with its
    # arguments (celery_inbox.py), for an operator to read, replay or discard.
    celery_inbox.keep_failure(sender, task_id, exception, args, kwargs, einfo)

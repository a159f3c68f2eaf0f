"""arq worker settings. Start a worker (as many as you like) with:

    arq app.tasks.arq_worker.WorkerSettings

On SIGTERM a worker stops taking jobs, gives running ones `job_completion_wait` seconds
to finish, then cancels them; cancelled jobs go back to the queue and run again.

The worker's log names each job it runs, never the job's arguments or result: those are
addresses, message text and whatever your own jobs take (see HideJobArguments).
"""

import datetime
import logging

from arq import cron, func
from arq.connections import RedisSettings

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


def capped_timeout(seconds: int) -> int:
    """`seconds`, capped by the ARQ_JOB_TIMEOUT setting.

    A worker marks each job it starts "in progress" for the LARGEST timeout among its
    functions + 10 s: a job whose worker was killed runs again only after that. So keep
    timeouts realistic, and lower the setting where a quick re-run matters (tests).
    """
    return max(1, min(seconds, int(settings.ARQ_JOB_TIMEOUT)))


class WorkerSettings:
    redis_settings = RedisSettings.from_dsn(str(settings.REDIS_URL))
    # JSON, never pickle: the web app's pool (pool.py) uses the same pair
    job_serializer = serialize
    job_deserializer = deserialize

    # Function objects with explicit names: the names the API enqueues by.
    functions = [
        func(
            arq_tasks.send_email,
            name="send_email",
            timeout=capped_timeout(60),
            max_tries=arq_tasks.SEND_EMAIL_MAX_TRIES,
            # the stored result includes the job's arguments (address, body)
            keep_result=600,
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
            max_tries=3,
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
    cron_jobs = [
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
    keep_result = 3600
    # Results stay readable through the API, but out of the log (see HideJobArguments).
    log_results = False
    allow_abort_jobs = True  # POST /arq-tasks/abort/{job_id} cancels running jobs
    job_completion_wait = 25  # seconds; below a typical 30 s termination grace period
    health_check_interval = 60

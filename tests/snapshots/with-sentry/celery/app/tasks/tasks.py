"""Celery tasks.

Every task may run more than once (acks_late redelivers it after a crash), so keep
them idempotent. Retries cover transient errors only: a retry does not fix a bad
address, a refused login or a bug, it only delays the failure report.
"""

import contextlib
import smtplib
import time
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from redis.exceptions import RedisError

from app.tasks import mailer, registry
from app.tasks.celery_app import (
    RESULT_EXPIRES,
    RETRY_BACKOFF_MAX,
    WORKER_LOST_RETRY_DELAY,
    CancellableTask,
    celery_app,
    stop_cancelled,
)

logger = get_task_logger(__name__)

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)
TRANSIENT_EMAIL_ERRORS: tuple[type[Exception], ...] = (
    *TRANSIENT_ERRORS,
    smtplib.SMTPServerDisconnected,
    mailer.TransientEmailError,
)

MAX_STEPS = 1000
# long_running writes its progress (and reads its cancel flag) at most this often:
# one backend write per step would flood Redis for fast steps.
CHECKPOINT_SECONDS = 0.5
# How long one step of the demonstration work takes.
STEP_SECONDS = 0.1
ORDER_SECONDS = 0.5


class PrivateArgumentsTask(CancellableTask):
    """A task whose arguments are personal data (addresses, message text).

    Celery publishes a repr of every task's arguments with the task: the worker puts it
    in its log records (the `data` a structured log handler writes out) and in its
    events (Flower shows them). This one publishes the argument names only.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.setdefault("argsrepr", f"({len(args or ())} hidden argument(s))")
        options.setdefault("kwargsrepr", repr(dict.fromkeys(kwargs or {}, "<hidden>")))
        return super().apply_async(args, kwargs, **options)


# Results are ignored by default (callers that only fire and forget should not fill
# the backend); the API queues it with ignore_result=False to offer a status, and the
# stored result never contains the address.
@celery_app.task(
    bind=True,
    base=PrivateArgumentsTask,
    autoretry_for=TRANSIENT_EMAIL_ERRORS,
    # Backoff of 5 s doubled per retry (capped at RETRY_BACKOFF_MAX); with jitter each
    # countdown is drawn uniformly from [0, that backoff], so a retry may come at once.
    retry_backoff=5,
    retry_backoff_max=RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=5,
    default_retry_delay=WORKER_LOST_RETRY_DELAY,
    ignore_result=True,
)
def send_email(self: Task, to: str, subject: str, body: str) -> dict[str, Any]:
    """Send one email through the configured SMTP server, at most once per task id.

    From the moment the end of the message's data goes out until the server answers,
    the message may have been sent: that is recorded (registry.record_mail) first, and
    a run that finds the record (a retry, a redelivery after a crash) sends nothing.
    """
    # refused before anything else (ValueError is never retried): one bare address
    mailer.checked_recipient(to)
    task_id = self.request.id
    attempts = self.request.retries + 1
    outcome = registry.mail_outcome(task_id)
    if outcome == registry.MAIL_SENT:
        logger.info("email of task %s was already sent; not sent again", task_id)
        return {"sent": True, "attempts": attempts}
    if outcome is not None:
        raise mailer.DeliveryUnknown(
            "an earlier attempt got no answer to the end of the data: the message "
            "may have been sent; not sent again"
        )

    def data_ends() -> None:
        try:
            registry.record_mail(task_id, registry.MAIL_MAYBE_SENT, ttl=RESULT_EXPIRES)
        except RedisError as exc:
            # Nothing went out yet: retried later, never sent unrecorded.
            raise mailer.TransientEmailError("could not record the delivery") from exc

    try:
        mailer.send(to, subject, body, on_data_end=data_ends)
    except mailer.DeliveryUnknown:
        # The recipient is personal data: log the task id, not the address.
        logger.warning(
            "email of task %s: no answer to the end of its data, it may have been "
            "sent; not retried",
            task_id,
        )
        raise
    except Exception:
        # Refused by the server, or never handed over: a retry may send it.
        with contextlib.suppress(RedisError):
            registry.forget_mail(task_id)
        raise
    try:
        registry.record_mail(task_id, registry.MAIL_SENT, ttl=RESULT_EXPIRES)
    except RedisError:
        logger.warning("could not record that the email of task %s was sent", task_id)
    logger.info("email of task %s sent after %d attempt(s)", task_id, attempts)
    return {"sent": True, "attempts": attempts}


@celery_app.task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=10,
    retry_backoff_max=RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=5,
    default_retry_delay=WORKER_LOST_RETRY_DELAY,
)
def process_order(self: Task, order_id: int) -> dict[str, Any]:
    """Process one order; connection and timeout errors are retried with backoff."""
    logger.info("processing order %d (attempt %d)", order_id, self.request.retries + 1)
    # Stand-in for the real work: call your order service here. It must be safe to
    # run twice for the same order (see the module docstring).
    time.sleep(ORDER_SECONDS)
    return {"order_id": order_id, "status": "processed"}


@celery_app.task(max_retries=3, default_retry_delay=WORKER_LOST_RETRY_DELAY)
def cleanup_expired_tokens() -> dict[str, int]:
    """Hourly (celery beat): delete expired tokens."""
    deleted = delete_expired_tokens()
    logger.info("cleanup_expired_tokens: %d token(s) deleted", deleted)
    return {"deleted": deleted}


def delete_expired_tokens() -> int:
    """Delete expired tokens from your token store; return how many were deleted.

    bgtasks cannot know where your tokens live (a SQL table, Redis keys, ...): until
    this function is wired to that store it deletes nothing, and says so.
    """
    logger.warning(
        "cleanup_expired_tokens: no token store is wired in %s; nothing deleted",
        __name__,
    )
    return 0


@celery_app.task(max_retries=3, default_retry_delay=WORKER_LOST_RETRY_DELAY)
def send_daily_reports() -> dict[str, int]:
    """Daily at 09:00 UTC (celery beat): build and send the daily reports."""
    sent = build_and_send_reports()
    logger.info("send_daily_reports: %d report(s) sent", sent)
    return {"sent": sent}


def build_and_send_reports() -> int:
    """Build today's reports and send them (e.g. send_email.delay); return a count.

    bgtasks cannot know what your reports contain: until this function is written it
    sends nothing, and says so.
    """
    logger.warning(
        "send_daily_reports: no report is defined in %s; nothing sent", __name__
    )
    return 0


def _report_progress(task: Task, done: int, total: int) -> None:
    task.update_state(
        state="PROGRESS",
        meta={"current": done, "total": total, "percent": done * 100 // total},
    )


@celery_app.task(bind=True, max_retries=2, default_retry_delay=WORKER_LOST_RETRY_DELAY)
def long_running(self: Task, steps: int) -> dict[str, Any]:
    """Work through `steps` steps, reporting PROGRESS; stops early when cancelled."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}")
    done = 0
    last_checkpoint = float("-inf")
    try:
        for step in range(1, steps + 1):
            now = time.monotonic()
            if now - last_checkpoint >= CHECKPOINT_SECONDS:
                last_checkpoint = now
                # Cooperative cancel: stop between steps, never in the middle of one.
                if registry.cancel_requested(self.request.id):
                    stop_cancelled(self)
                _report_progress(self, done, steps)
            # Stand-in for one unit of real work.
            time.sleep(STEP_SECONDS)
            done = step
    except SoftTimeLimitExceeded:
        # The hard limit follows shortly: release what the step holds, then fail
        # visibly (FAILURE, SoftTimeLimitExceeded) instead of looking successful.
        logger.warning(
            "long_running %s hit its soft time limit after %d/%d steps",
            self.request.id,
            done,
            steps,
        )
        raise
    return {"status": "completed", "steps": steps}

"""The arq job functions; arq_worker.WorkerSettings registers them.

A job can run more than once (a retry, or a re-run after its worker died): keep each
one safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from arq import Retry
from arq.constants import abort_jobs_ss
from pydantic import SecretStr

from app.core.config import settings

logger = logging.getLogger(__name__)

SEND_EMAIL_MAX_TRIES = 5
# Backoff before retry n: RETRY_BASE_DELAY * 2**(n-1) seconds (at most RETRY_MAX_DELAY),
# half of it random, so a mail server that comes back is not hit by every job at once.
RETRY_BASE_DELAY = 10.0
RETRY_MAX_DELAY = 600.0

# long_running_task: one step stands in for one unit of real async work.
STEP_SECONDS = 0.1
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes to Redis
PROGRESS_TTL = 3600

# Abort requests for jobs that had already finished stay in arq's abort set for good.
ABORT_REQUEST_MAX_AGE = 24 * 3600


def progress_key(job_id: str) -> str:
    """Redis key holding "<done>/<total>" while a long_running_task job runs."""
    return f"bgtasks:progress:{job_id}"


def _secret(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


def retry_delay(job_try: int) -> float:
    """Seconds to wait before try `job_try + 1`: exponential backoff with jitter."""
    ceiling = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (job_try - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _is_transient(exc: Exception) -> bool:
    """True for failures worth another try: the server or network may recover."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return 400 <= exc.code < 500  # 4xx replies mean "try again later"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(400 <= refused.code < 500 for refused in exc.recipients)
    return isinstance(
        exc,
        (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
            ConnectionError,
            TimeoutError,
        ),
    )


async def send_email(
    ctx: dict[str, Any], to: str, subject: str, body: str
) -> dict[str, str]:
    """Send one plain-text email. Transient SMTP failures are retried with backoff."""
    config = settings
    message = EmailMessage()
    message["From"] = config.EMAIL_FROM
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)

    user = config.SMTP_USER
    starttls = bool(config.SMTP_STARTTLS)
    try:
        await aiosmtplib.send(
            message,
            hostname=str(config.SMTP_HOST),
            port=int(config.SMTP_PORT),
            # log in only when a user is configured
            username=user or None,
            password=_secret(config.SMTP_PASSWORD) if user else None,
            start_tls=starttls,
            # verified certificate and host name: no password for an impostor
            tls_context=ssl.create_default_context() if starttls else None,
            timeout=float(config.SMTP_TIMEOUT),
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        job_try = int(ctx["job_try"])
        if not _is_transient(exc) or job_try >= SEND_EMAIL_MAX_TRIES:
            raise
        delay = retry_delay(job_try)
        logger.warning(
            "send_email job %s: try %d failed (%s), retrying in %.0fs",
            ctx["job_id"],
            job_try,
            type(exc).__name__,
            delay,
        )
        raise Retry(defer=delay) from exc
    logger.info("send_email job %s: sent", ctx["job_id"])
    # the result is kept in Redis: no address or content in it
    return {"status": "sent"}


async def process_data(
    ctx: dict[str, Any], data_id: int, values: list[float]
) -> dict[str, Any]:
    """Summarise a batch of numbers. Replace the body with your own processing."""
    count = len(values)
    total = math.fsum(values)
    logger.info("process_data job %s: %d values for %d", ctx["job_id"], count, data_id)
    return {
        "data_id": data_id,
        "count": count,
        "total": total,
        "mean": total / count if count else None,
        "min": min(values, default=None),
        "max": max(values, default=None),
    }


async def long_running_task(ctx: dict[str, Any], steps: int) -> dict[str, int]:
    """A long job that reports progress and can be aborted.

    An abort (POST /arq-tasks/abort/{job_id}), the job timeout and a worker shutdown
    all arrive as CancelledError at an `await`: release what the job holds, re-raise.
    """
    redis = ctx["redis"]
    key = progress_key(ctx["job_id"])
    done = 0
    last_write = 0.0
    try:
        for done in range(1, steps + 1):
            await asyncio.sleep(STEP_SECONDS)
            now = time.monotonic()
            if now - last_write >= PROGRESS_WRITE_INTERVAL:
                await redis.set(key, f"{done}/{steps}", ex=PROGRESS_TTL)
                last_write = now
    except asyncio.CancelledError:
        logger.info(
            "long_running_task job %s stopped at %d/%d", ctx["job_id"], done, steps
        )
        raise
    finally:
        await redis.delete(key)
    return {"steps": steps}


async def daily_cleanup(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron job (see WorkerSettings.cron_jobs): daily Redis housekeeping.

    arq never removes an abort request for a job that had already finished; drop those
    older than a day. Add the project's own daily cleanup here.
    """
    cutoff_ms = int((time.time() - ABORT_REQUEST_MAX_AGE) * 1000)
    removed = int(await ctx["redis"].zremrangebyscore(abort_jobs_ss, "-inf", cutoff_ms))
    logger.info("daily_cleanup: removed %d stale abort request(s)", removed)
    return {"abort_requests_removed": removed}


async def resize_image(
    ctx: dict[str, Any],
    image_id: int,
    sizes: list[int],
) -> dict[str, Any]:
    """Replace the body with your work. Raise Retry(defer=retry_delay(ctx["job_try"]))
    for errors worth another try; anything else fails the job."""
    logger.info("resize_image: try %d", ctx["job_try"])
    return {
        "image_id": image_id,
        "sizes": sizes,
    }


async def nightly_report(
    ctx: dict[str, Any],
) -> dict[str, Any]:
    """Replace the body with your work. Raise Retry(defer=retry_delay(ctx["job_try"]))
    for errors worth another try; anything else fails the job."""
    logger.info("nightly_report: try %d", ctx["job_try"])
    return {}


async def heartbeat(
    ctx: dict[str, Any],
) -> dict[str, Any]:
    """Replace the body with your work. Raise Retry(defer=retry_delay(ctx["job_try"]))
    for errors worth another try; anything else fails the job."""
    logger.info("heartbeat: try %d", ctx["job_try"])
    return {}

"""The arq job functions; arq_worker.WorkerSettings registers them.

A job can run more than once (a retry, or a re-run after its worker died): keep each
one safe to repeat. send_email is: once a message has been handed to the SMTP server
it is never sent again by the same job (see send_email).

Every email header is checked before it is written (see compose_message): a subject,
sender or recipient that could break into a second header line fails the job with
ValueError, whoever queued it.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import math
import random
import ssl
import time
import unicodedata
from collections.abc import Awaitable, Callable
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

import aiosmtplib
from arq import Retry
from arq.constants import abort_jobs_ss, job_key_prefix
from pydantic import SecretStr
from redis.exceptions import RedisError

from app.core.config import settings

logger = logging.getLogger(__name__)

SEND_EMAIL_MAX_TRIES = 5
# Backoff before retry n: RETRY_BASE_DELAY * 2**(n-1) seconds (at most RETRY_MAX_DELAY),
# half of it random, so a mail server that comes back is not hit by every job at once.
RETRY_BASE_DELAY = 10.0
RETRY_MAX_DELAY = 600.0

# RFC 5321 4.5.3.2.6: a client waits 10 minutes for the reply to the end of a
# message's data, which the server may send only once it has delivered or queued it.
# Giving up sooner and retrying sends the same message again. (The job's own timeout
# still bounds the whole job.)
DATA_REPLY_TIMEOUT = 600.0
# How long the record of a handed-over message is kept (seconds): longer than any
# job's retries and re-runs last.
MAIL_MARK_TTL = 2 * 24 * 3600

# long_running_task: one step stands in for one unit of real async work.
STEP_SECONDS = 0.1
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes to Redis
PROGRESS_TTL = 3600

# Seconds a finished job's result is kept (arq_worker.WorkerSettings; the
# BGTASKS_RESULT_RETENTION_SECONDS setting, an hour as generated): the
# email's for at most 10 minutes, as it holds the job's arguments (address, body).
KEEP_RESULT = max(60, int(settings.BGTASKS_RESULT_RETENTION_SECONDS))
SEND_EMAIL_KEEP_RESULT = min(600, KEEP_RESULT)
# arq keeps an abort request that came after its job finished for good, and drops the
# next job under that id unrun. A request older than the shortest result lifetime is
# stale unless its job still waits (an id can be reused once its result is gone).
ABORT_REQUEST_MAX_AGE = min(SEND_EMAIL_KEEP_RESULT, KEEP_RESULT)


def progress_key(job_id: str) -> str:
    """Redis key holding "<done>/<total>" while a long_running_task job runs."""
    return f"bgtasks:progress:{job_id}"


def mail_mark_key(job_id: str) -> str:
    """Redis key saying a send_email job handed its message over: "data <enqueued>"
    before the data is sent, "sent <enqueued>" once the server accepted it."""
    return f"bgtasks:mail-sent:{job_id}"


class EmailNotSent(Exception):
    """The server refused the message (for good, or on the last try); says only the
    reply code.

    arq logs a failed job's exception and the SMTP library's own ones quote the
    server's reply, which may hold the recipient's address.
    """


class EmailMayHaveBeenSent(Exception):
    """The server received the message but never confirmed it (no reply in time, or
    the connection or the worker was lost): it may have been delivered. Not retried,
    so that nobody gets it twice; check the mail server's log."""


# A reused settings field may be str, SecretStr, Optional[str] or a number: read each
# value as the type the mailer needs, never trusting the field's declared type.
_TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _number(value: object) -> float:
    return float(_text(value))


def _flag(value: object, name: str) -> bool:
    # A str field holding "false" is truthy: read the words pydantic reads for a bool.
    if not isinstance(value, str):
        return bool(value)
    word = value.strip().lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise ValueError(f"the {name} setting is neither true nor false")


# A header value holding a line break ends that header: what follows becomes new
# headers (Bcc:, Reply-To:) or the body. RFC 2047 encoded words ("=?utf-8?q?...?=") are
# decoded when a header is parsed, and Python's email package before the CVE-2024-6923
# fix writes "=0D=0A" inside one back out as a real line break. So every value is
# checked raw AND decoded, before and after the message is built, and the message uses
# a policy that refuses to write a broken header wherever the Python has that check.
MAIL_POLICY = email.policy.default
if hasattr(MAIL_POLICY, "verify_generated_headers"):
    MAIL_POLICY = MAIL_POLICY.clone(verify_generated_headers=True)

# C0 and C1 controls and DEL (Cc: CR, LF, TAB, NUL...), and the line and paragraph
# separators (Zl, Zp) that str.splitlines() also breaks at.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def _has_unsafe_character(text: str) -> bool:
    return any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in text)


def _check_header_text(value: str, what: str) -> None:
    """ValueError unless `value` is one line, raw and with its encoded words decoded."""
    try:
        decoded = str(make_header(decode_header(value)))
    except (MessageError, LookupError, ValueError):
        # An unknown charset or broken base64: a reader could not show it either.
        raise ValueError(f"{what} holds a malformed encoded word (=?...?=)") from None
    if _has_unsafe_character(value) or _has_unsafe_character(decoded):
        raise ValueError(
            f"{what} must be one line, without control characters, also once its "
            "encoded words (=?...?=) are decoded"
        )


def checked_subject(subject: str) -> str:
    """`subject` when it is safe as a Subject header; ValueError otherwise."""
    _check_header_text(subject, "the subject")
    return subject


# Characters that make a To header name more than one mailbox, or a display name
# around one: lists (,), groups (name: ...;), <addr>, comments, quoting and spaces.
_NOT_IN_ONE_ADDRESS = frozenset(',;:<>()[]"\\')


def checked_recipient(address: str) -> str:
    """`address` when it is exactly one bare address (name@domain) safe as a To
    header; ValueError otherwise.

    The worker checks again what the API validated: code that queues the task directly
    could pass "a@example.com, someone@else.example", and the SMTP client sends to every
    address the To header names. RFC 2047 forbids encoded words in an address, and the
    email package decodes one there anyway: refused even when it decodes to something
    harmless looking, since it can hide a second "@" or a comma.
    """
    _check_header_text(address, "the recipient")
    if "=?" in address:
        raise ValueError("the recipient must not hold an encoded word (=?...?=)")
    local, at, domain = address.partition("@")
    if (
        not (local and at and domain)
        or "@" in domain
        or any(char.isspace() or char in _NOT_IN_ONE_ADDRESS for char in address)
    ):
        raise ValueError(
            "the recipient must be one address (name@domain): no lists, groups, "
            "display names or spaces"
        )
    return address


def _message_id_domain(sender: str) -> str:
    setting = "EMAIL_FROM"
    domain = parseaddr(sender)[1].rpartition("@")[2]
    if not domain:
        raise ValueError(f"the sender ({setting} setting) is not an address")
    try:
        # A Message-ID is ASCII only: an internationalised domain in its IDNA form.
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"the sender's domain ({setting}) is invalid") from None


def compose_message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    """One plain-text message; ValueError when a header could carry a line break.

    The callers' own checks (the API's request model) may be bypassed by code that
    queues the task directly, so everything is checked again here.
    """
    _check_header_text(sender, "the sender")
    checked_recipient(to)
    checked_subject(subject)
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=_message_id_domain(sender))
    message.set_content(body)
    # Each header as the email package parsed it, encoded words decoded its own way:
    # exactly what it would write out.
    for name, value in message.items():
        if _has_unsafe_character(str(value)):
            raise ValueError(f"the {name} header would span more than one line")
    return message


def _setting(config: Any, name: str) -> bool:
    return _flag(getattr(config, name), name)


def _tls_context(config: Any) -> ssl.SSLContext:
    """A verified TLS context: without one, a man in the middle reads the password."""
    return ssl.create_default_context()


def _implicit_tls(config: Any) -> bool:
    """TLS from the first byte (port 465) instead of STARTTLS after connecting."""
    return False


def _starttls(config: Any) -> bool:
    """STARTTLS after connecting, unless the connection is TLS from the start."""
    return not _implicit_tls(config) and _setting(config, "SMTP_STARTTLS")


def _logs_in(config: Any, user: str) -> bool:
    """Log in only when a user is configured (and the project's settings want it)."""
    return bool(user)


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    sender = _text(settings.EMAIL_FROM)
    if not sender:
        raise ValueError("no sender address is configured (EMAIL_FROM)")
    return compose_message(sender, to, subject, body)


def retry_delay(job_try: int) -> float:
    """Seconds to wait before try `job_try + 1`: exponential backoff with jitter."""
    ceiling = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2.0 ** (job_try - 1))
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


def _without_reply_text(exc: Exception) -> Exception:
    """The failure to record: a refusal or reply by its code, never its text."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = sorted({refused.code for refused in exc.recipients})
        return EmailNotSent(f"recipients refused ({codes})")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return EmailNotSent(f"{type(exc).__name__} (SMTP reply {exc.code})")
    return exc


class MailSession(aiosmtplib.SMTP):
    """aiosmtplib.SMTP that runs `before_data` before the DATA command, waits up to
    DATA_REPLY_TIMEOUT for the server's replies to it (every other command keeps the
    connection's timeout), and says how far the message got."""

    def __init__(
        self, *, before_data: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._before_data = before_data
        self.handed_over = False  # the DATA command was sent
        self.accepted = False  # the server answered 250 to the end of the data

    async def data(
        self, message: str | bytes, /, **_options: Any
    ) -> aiosmtplib.SMTPResponse:
        # the timeout asked for (the connection's) is replaced by DATA_REPLY_TIMEOUT
        await self._before_data()
        self.handed_over = True
        response = await super().data(message, timeout=DATA_REPLY_TIMEOUT)
        self.accepted = True
        return response


async def _mark(ctx: dict[str, Any], state: str) -> None:
    redis, enqueued = ctx.get("redis"), ctx.get("enqueue_time")
    if redis is not None:  # none when called outside a worker (a test)
        value = f"{state} {enqueued}"
        await redis.set(mail_mark_key(ctx["job_id"]), value, ex=MAIL_MARK_TTL)


async def _previous_state(ctx: dict[str, Any]) -> str:
    """What an earlier try of this job did: "data", "sent" or "" (nothing)."""
    redis = ctx.get("redis")
    if redis is None:
        return ""
    stored = await redis.get(mail_mark_key(ctx["job_id"]))
    state, _, enqueued = (stored or b"").decode(errors="replace").partition(" ")
    # the same id, queued again once its result expired, is another job
    return state if enqueued == str(ctx.get("enqueue_time")) else ""


async def send_email(
    ctx: dict[str, Any], to: str, subject: str, body: str
) -> dict[str, str]:
    """Send one plain-text email. Transient SMTP failures are retried with backoff.

    At most one copy per job: before the DATA command the job records in Redis that
    the message is being handed over (mail_mark_key), and "sent" once the server
    accepted it. A try that finds the record (a retry, or a re-run after a worker was
    stopped) never sends again: "sent" is a success, a message handed over but never
    confirmed fails with EmailMayHaveBeenSent (status error "may_have_been_sent").
    Only a server that refuses the data with a reply (4xx is retried) clears it.
    """
    config = settings
    message = build_message(to, subject, body)
    previous = await _previous_state(ctx)
    if previous == "sent":
        logger.info("send_email job %s: sent by an earlier try", ctx["job_id"])
        return {"status": "sent"}
    if previous:
        logger.warning(
            "send_email job %s: an earlier try handed the message over and got no "
            "answer; not sending it again",
            ctx["job_id"],
        )
        raise EmailMayHaveBeenSent("handed over by an earlier try, never confirmed")
    user = _text(config.SMTP_USER)
    implicit, starttls = _implicit_tls(config), _starttls(config)
    login = _logs_in(config, user)
    password = _text(config.SMTP_PASSWORD)

    async def before_data() -> None:
        await _mark(ctx, "data")

    smtp = MailSession(
        before_data=before_data,
        hostname=_text(config.SMTP_HOST),
        port=int(_number(config.SMTP_PORT)),
        # log in only when a user is configured
        username=user if login else None,
        password=password if login else None,
        use_tls=implicit,
        start_tls=starttls,
        # verified certificate and host name: no password for an impostor
        tls_context=_tls_context(config) if implicit or starttls else None,
        timeout=_number(config.SMTP_TIMEOUT),
    )
    try:
        async with smtp:
            await smtp.send_message(message)
    except (aiosmtplib.SMTPException, OSError) as exc:
        # a reply refusing the data says it was not taken; anything else may hide
        # a delivery
        refused = isinstance(exc, aiosmtplib.SMTPResponseException)
        if smtp.accepted:
            pass  # the server has it; only the goodbye failed
        elif smtp.handed_over and not refused:
            # no reply to the data, or the connection was lost: it may be delivered
            logger.warning(
                "send_email job %s: no answer once the message was handed over (%s); "
                "it may have been sent, not retrying",
                ctx["job_id"],
                type(exc).__name__,
            )
            raise EmailMayHaveBeenSent(type(exc).__name__) from None
        else:
            await _forget_handover(ctx, smtp)
            job_try = int(ctx["job_try"])
            if not _is_transient(exc) or job_try >= SEND_EMAIL_MAX_TRIES:
                raise _without_reply_text(exc) from None
            delay = retry_delay(job_try)
            logger.warning(
                "send_email job %s: try %d failed (%s), retrying in %.0fs",
                ctx["job_id"],
                job_try,
                type(exc).__name__,
                delay,
            )
            raise Retry(defer=delay) from exc
    try:
        await _mark(ctx, "sent")
    except RedisError:
        # sent all the same; a re-run would find "data" and not send it again
        logger.warning("send_email job %s: sent, not recorded", ctx["job_id"])
    logger.info("send_email job %s: sent", ctx["job_id"])
    # the result is kept in Redis: no address or content in it
    return {"status": "sent"}


async def _forget_handover(ctx: dict[str, Any], smtp: MailSession) -> None:
    """The server refused the data with a reply: nothing was delivered."""
    redis = ctx.get("redis")
    if smtp.handed_over and redis is not None:
        await redis.delete(mail_mark_key(ctx["job_id"]))


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

    arq never removes an abort request for a job that had already finished (the abort
    endpoint removes the ones it sees lose that race); drop those older than
    ABORT_REQUEST_MAX_AGE whose job no longer exists. Add the project's own daily
    cleanup here.
    """
    redis = ctx["redis"]
    cutoff_ms = int((time.time() - ABORT_REQUEST_MAX_AGE) * 1000)
    old = await redis.zrangebyscore(abort_jobs_ss, "-inf", cutoff_ms)
    stale = [
        job_id
        for job_id in old
        if not await redis.exists(job_key_prefix + job_id.decode(errors="replace"))
    ]
    removed = int(await redis.zrem(abort_jobs_ss, *stale)) if stale else 0
    logger.info("daily_cleanup: removed %d stale abort request(s)", removed)
    return {"abort_requests_removed": removed}

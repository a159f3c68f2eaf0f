"""The taskiq tasks; the worker and the scheduler import this module (see taskiq_app).

A task can run more than once (a retry, or a redelivery after its worker died): keep
each one safe to repeat. Every task takes `control` (a dependency, never sent by the
caller): it refuses to start a task cancelled while queued, and long tasks report
progress and notice a cancel through it.

Every email header is checked before it is written (see compose_message): a subject,
sender or recipient that could break into a second header line fails the task with
ValueError, whoever queued it.

An email is sent at most once per task: its hand-over to the mail server is recorded in
the task's status before the message goes, and a task whose server never answered the
end of the message (it may have delivered it) is not sent again (DeliveryUnconfirmed).
"""

import asyncio
import email.policy
import logging
import math
import ssl
import time
import unicodedata
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Annotated, Any, NoReturn

import aiosmtplib
from pydantic import SecretStr
from taskiq import Context, TaskiqDepends

from app.core.config import settings
from app.tasks.taskiq_app import (
    KEEP_PENDING,
    DeliveryUnconfirmed,
    TaskCancelled,
    TransientError,
    broker,
    capped_timeout,
    redis_client,
    status_key,
)

logger = logging.getLogger(__name__)

SEND_EMAIL_MAX_TRIES = 5
SEND_EMAIL_RETRY_DELAY = 10  # seconds before the first retry, doubled for each next
# The wait for the server's reply to the end of a message (RFC 5321 4.5.3.2.6: 10
# minutes; a server may scan the message before it answers). Every other SMTP reply is
# awaited for the SMTP_TIMEOUT setting, and the task's time limit bounds them all.
DATA_END_TIMEOUT = 600
# The status hash field of a send_email task: "handed_over" once the message is on its
# way to the server, "sent" once the server accepted it.
MAIL_FIELD = "mail"
# long_running_task: one step stands in for one unit of real async work.
STEP_SECONDS = 0.1
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes (and cancel checks)


class EmailNotSent(Exception):
    """The server refused the message (for good, or on the last try); says only the
    reply code.

    taskiq logs a failed task's exception and stores it with the result, and the SMTP
    library's own ones quote the server's reply, which may hold the recipient's address.
    """


class TaskControl:
    """A running task's status hash: progress, and whether a cancel was asked for.

    `tries` is the attempt this run is: 1 the first time, 2 on the first retry."""

    def __init__(self, task_id: str, tries: int = 1) -> None:
        self.task_id = task_id
        self.tries = tries
        self._last_write = 0.0

    async def cancel_requested(self) -> bool:
        async with redis_client() as redis:
            return bool(await redis.hexists(status_key(self.task_id), "cancel"))

    async def progress(self, current: int, total: int, *, force: bool = False) -> None:
        """Record progress at most every PROGRESS_WRITE_INTERVAL seconds, and raise
        TaskCancelled there when the task was cancelled meanwhile."""
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_WRITE_INTERVAL:
            return
        self._last_write = now
        key = status_key(self.task_id)
        async with redis_client() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"current": current, "total": total})
            pipe.expire(key, KEEP_PENDING)
            pipe.hexists(key, "cancel")
            *_, cancelled = await pipe.execute()
        if cancelled:
            raise TaskCancelled


async def task_control(
    context: Annotated[Context, TaskiqDepends()],
) -> TaskControl:
    """Dependency of every task: TaskCancelled before it starts, if it was cancelled."""
    # the retry middleware counts the retries so far in the message's labels
    retries = int(context.message.labels.get("_retries", 0))
    control = TaskControl(context.message.task_id, tries=retries + 1)
    if await control.cancel_requested():
        logger.info("task %s was cancelled before it started", control.task_id)
        raise TaskCancelled
    return control


# The default of every task's `control` parameter: taskiq resolves it when the task
# runs; callers never pass it.
TASK_CONTROL: TaskControl = TaskiqDepends(task_control)


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


async def _record_mail(task_id: str, state: str | None) -> None:
    """Record how far this task's email got (see MAIL_FIELD); None: not handed over."""
    async with redis_client() as redis:
        if state is None:
            await redis.hdel(status_key(task_id), MAIL_FIELD)
        else:
            await redis.hset(status_key(task_id), MAIL_FIELD, state)


async def _mail_state(task_id: str) -> str:
    """How far an earlier run of this task got with its email ("" for nowhere)."""
    async with redis_client() as redis:
        state = await redis.hget(status_key(task_id), MAIL_FIELD)
    return state.decode() if isinstance(state, bytes) else str(state or "")


class HandOverSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client that records the hand-over of the message in the task's
    status before sending it (its DATA command), then waits DATA_END_TIMEOUT for the
    server's reply to the end of the message."""

    def __init__(self, task_id: str, **options: Any) -> None:
        super().__init__(**options)
        self.task_id = task_id
        self.handed_over = False

    async def data(
        self,
        message: str | bytes,
        /,
        **_options: Any,  # aiosmtplib's timeout: the end of data has its own
    ) -> aiosmtplib.SMTPResponse:
        await _record_mail(self.task_id, "handed_over")
        self.handed_over = True
        return await super().data(message, timeout=DATA_END_TIMEOUT)


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
    return EmailNotSent(type(exc).__name__)


@broker.task(
    task_name="send_email",
    # room for the reply to the end of the message (see DATA_END_TIMEOUT)
    timeout=capped_timeout(DATA_END_TIMEOUT + 60),
    retry_on_error=True,
    max_retries=SEND_EMAIL_MAX_TRIES,
    retry_delay=SEND_EMAIL_RETRY_DELAY,
)
async def send_email(
    to: str,
    subject: str,
    body: str,
    control: TaskControl = TASK_CONTROL,
) -> dict[str, str]:
    """Send one plain-text email. Transient SMTP failures are retried with backoff, as
    long as the server never received the message: at most one copy per task."""
    config = settings
    message = build_message(to, subject, body)
    earlier = await _mail_state(control.task_id)
    if earlier == "sent":  # a run before this one (its worker died since)
        logger.info("send_email task %s: sent before, not sent again", control.task_id)
        return {"status": "sent"}
    if earlier == "handed_over":
        logger.warning(
            "send_email task %s: an earlier run handed the message over without a "
            "reply, it may have been delivered: not sent again",
            control.task_id,
        )
        raise DeliveryUnconfirmed
    user = _text(config.SMTP_USER)
    implicit, starttls = _implicit_tls(config), _starttls(config)
    login = _logs_in(config, user)
    password = _text(config.SMTP_PASSWORD)
    client = HandOverSMTP(
        control.task_id,
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
        async with client:
            await client.send_message(message)
            await _record_mail(control.task_id, "sent")
    except aiosmtplib.SMTPDataError as exc:
        # the server answered the message with a refusal: it has no copy to deliver
        await _record_mail(control.task_id, None)
        _raise_send_failure(exc, control.task_id)
    except (aiosmtplib.SMTPException, OSError) as exc:
        if client.handed_over:  # no reply to the message: it may have been delivered
            logger.warning(
                "send_email task %s: no reply to the message (%s), it may have been "
                "delivered: not sent again",
                control.task_id,
                type(exc).__name__,
            )
            raise DeliveryUnconfirmed(type(exc).__name__) from None
        _raise_send_failure(exc, control.task_id)
    logger.info("send_email task %s: sent", control.task_id)
    # the result is kept in Redis: no address or content in it
    return {"status": "sent"}


def _raise_send_failure(exc: Exception, task_id: str) -> NoReturn:
    """TransientError for a failure worth another try, else EmailNotSent."""
    if _is_transient(exc):
        logger.warning(
            "send_email task %s failed (%s), retried with backoff",
            task_id,
            type(exc).__name__,
        )
        # the type only: the retry middleware retries TransientError alone
        raise TransientError(type(exc).__name__) from None
    raise _without_reply_text(exc) from None


@broker.task(task_name="process_data", timeout=capped_timeout(120))
async def process_data(
    data_id: int,
    values: list[float],
    control: TaskControl = TASK_CONTROL,
) -> dict[str, Any]:
    """Summarise a batch of numbers. Replace the body with your own processing."""
    count = len(values)
    total = math.fsum(values)
    logger.info("process_data task %s: %d values", control.task_id, count)
    return {
        "data_id": data_id,
        "count": count,
        "total": total,
        "mean": total / count if count else None,
        "min": min(values, default=None),
        "max": max(values, default=None),
    }


@broker.task(task_name="long_running_task", timeout=capped_timeout(180))
async def long_running_task(
    steps: int,
    control: TaskControl = TASK_CONTROL,
) -> dict[str, int]:
    """A long task that reports progress and can be cancelled.

    A cancel arrives as TaskCancelled at a progress write, the time limit as
    TimeoutError at an `await`: release what the task holds, re-raise.
    """
    done = 0
    try:
        for done in range(1, steps + 1):
            await asyncio.sleep(STEP_SECONDS)
            await control.progress(done, steps)
    except (TaskCancelled, TimeoutError, asyncio.CancelledError):
        logger.info(
            "long_running_task %s stopped at %d/%d", control.task_id, done, steps
        )
        raise
    return {"steps": steps}


@broker.task(
    task_name="cleanup_expired",
    timeout=capped_timeout(300),
    schedule=[{"cron": "0 * * * *"}],  # hourly, UTC
)
async def cleanup_expired() -> dict[str, int]:
    """Hourly housekeeping: replace the body with the project's own cleanup (expired
    tokens, sessions). Task status and results expire in Redis by themselves."""
    logger.info("cleanup_expired: nothing to clean up yet")
    return {"removed": 0}


@broker.task(
    task_name="daily_report",
    timeout=capped_timeout(300),
    schedule=[{"cron": "0 9 * * *"}],  # 09:00 UTC
)
async def daily_report() -> dict[str, str]:
    """Daily report at 09:00 UTC: build and send the project's own report here."""
    logger.info("daily_report: generated")
    return {"status": "generated"}

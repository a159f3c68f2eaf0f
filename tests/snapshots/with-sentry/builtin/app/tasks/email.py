"""Send email over SMTP with a timeout and a verified STARTTLS connection.

A message handed to the server is never sent twice: BackgroundTasks never retry, and
the reply to the end of the data gets the 10 minutes RFC 5321 gives it (the server may
answer only once it has delivered the message). A server that hangs up or never
answers once it has the data may have delivered it: that is logged as such, not as a
failure.
"""

import email.policy
import logging
import smtplib
import ssl
import unicodedata
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from pydantic import SecretStr

from app.core.config import settings

# A child of "uvicorn.error": uvicorn configures only its own loggers, so a
# logger of the app's own prints nothing under plain `uvicorn`. This one uses
# uvicorn's level and handlers there, and the root logger's elsewhere.
logger = logging.getLogger(f"uvicorn.error.{__name__}")


# RFC 5321 4.5.3.2.6: the client waits 10 minutes for the reply to the end of the data.
# Every other command keeps the timeout setting.
DATA_REPLY_TIMEOUT = 600.0


class EmailNotSent(Exception):
    """The server refused the message; says only the reply code.

    The failure is logged, and smtplib's own exceptions quote the server's reply and
    the refused addresses.
    """


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


class MailSession(smtplib.SMTP):
    """smtplib.SMTP whose DATA command waits up to DATA_REPLY_TIMEOUT for the server's
    replies, and which says how far the message got."""

    handed_over = False  # the DATA command was sent
    accepted = False  # the server answered 250 to the end of the data

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.handed_over = True
        if self.sock is not None:
            self.sock.settimeout(DATA_REPLY_TIMEOUT)
        reply = super().data(msg)  # SMTPDataError unless 250
        self.accepted = True
        return reply


class MailSessionTLS(MailSession, smtplib.SMTP_SSL):
    """MailSession over TLS from the first byte (port 465)."""


def _connect(config: Any, host: str) -> MailSession:
    port = int(_number(config.SMTP_PORT))
    timeout = _number(config.SMTP_TIMEOUT)
    if _implicit_tls(config):
        context = _tls_context(config)
        return MailSessionTLS(host, port, timeout=timeout, context=context)
    return MailSession(host, port, timeout=timeout)


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    """The message to send; ValueError for a subject, sender or recipient that could
    break into a second header line (see compose_message)."""
    sender = _text(settings.EMAIL_FROM)
    if not sender:
        raise ValueError("no sender address is configured (EMAIL_FROM)")
    return compose_message(sender, to, subject, body)


def send_email(to: str, subject: str, body: str) -> None:
    """Deliver one message. Raises OSError, smtplib.SMTPException, EmailNotSent or
    ValueError when it cannot."""
    config = settings
    message = build_message(to, subject, body)
    user = _text(config.SMTP_USER)
    # A timeout keeps a dead SMTP server from holding a worker thread forever.
    smtp = _connect(config, _text(config.SMTP_HOST))
    try:
        with smtp as session:
            if _starttls(config):
                session.starttls(context=_tls_context(config))
            if _logs_in(config, user):
                session.login(user, _text(config.SMTP_PASSWORD))
            session.send_message(message)
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        if smtp.accepted:
            pass  # the server has it; only the goodbye failed
        elif smtp.handed_over:
            # The server has the data and never answered: it may have delivered it.
            # Never sent again (nothing retries a BackgroundTask).
            logger.warning(
                "email may have been sent (no answer once handed over, %s): %s",
                type(exc).__name__,
                subject,
            )
            return
        else:
            raise
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        raise EmailNotSent(f"recipients refused ({codes})") from None
    except smtplib.SMTPAuthenticationError:
        raise  # the reply to AUTH, before any recipient was named
    except smtplib.SMTPResponseException as exc:
        if not smtp.accepted:  # else only the goodbye (QUIT) was refused
            reply = f"{type(exc).__name__} (SMTP reply {exc.smtp_code})"
            raise EmailNotSent(reply) from None
    # The recipient and the text are personal data: log the subject only.
    logger.info("email sent: %s", subject)

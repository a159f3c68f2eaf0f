"""Send one email over SMTP: a timeout, verified STARTTLS, login only with a user.

Every header is checked before it is written (see compose_message): a subject, sender
or recipient that could break into a second header line is refused with ValueError.

Once the end of the message's data is out, the server may have taken the message:
its answer gets DATA_END_TIMEOUT (RFC 5321 gives the server 10 minutes), and a lost
answer is DeliveryUnknown, which the task never retries (a retry would send a second
copy). `on_data_end` runs just before that point, so the caller can record it first.
"""

import email.policy
import smtplib
import ssl
import unicodedata
from collections.abc import Callable
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from pydantic import SecretStr

from app.core.config import settings


class TransientEmailError(Exception):
    """The server said "try again later" (a 4xx reply): worth a retry."""


class EmailRejected(Exception):
    """The server refused the message for good (a 5xx reply): not retried."""


class DeliveryUnknown(Exception):
    """The message's data went out, the server's answer did not come back: it may have
    been sent. Not retried: a retry would send a second copy."""


# How long the server may take to answer the end of a message's data. RFC 5321
# (4.5.3.2.6) allows 10 minutes; the task's soft time limit (5 minutes) would end the
# wait first, so this stays below it. Every other step gets the SMTP timeout setting.
DATA_END_TIMEOUT = 4 * 60.0
# The bytes that end a message's data (smtplib sends them with the last of the data).
_DATA_END = b"\r\n.\r\n"


def _noop() -> None:
    return None


class _DataEndWatch:
    """Sees the end of a message's data go out: calls on_data_end just before it, then
    gives the server DATA_END_TIMEOUT to answer. `ended`: whether it went out."""

    def __init__(self, on_data_end: Callable[[], None]) -> None:
        self.on_data_end = on_data_end
        self.ended = False

    def send(self, smtp: smtplib.SMTP, data: Any, send: Callable[[Any], None]) -> None:
        if not (isinstance(data, bytes) and data.endswith(_DATA_END)):
            send(data)
            return
        self.on_data_end()
        self.ended = True
        send(data)
        if smtp.sock is not None:
            smtp.sock.settimeout(DATA_END_TIMEOUT)


class _SMTP(smtplib.SMTP):
    def __init__(self, watch: _DataEndWatch, **kwargs: Any) -> None:
        self.watch = watch
        super().__init__(**kwargs)

    def send(self, s: Any) -> None:
        self.watch.send(self, s, super().send)


class _SMTPS(smtplib.SMTP_SSL):
    def __init__(self, watch: _DataEndWatch, **kwargs: Any) -> None:
        self.watch = watch
        super().__init__(**kwargs)

    def send(self, s: Any) -> None:
        self.watch.send(self, s, super().send)


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


def _connect(config: Any, host: str, watch: _DataEndWatch) -> smtplib.SMTP:
    port = int(_number(config.SMTP_PORT))
    timeout = _number(config.SMTP_TIMEOUT)
    # connected by the constructor: SMTP_SSL checks the certificate against the host
    # given there (a later connect() would leave it without a server name)
    if _implicit_tls(config):
        return _SMTPS(
            watch, host=host, port=port, timeout=timeout, context=_tls_context(config)
        )
    return _SMTP(watch, host=host, port=port, timeout=timeout)


def _quit(smtp: smtplib.SMTP) -> None:
    """QUIT and close after the server took the message: a failure here changes
    nothing, so it is not raised (the task would retry a message that went out)."""
    try:
        if smtp.sock is not None:
            smtp.sock.settimeout(smtp.timeout)  # back from DATA_END_TIMEOUT
        smtp.quit()
    except OSError:  # smtplib's errors included
        smtp.close()


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    sender = _text(settings.EMAIL_FROM)
    if not sender:
        raise ValueError("no sender address is configured (EMAIL_FROM)")
    return compose_message(sender, to, subject, body)


def send(
    to: str, subject: str, body: str, on_data_end: Callable[[], None] = _noop
) -> None:
    """Deliver one message.

    Raises ConnectionError, TimeoutError, SMTPServerDisconnected or TransientEmailError
    for failures that may pass, DeliveryUnknown when the answer to the message's data
    was lost, anything else (EmailRejected, SMTPAuthenticationError, ValueError...) for
    failures a retry would not fix.
    """
    config = settings
    host = _text(config.SMTP_HOST)
    if not host:
        raise ValueError("no SMTP host is configured")
    message = build_message(to, subject, body)
    user = _text(config.SMTP_USER)
    watch = _DataEndWatch(on_data_end)
    smtp: smtplib.SMTP | None = None
    try:
        # The timeout keeps a silent server from holding a worker process forever.
        smtp = _connect(config, host, watch)
        if _starttls(config):
            smtp.starttls(context=_tls_context(config))
        if _logs_in(config, user):
            smtp.login(user, _text(config.SMTP_PASSWORD))
        smtp.send_message(message)
        sent, smtp = smtp, None
        _quit(sent)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        # The addresses stay out of the error: it is logged by the worker and stored
        # in the result backend.
        if all(400 <= code < 500 for code in codes):
            raise TransientEmailError(f"recipients deferred ({codes})") from None
        raise EmailRejected(f"recipients refused ({codes})") from None
    except smtplib.SMTPAuthenticationError:
        raise  # the reply to AUTH, before any recipient was named
    except smtplib.SMTPResponseException as exc:
        # An answer, also to the end of the data: the server did not take the message.
        # Only the code: the server's text may quote the addresses.
        if 400 <= exc.smtp_code < 500:
            raise TransientEmailError(f"SMTP reply {exc.smtp_code}") from None
        raise EmailRejected(f"SMTP reply {exc.smtp_code}") from None
    except OSError as exc:  # smtplib's errors included
        if watch.ended:
            # timeout, reset or hang-up after the data went out: no answer to tell
            raise DeliveryUnknown(
                f"no answer to the end of the data ({type(exc).__name__}): "
                "the message may have been sent"
            ) from None
        raise
    finally:
        if smtp is not None:
            smtp.close()  # no QUIT: the connection failed or is in an unknown state

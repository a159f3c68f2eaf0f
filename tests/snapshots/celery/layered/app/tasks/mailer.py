"""Send one email over SMTP: a timeout, verified STARTTLS, login only with a user."""

import smtplib
import ssl
from email.message import EmailMessage

from pydantic import SecretStr

from app.core.config import settings


class TransientEmailError(Exception):
    """The server said "try again later" (a 4xx reply): worth a retry."""


class EmailRejected(Exception):
    """The server refused every recipient for good (a 5xx reply): not retried."""


def _text(value: object) -> str:
    # A reused settings field may be str, SecretStr or Optional[str].
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _number(value: object) -> float:
    return float(_text(value))


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    sender = _text(settings.EMAIL_FROM)
    if not sender:
        raise ValueError("no sender address is configured (EMAIL_FROM)")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def send(to: str, subject: str, body: str) -> None:
    """Deliver one message.

    Raises ConnectionError, TimeoutError, SMTPServerDisconnected or TransientEmailError
    for failures that may pass, anything else (EmailRejected, SMTPAuthenticationError,
    ValueError...) for failures a retry would not fix.
    """
    config = settings
    host = _text(config.SMTP_HOST)
    if not host:
        raise ValueError("no SMTP host is configured")
    message = build_message(to, subject, body)
    user = _text(config.SMTP_USER)
    try:
        # The timeout keeps a silent server from holding a worker process forever.
        with smtplib.SMTP(
            host,
            int(_number(config.SMTP_PORT)),
            timeout=_number(config.SMTP_TIMEOUT),
        ) as smtp:
            if config.SMTP_STARTTLS:
                # Without a context the certificate is not verified, and a man in the
                # middle could read the password sent by login() below.
                smtp.starttls(context=ssl.create_default_context())
            if user:
                smtp.login(user, _text(config.SMTP_PASSWORD))
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        # The addresses stay out of the error: it is stored in the result backend.
        if all(400 <= code < 500 for code in codes):
            raise TransientEmailError(f"recipients deferred ({codes})") from None
        raise EmailRejected(f"recipients refused ({codes})") from None
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TransientEmailError(f"SMTP reply {exc.smtp_code}") from None
        raise

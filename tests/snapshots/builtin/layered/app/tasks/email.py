"""Send email over SMTP with a timeout and a verified STARTTLS connection."""

import logging
import smtplib
import ssl
from email.message import EmailMessage

from pydantic import SecretStr

from app.core.config import settings

logger = logging.getLogger(__name__)


def _secret(value: "SecretStr | str") -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    config = settings
    message = EmailMessage()
    message["From"] = config.EMAIL_FROM
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def send_email(to: str, subject: str, body: str) -> None:
    """Deliver one message. Raises OSError or smtplib.SMTPException when it cannot."""
    config = settings
    message = build_message(to, subject, body)
    # A timeout keeps a dead SMTP server from holding a worker thread forever.
    with smtplib.SMTP(
        config.SMTP_HOST,
        config.SMTP_PORT,
        timeout=config.SMTP_TIMEOUT,
    ) as smtp:
        if config.SMTP_STARTTLS:
            # Without an explicit context the server certificate is not verified.
            smtp.starttls(context=ssl.create_default_context())
        if config.SMTP_USER:
            smtp.login(
                config.SMTP_USER,
                _secret(config.SMTP_PASSWORD),
            )
        smtp.send_message(message)
    # The recipient is personal data: log the subject only.
    logger.info("email sent: %s", subject)

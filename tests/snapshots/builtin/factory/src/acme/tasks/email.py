"""Send email over SMTP with a timeout and a verified STARTTLS connection."""

import logging
import smtplib
import ssl
from email.message import EmailMessage

from pydantic import SecretStr

from acme.core.settings import get_settings

logger = logging.getLogger(__name__)


def _secret(value: "SecretStr | str") -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def build_message(to: str, subject: str, body: str) -> EmailMessage:
    config = get_settings()
    message = EmailMessage()
    message["From"] = config.email_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def send_email(to: str, subject: str, body: str) -> None:
    """Deliver one message. Raises OSError or smtplib.SMTPException when it cannot."""
    config = get_settings()
    message = build_message(to, subject, body)
    # A timeout keeps a dead SMTP server from holding a worker thread forever.
    with smtplib.SMTP(
        config.smtp_host,
        config.smtp_port,
        timeout=config.smtp_timeout,
    ) as smtp:
        if config.smtp_starttls:
            # Without an explicit context the server certificate is not verified.
            smtp.starttls(context=ssl.create_default_context())
        if config.smtp_user:
            smtp.login(
                config.smtp_user,
                _secret(config.smtp_password),
            )
        smtp.send_message(message)
    # The recipient is personal data: log the subject only.
    logger.info("email sent: %s", subject)

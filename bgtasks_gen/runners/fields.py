"""Settings fields more than one runner reads."""

from bgtasks_gen.runners.base import SettingsField

SMTP_FIELDS = (
    SettingsField(
        "smtp_host", "str", '"localhost"', ("EMAIL_HOST", "MAIL_SERVER"), "Email (background tasks)"
    ),
    SettingsField("smtp_port", "int", "587", ("EMAIL_PORT", "MAIL_PORT")),
    SettingsField(
        "smtp_user",
        "str",
        '""',
        ("SMTP_USERNAME", "EMAIL_HOST_USER", "MAIL_USERNAME"),
        optional=True,
    ),
    SettingsField(
        "smtp_password",
        "SecretStr",
        'SecretStr("")',
        ("EMAIL_HOST_PASSWORD", "MAIL_PASSWORD"),
        optional=True,
    ),
    SettingsField("smtp_starttls", "bool", "True", ("SMTP_TLS", "EMAIL_USE_TLS", "MAIL_STARTTLS")),
    SettingsField("smtp_timeout", "float", "10.0", ("EMAIL_TIMEOUT",)),
    SettingsField(
        "email_from",
        "str",
        '"noreply@example.com"',
        ("EMAILS_FROM_EMAIL", "DEFAULT_FROM_EMAIL", "MAIL_FROM"),
    ),
    # reused with their meaning when the project has them, never added
    SettingsField(
        "smtp_ssl",
        "bool",
        "False",
        ("MAIL_SSL_TLS", "SMTP_USE_SSL", "EMAIL_USE_SSL"),
        add=False,
    ),
    SettingsField(
        "smtp_use_credentials",
        "bool",
        "True",
        ("USE_CREDENTIALS", "MAIL_USE_CREDENTIALS"),
        add=False,
    ),
    SettingsField(
        "smtp_validate_certs", "bool", "True", ("VALIDATE_CERTS", "MAIL_VALIDATE_CERTS"), add=False
    ),
)

# Who may call the generated task routes: a bearer token, or everyone when explicitly
# allowed (local development). Empty token: no token is accepted. The switch is text,
# read as exactly true or false by the access module: a bool field would take 1, yes or
# on as well, and any other value would stop the whole settings class with pydantic's
# error instead of one naming the variable.
AUTH_FIELDS = (
    SettingsField(
        "bgtasks_api_token",
        "SecretStr",
        'SecretStr("")',
        (),
        "Task API access (background tasks)",
    ),
    SettingsField("bgtasks_allow_anonymous", "str", '"false"'),
)

# The failed-task inbox of the queue runners (<runner>_inbox.py): how many entries it keeps
# and for how long; beyond either, the oldest go and are counted as dropped.
INBOX_FIELDS = (
    SettingsField(
        "bgtasks_failed_max_entries",
        "int",
        "10000",
        (),
        "Failed-task inbox (background tasks)",
    ),
    SettingsField("bgtasks_failed_retention_seconds", "int", str(7 * 24 * 60 * 60)),
)


def result_retention_field(default_seconds: int) -> SettingsField:
    """How long a finished task's result and status stay readable through the API
    (seconds); each runner keeps its own default (Celery's a day, arq's and taskiq's an
    hour, as their results carry more)."""
    return SettingsField("bgtasks_result_retention_seconds", "int", str(default_seconds))

"""Application settings, read from the environment (and .env)."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # General
    PROJECT_NAME: str = "Layered Shop"
    API_V1_PREFIX: str = "/api/v1"
    DEBUG: bool = False

    # Database
    DATABASE_URL: str = "postgresql://localhost/shop"

    # Background tasks (added by bgtasks)
    CELERY_BROKER_URL: str = "redis://localhost:6379/0"
    CELERY_RESULT_BACKEND: str = "redis://localhost:6379/1"
    SMTP_HOST: str = "localhost"
    SMTP_PORT: int = 587
    SMTP_USER: str = ""
    SMTP_PASSWORD: SecretStr = SecretStr("")
    SMTP_STARTTLS: bool = True
    SMTP_TIMEOUT: float = 10.0
    EMAIL_FROM: str = "noreply@example.com"
    BGTASKS_API_TOKEN: SecretStr = SecretStr("")
    BGTASKS_ALLOW_ANONYMOUS: str = "false"
    BGTASKS_FAILED_MAX_ENTRIES: int = 10000
    BGTASKS_FAILED_RETENTION_SECONDS: int = 604800
    BGTASKS_RESULT_RETENTION_SECONDS: int = 86400
    SENTRY_DSN: str = ""


settings = Settings()

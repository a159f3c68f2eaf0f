from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from acme.core.base_settings import AppSettings, RedisSettings


class Settings(AppSettings, RedisSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="", env_file=".env")

    smtp_host: str = "localhost"  # already here: bgtasks must reuse it

    # Background tasks (added by bgtasks)
    arq_job_timeout: int = 300
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    smtp_timeout: float = 10.0
    email_from: str = "noreply@example.com"
    bgtasks_api_token: SecretStr = SecretStr("")
    bgtasks_allow_anonymous: str = "false"
    bgtasks_failed_max_entries: int = 10000
    bgtasks_failed_retention_seconds: int = 604800
    bgtasks_result_retention_seconds: int = 3600


@lru_cache
def get_settings() -> Settings:
    return Settings()

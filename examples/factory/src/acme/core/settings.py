from functools import lru_cache

from pydantic_settings import SettingsConfigDict

from acme.core.base_settings import AppSettings, RedisSettings


class Settings(AppSettings, RedisSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="", env_file=".env")

    smtp_host: str = "localhost"  # already here: bgtasks must reuse it


@lru_cache
def get_settings() -> Settings:
    return Settings()

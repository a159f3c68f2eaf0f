from pydantic_settings import BaseSettings


class AppSettings(BaseSettings):
    app_name: str = "acme"
    debug: bool = False


class RedisSettings(BaseSettings):
    redis_url: str = "redis://localhost:6379/0"

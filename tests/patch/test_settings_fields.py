"""Before/after pairs for adding Settings fields, and "already patched -> unchanged"."""

from __future__ import annotations

import pytest

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch.settings_fields import NewField, add_settings_fields

HEADER = "Background tasks"
FIELDS = [
    NewField("SMTP_HOST", "str", '"localhost"'),
    NewField("SMTP_PASSWORD", "SecretStr", 'SecretStr("")'),
]

V2_BEFORE = '''"""Settings."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env")

    # Database
    DATABASE_URL: str = 'postgresql://x'  # keep my quotes


settings = Settings()
'''

V2_AFTER = '''"""Settings."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env")

    # Database
    DATABASE_URL: str = 'postgresql://x'  # keep my quotes

    # Background tasks
    SMTP_HOST: str = "localhost"
    SMTP_PASSWORD: SecretStr = SecretStr("")


settings = Settings()
'''

V1_BEFORE = """from pydantic import BaseSettings, Field


class Settings(BaseSettings):
    database_url: str = Field("sqlite://", env="DB")

    class Config:
        env_file = ".env"
"""

V1_AFTER = """from pydantic import BaseSettings, Field, SecretStr


class Settings(BaseSettings):
    database_url: str = Field("sqlite://", env="DB")

    # Background tasks
    smtp_host: str = "localhost"
    smtp_password: SecretStr = SecretStr("")

    class Config:
        env_file = ".env"
"""

LOWER = [
    NewField("smtp_host", "str", '"localhost"'),
    NewField("smtp_password", "SecretStr", 'SecretStr("")'),
]


@pytest.mark.parametrize(
    ("before", "after", "fields"),
    [(V2_BEFORE, V2_AFTER, FIELDS), (V1_BEFORE, V1_AFTER, LOWER)],
    ids=["pydantic-v2-upper", "pydantic-v1-lower"],
)
def test_fields_are_added_after_existing_ones(
    before: str, after: str, fields: list[NewField]
) -> None:
    assert add_settings_fields(before, "Settings", fields, HEADER) == after
    # a second run is the identity
    assert add_settings_fields(after, "Settings", fields, HEADER) == after


def test_existing_field_is_left_alone_and_not_added_twice() -> None:
    source = V2_BEFORE.replace("    # Database\n", "    SMTP_HOST: str = 'mail'\n    # Database\n")
    result = add_settings_fields(source, "Settings", FIELDS, HEADER)
    assert result.count("SMTP_HOST") == 1
    assert "SMTP_HOST: str = 'mail'" in result
    assert result.count("SMTP_PASSWORD: SecretStr") == 1


def test_crlf_and_tabs_are_kept() -> None:
    source = (
        "from pydantic_settings import BaseSettings\r\n\r\n"
        "class S(BaseSettings):\r\n\tA: int = 1\r\n"
    )
    result = add_settings_fields(source, "S", FIELDS[:1], HEADER)
    assert result.startswith(source[: source.index("\tA")])
    assert '\r\n\tSMTP_HOST: str = "localhost"\r\n' in result
    assert "\n" not in result.replace("\r\n", "")


def test_empty_class_body_is_replaced() -> None:
    source = "from pydantic_settings import BaseSettings\n\n\nclass S(BaseSettings):\n    pass\n"
    result = add_settings_fields(source, "S", FIELDS[:1], HEADER)
    assert "pass" not in result
    assert result.endswith(
        'class S(BaseSettings):\n    # Background tasks\n    SMTP_HOST: str = "localhost"\n'
    )


def test_missing_class_is_a_clear_error() -> None:
    with pytest.raises(PatchError, match="class Nope is not defined"):
        add_settings_fields(V2_BEFORE, "Nope", FIELDS, HEADER)


def test_secretstr_import_is_not_duplicated() -> None:
    source = V2_BEFORE.replace(
        '"""Settings."""\n', '"""Settings."""\n\nfrom pydantic import SecretStr\n'
    )
    result = add_settings_fields(source, "Settings", FIELDS, HEADER)
    assert result.count("import SecretStr") == 1

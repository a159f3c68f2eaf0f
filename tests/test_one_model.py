"""Every command reads the project the way `init` wrote it: the fields it chose (reused or
its own), and the prefix the router is served under."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgtasks_gen.discovery import discover
from bgtasks_gen.nextsteps import served_prefix
from bgtasks_gen.runners import get_runner
from bgtasks_gen.scaffold import choose_fields
from tests.conftest import invoke, write_tree

OPTIONAL_SMTP = {
    "svc/__init__.py": "",
    "svc/config.py": (
        "from pydantic_settings import BaseSettings\n\n\n"
        "class S(BaseSettings):\n"
        "    API_V1_STR: str = '/api/v1'\n"
        "    SMTP_HOST: str | None = None\n\n\n"
        "s = S()\n"
    ),
    "svc/main.py": (
        "from fastapi import APIRouter, FastAPI\n\nfrom svc.config import s\n\n"
        "app = FastAPI()\napp.include_router(APIRouter(), prefix=s.API_V1_STR)\n"
    ),
}


def test_the_runners_own_field_added_beside_an_unusable_one_is_read_as_present(
    tmp_path: Path,
) -> None:
    write_tree(tmp_path, OPTIONAL_SMTP)
    first = {c.key: c for c in choose_fields(get_runner("celery"), discover(tmp_path))}
    assert (first["smtp_host"].name, first["smtp_host"].added) == ("CELERY_SMTP_HOST", True)

    config = tmp_path / "svc/config.py"
    text = config.read_text().replace(
        "    SMTP_HOST: str | None = None\n",
        "    SMTP_HOST: str | None = None\n    CELERY_SMTP_HOST: str = 'localhost'\n",
    )
    config.write_text(text)
    again = {c.key: c for c in choose_fields(get_runner("celery"), discover(tmp_path))}
    assert (again["smtp_host"].name, again["smtp_host"].added) == ("CELERY_SMTP_HOST", False)
    assert again["smtp_host"].note == ""


def test_check_passes_right_after_init_with_optional_smtp_fields(tmp_path: Path) -> None:
    write_tree(tmp_path, OPTIONAL_SMTP)
    code, output = invoke("init", str(tmp_path), "--runner", "celery", "--no-deps")
    assert code == 0, output
    code, output = invoke("check", str(tmp_path))
    assert code == 0, output


@pytest.mark.parametrize(
    ("prefix", "field_types", "served"),
    [
        ('"/api/v1"', {}, "/api/v1"),
        ('"/api/v1/"', {}, "/api/v1"),
        ("settings.API_V1_STR", {"API_V1_STR": ("str", '"/api/v1"')}, "/api/v1"),
        ("get_settings().API_V1_STR", {"API_V1_STR": ("str", "'/v2'")}, "/v2"),
        # no default, or not a path: unknown without running the project
        ("settings.API_V1_STR", {"API_V1_STR": ("str", None)}, ""),
        ("settings.API_V1_STR", {}, ""),
        ('f"/api/{VERSION}"', {}, ""),
        ('"api"', {}, ""),
    ],
)
def test_the_served_prefix_is_read_from_the_include(
    prefix: str, field_types: dict[str, tuple[str, str | None]], served: str
) -> None:
    assert served_prefix((("prefix", prefix),), field_types) == served


def test_init_records_the_prefix_and_add_task_names_the_served_route(tmp_path: Path) -> None:
    write_tree(tmp_path, OPTIONAL_SMTP)
    code, output = invoke("init", str(tmp_path), "--runner", "arq", "--no-deps")
    assert code == 0, output
    assert "http://127.0.0.1:8000/api/v1/tasks/send-email" in output
    assert 'api_prefix = "/api/v1"' in (tmp_path / ".bgtasks.toml").read_text()
    code, output = invoke("add-task", "resize_image", "-p", str(tmp_path))
    assert code == 0, output
    assert "route: POST /api/v1/tasks/resize-image" in output


def test_migrate_keeps_reading_the_mail_field_arq_added(tmp_path: Path) -> None:
    """A deployment that sets ARQ_SMTP_HOST keeps sending through it after migrating."""
    write_tree(tmp_path, OPTIONAL_SMTP)
    code, output = invoke("init", str(tmp_path), "--runner", "arq", "--no-deps")
    assert code == 0, output
    assert "ARQ_SMTP_HOST: str" in (tmp_path / "svc/config.py").read_text()
    code, output = invoke("migrate", "--to", "taskiq", "-p", str(tmp_path))
    assert code == 0, output
    config = (tmp_path / "svc/config.py").read_text()
    assert "ARQ_SMTP_HOST: str" in config and "TASKIQ_SMTP_HOST" not in config
    generated = "".join(p.read_text() for p in (tmp_path / "svc").rglob("*.py"))
    assert ".ARQ_SMTP_HOST" in generated and "TASKIQ_SMTP_HOST" not in generated
    assert "ARQ_SMTP_HOST=" in (tmp_path / ".env.example").read_text()
    code, output = invoke("check", str(tmp_path))
    assert code == 0, output


def test_list_names_routes_as_the_app_serves_them(tmp_path: Path) -> None:
    import json

    write_tree(tmp_path, OPTIONAL_SMTP)
    code, output = invoke("init", str(tmp_path), "--runner", "celery", "--no-deps")
    assert code == 0, output
    code, output = invoke("list", str(tmp_path), "--json")
    assert code == 0, output
    routes = {row["name"]: row["route"] for row in json.loads(output)}
    assert routes["send_email"] == "POST /api/v1/tasks/send-email"

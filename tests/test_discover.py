"""Discovery on the project shapes real FastAPI projects have (each a fixture project)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgtasks_gen.discovery import Overrides, discover
from bgtasks_gen.errors import BadInput, DiscoveryError
from bgtasks_gen.runners import get_runner
from bgtasks_gen.scaffold import choose_fields
from tests.conftest import EXAMPLES, write_tree

MAIN = "from fastapi import FastAPI\n\nfrom {pkg}.config import settings\n\napp = FastAPI()\n"


def test_seed_layout() -> None:
    layout = discover(EXAMPLES / "layered")
    assert layout.settings.module == "app.core.config"
    assert layout.settings.class_name == "Settings"
    assert (layout.settings.access_name, layout.settings.access_kind) == ("settings", "instance")
    assert layout.settings.upper_case and not layout.settings.pydantic_v1
    assert (layout.app.module, layout.app.app_var, layout.app.factory) == ("app.main", "app", None)
    assert layout.routes_module == "app.api.v1.routes"
    assert layout.tasks_module == "app.tasks"


def test_factory_src_layout_split_settings_and_entrypoint() -> None:
    layout = discover(EXAMPLES / "factory")
    assert layout.source_root == (EXAMPLES / "factory" / "src").resolve()
    assert layout.settings.module == "acme.core.settings"
    assert layout.settings.access_kind == "factory"
    assert layout.settings.expression == "get_settings()"
    # fields inherited from AppSettings and RedisSettings (another module) are known
    assert {"app_name", "redis_url", "smtp_host"} <= set(layout.settings.fields)
    assert not layout.settings.upper_case
    assert layout.app.factory == "create_app" and layout.app.app_var == "application"
    assert "[tool.fastapi] entrypoint" in layout.app.found_by
    assert layout.routes_module == "acme.api"


def test_pydantic_v1_with_class_config(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic import BaseSettings\n\n\nclass Settings(BaseSettings):\n"
                "    database_url: str = 'x'\n\n    class Config:\n        env_file = '.env'\n\n\n"
                "settings = Settings()\n"
            ),
            "svc/main.py": MAIN.format(pkg="svc"),
        },
    )
    layout = discover(tmp_path)
    assert layout.settings.pydantic_v1
    assert not layout.settings.upper_case


def test_nested_groups_and_settings_in_another_module(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/settings/__init__.py": "from .main import Settings, settings\n",
            "core/settings/main.py": (
                "from pydantic import BaseModel\n"
                "from pydantic_settings import BaseSettings, SettingsConfigDict\n\n\n"
                "class Mail(BaseModel):\n    host: str = 'x'\n\n\n"
                "class Settings(BaseSettings):\n"
                "    model_config = SettingsConfigDict(env_nested_delimiter='__')\n"
                "    MAIL: Mail = Mail()\n\n\nsettings = Settings()\n"
            ),
            "core/server.py": (
                "from fastapi import FastAPI\n\nfrom core.settings import settings\n\n"
                "app = FastAPI()\n"
            ),
        },
    )
    layout = discover(tmp_path)
    assert layout.settings.module == "core.settings.main"
    assert layout.settings.access_module == "core.settings.main"
    assert layout.app.module == "core.server"


def test_pyproject_above_the_package_root(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": "[project]\nname = 'x'\nrequires-python = '>=3.9'\n",
            "backend/app/__init__.py": "",
            "backend/app/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class Settings(BaseSettings):\n    A: int = 1\n\n\nsettings = Settings()\n"
            ),
            "backend/app/main.py": MAIN.format(pkg="app"),
        },
    )
    layout = discover(tmp_path)
    assert layout.settings.path == tmp_path.resolve() / "backend/app/config.py"
    assert layout.module_path(layout.tasks_module) == Path("backend/app/tasks")
    assert layout.legacy_typing  # requires-python >= 3.9: no `X | None` at run time


def test_the_settings_class_the_app_imports_is_chosen(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings, SettingsConfigDict\n\n\n"
                "class DBSettings(BaseSettings):\n"
                "    model_config = SettingsConfigDict(env_prefix='DB_')\n    url: str = 'x'\n\n\n"
                "class Settings(BaseSettings):\n    name: str = 'svc'\n\n\n"
                "db = DBSettings()\nsettings = Settings()\n"
            ),
            "svc/main.py": MAIN.format(pkg="svc"),
        },
    )
    layout = discover(tmp_path)
    assert layout.settings.class_name == "Settings"
    assert "imports" in layout.settings.found_by


def test_ambiguous_settings_name_the_override(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class A(BaseSettings):\n    x: int = 1\n\n\n"
                "class B(BaseSettings):\n    y: int = 1\n\n\na = A()\nb = B()\n"
            ),
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
        },
    )
    with pytest.raises(DiscoveryError) as caught:
        discover(tmp_path)
    assert "--settings-module" in caught.value.hint
    layout = discover(tmp_path, Overrides(settings_module="svc.config:B"))
    assert layout.settings.class_name == "B"


def test_no_settings_class_gets_a_generated_one(tmp_path: Path) -> None:
    write_tree(tmp_path, {"main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n"})
    layout = discover(tmp_path)
    assert layout.settings.generated
    assert layout.settings.import_line == "from tasks.settings import task_settings"
    assert any("no pydantic BaseSettings class" in note for note in layout.notes)
    # but an override that names nothing is still an error
    with pytest.raises(DiscoveryError, match="no pydantic BaseSettings subclass") as caught:
        discover(tmp_path, Overrides(settings_module="main"))
    assert "--settings-module" in caught.value.hint


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\nclass S(BaseSettings:\n"
            ),
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
        },
    )
    with pytest.raises(BadInput, match=r"config\.py:3:\d+: syntax error"):
        discover(tmp_path)


def test_missing_path_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "f.py").write_text("x = 1\n")
    with pytest.raises(BadInput, match="is a file"):
        discover(tmp_path / "f.py")


def test_two_apps_need_an_override(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class S(BaseSettings):\n    x: int = 1\n\n\ns = S()\n"
            ),
            "svc/public.py": "from fastapi import FastAPI\n\npublic = FastAPI()\n",
            "svc/admin.py": "from fastapi import FastAPI\n\nadmin = FastAPI()\n",
        },
    )
    with pytest.raises(DiscoveryError, match="cannot tell which FastAPI app") as caught:
        discover(tmp_path)
    assert "svc.public:public" in caught.value.message and "--app-module" in caught.value.hint
    assert discover(tmp_path, Overrides(app_module="svc.admin:admin")).app.app_var == "admin"
    (tmp_path / "pyproject.toml").write_text('[tool.bgtasks]\napp-module = "svc.public"\n')
    assert discover(tmp_path).app.app_var == "public"


def test_existing_fields_and_aliases_are_reused(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class S(BaseSettings):\n"
                "    SMTP_HOST: str = 'mail'\n    EMAIL_PORT: int = 25\n\n\n"
                "s = S()\n"
            ),
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
        },
    )
    layout = discover(tmp_path)
    choices = {c.key: c for c in choose_fields(get_runner("builtin"), layout)}
    assert (choices["smtp_host"].name, choices["smtp_host"].added) == ("SMTP_HOST", False)
    assert (choices["smtp_port"].name, choices["smtp_port"].added) == ("EMAIL_PORT", False)
    assert (choices["email_from"].name, choices["email_from"].added) == ("EMAIL_FROM", True)


def test_an_existing_celery_app_is_detected(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class S(BaseSettings):\n    x: int = 1\n\n\ns = S()\n"
            ),
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "svc/worker.py": "import celery\n\nqueue = celery.Celery('svc')\n",
        },
    )
    assert discover(tmp_path).existing_runners == (("celery", "svc/worker.py:3"),)


def test_python_314_syntax_is_read_with_libcst(tmp_path: Path) -> None:
    """This interpreter's ast cannot read `except A, B:`; libcst can, so discovery works."""
    write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "from pydantic_settings import BaseSettings\n\n\n"
                "class Settings(BaseSettings):\n    HOST: str = 'x'\n\n\n"
                "try:\n    settings = Settings()\nexcept ValueError, TypeError:\n    raise\n"
            ),
            "svc/main.py": MAIN.format(pkg="svc"),
        },
    )
    layout = discover(tmp_path)
    assert layout.settings.class_name == "Settings"
    assert layout.settings.upper_case

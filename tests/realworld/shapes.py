"""Small projects in the shapes real FastAPI repositories have, and what bgtasks must decide.

Each Shape is a tree of files plus the decisions expected from discovery: which app is
served, where the router is included, which settings class gets the fields, where the
generated code goes, under which URL prefix the new routes answer. They are written to
a temporary folder per test (tests/realworld/test_shapes.py and test_import_smoke.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SETTINGS_V2 = "from pydantic_settings import BaseSettings, SettingsConfigDict\n"


@dataclass(frozen=True)
class Shape:
    name: str
    files: dict[str, str]
    served: str  # the run target bgtasks must name ("pkg.main:app")
    include_module: str  # where include_router is added
    settings_class: str  # module:Class that gets the fields ("" = generated)
    tasks_module: str
    routes_module: str
    prefix: str = ""  # URL prefix the new routes sit under
    runners: tuple[str, ...] = ("builtin", "celery", "arq")
    source_root: str = ""  # relative folder put on sys.path to import the app
    notes: tuple[str, ...] = ()  # substrings some plan note must contain
    env_names: dict[str, str] = field(default_factory=dict)  # field key -> env var in compose
    openapi_at: str = "/openapi.json"  # where the app with the new routes serves its schema


SHAPES = [
    Shape(
        "single-module",
        {
            "main.py": (
                "from fastapi import FastAPI\n\nfrom config import settings\n\n"
                "app = FastAPI(title=settings.name)\n\n\n"
                '@app.get("/")\ndef index() -> dict[str, str]:\n    return {"ok": "yes"}\n'
            ),
            "config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    name: str = 'svc'\n\n\n"
                "settings = Settings()\n"
            ),
            "Dockerfile": 'FROM python:3.12\nCMD ["uvicorn", "main:app", "--host", "0.0.0.0"]\n',
        },
        served="main:app",
        include_module="main",
        settings_class="config:Settings",
        tasks_module="tasks",
        routes_module="tasks.api",
        notes=("top-level module main",),
    ),
    Shape(
        "namespace-subpackage",
        {
            "api/__init__.py": "",
            "api/src/main.py": (
                "from fastapi import FastAPI\n\nfrom .config import settings\n"
                "from .routes import items\n\n"
                "app = FastAPI(title=settings.APP_NAME)\napp.include_router(items.router)\n"
            ),
            "api/src/config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    APP_NAME: str = 'api'\n\n\n"
                "settings = Settings()\n"
            ),
            "api/src/routes/__init__.py": "",
            "api/src/routes/items.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/items")\ndef items() -> list[int]:\n    return [1]\n'
            ),
            "compose.yml": (
                "services:\n  api:\n    build: .\n"
                "    command: uvicorn api.src.main:app --host 0.0.0.0\n"
            ),
        },
        served="api.src.main:app",
        include_module="api.src.main",
        settings_class="api.src.config:Settings",
        tasks_module="api.tasks",
        routes_module="api.src.routes",
    ),
    Shape(
        "builder-is-not-an-accessor",
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n"
                "    REDIS: str = 'redis://localhost:6379/2'\n\n\n"
                "def get_settings() -> 'Settings':\n    return Settings()\n"
            ),
            "svc/deps.py": (
                "from svc.config import Settings\n\n\n"
                "async def get_redis() -> str:\n    settings = Settings()\n"
                "    return str(settings.REDIS).upper()\n"
            ),
            "svc/main.py": (
                "from fastapi import FastAPI\n\nfrom svc.config import get_settings\n\n"
                "app = FastAPI(debug=bool(get_settings().REDIS == ''))\n"
            ),
        },
        served="svc.main:app",
        include_module="svc.main",
        settings_class="svc.config:Settings",
        tasks_module="svc.tasks",
        routes_module="svc.api",
    ),
    Shape(
        "settings-per-environment",
        {
            "app/__init__.py": "",
            "app/core/__init__.py": "",
            "app/core/settings/__init__.py": "",
            "app/core/settings/base.py": (
                "from enum import Enum\n\n" + SETTINGS_V2 + "\n\nclass AppEnvTypes(Enum):\n"
                "    prod = 'prod'\n    dev = 'dev'\n    test = 'test'\n\n\n"
                "class BaseAppSettings(BaseSettings):\n    app_env: AppEnvTypes = AppEnvTypes.dev\n"
                "    model_config = SettingsConfigDict(env_file='.env', extra='ignore')\n"
            ),
            "app/core/settings/app.py": (
                "from app.core.settings.base import BaseAppSettings\n\n\n"
                "class AppSettings(BaseAppSettings):\n    debug: bool = False\n"
                "    title: str = 'Realworld'\n"
            ),
            "app/core/settings/development.py": (
                "from app.core.settings.app import AppSettings\n\n\n"
                "class DevAppSettings(AppSettings):\n    debug: bool = True\n"
            ),
            "app/core/settings/production.py": (
                "from app.core.settings.app import AppSettings\n\n\n"
                "class ProdAppSettings(AppSettings):\n    pass\n"
            ),
            "app/core/settings/test.py": (
                "from app.core.settings.app import AppSettings\n\n\n"
                "class TestAppSettings(AppSettings):\n    title: str = 'Test'\n"
            ),
            "app/core/config.py": (
                "from functools import lru_cache\n\n"
                "from app.core.settings.app import AppSettings\n"
                "from app.core.settings.base import AppEnvTypes, BaseAppSettings\n"
                "from app.core.settings.development import DevAppSettings\n"
                "from app.core.settings.production import ProdAppSettings\n"
                "from app.core.settings.test import TestAppSettings\n\n"
                "environments: dict[AppEnvTypes, type[AppSettings]] = {\n"
                "    AppEnvTypes.dev: DevAppSettings,\n    AppEnvTypes.prod: ProdAppSettings,\n"
                "    AppEnvTypes.test: TestAppSettings,\n}\n\n\n@lru_cache\n"
                "def get_app_settings() -> AppSettings:\n"
                "    app_env = BaseAppSettings().app_env\n"
                "    config = environments[app_env]\n    return config()\n"
            ),
            "app/main.py": (
                "from fastapi import FastAPI\n\nfrom app.api.routes import api\n"
                "from app.core.config import get_app_settings\n\n\n"
                "def get_application() -> FastAPI:\n    settings = get_app_settings()\n"
                "    application = FastAPI(title=settings.title, debug=settings.debug)\n"
                '    application.include_router(api.router, prefix="/api")\n'
                "    return application\n\n\napp = get_application()\n"
            ),
            "app/api/__init__.py": "",
            "app/api/routes/__init__.py": "",
            "app/api/routes/api.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/tags")\ndef tags() -> list[str]:\n    return []\n'
            ),
        },
        served="app.main:app",
        include_module="app.main",
        settings_class="app.core.settings.app:AppSettings",
        tasks_module="app.tasks",
        routes_module="app.api.routes",
        prefix="/api",
        notes=("get_app_settings() -> AppSettings", 'prefix="/api"'),
    ),
    Shape(
        "config-chosen-from-a-dict",
        {
            "svc/__init__.py": "",
            "svc/config.py": (
                "import os\n\n" + SETTINGS_V2 + "\n\nclass BaseConfig(BaseSettings):\n"
                "    NAME: str = 'svc'\n\n\n"
                "class LocalConfig(BaseConfig):\n    DEBUG: bool = True\n\n\n"
                "class ProductionConfig(BaseConfig):\n    DEBUG: bool = False\n\n\n"
                "class TestConfig(BaseConfig):\n    DEBUG: bool = True\n\n\n"
                "def get_config():  # type: ignore[no-untyped-def]\n"
                "    env = os.getenv('ENV', 'local')\n"
                "    config_type = {'local': LocalConfig, 'production': ProductionConfig,\n"
                "                   'test': TestConfig}\n    return config_type[env]()\n"
            ),
            "svc/main.py": (
                "from fastapi import FastAPI\n\nfrom svc.config import get_config\n\n"
                "app = FastAPI(title=get_config().NAME)\n"
            ),
        },
        served="svc.main:app",
        include_module="svc.main",
        settings_class="svc.config:BaseConfig",
        tasks_module="svc.tasks",
        routes_module="svc.api",
    ),
    Shape(
        "decoy-settings",
        {
            "shop/__init__.py": "",
            "shop/settings.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    OLD: int = 1\n\n\n"
                "class Settings(BaseSettings):  # type: ignore[no-redef]\n"
                "    model_config = SettingsConfigDict(env_prefix='SHOP_')\n"
                "    TITLE: str = 'shop'\n\n\nsettings = Settings()\n"
            ),
            "shop/db/__init__.py": "",
            "shop/db/provider.py": (
                SETTINGS_V2 + "\n\nclass ProviderConfig(BaseSettings):\n"
                "    model_config = SettingsConfigDict(env_prefix='DB_')\n"
                "    url: str = 'sqlite://'\n\n\nprovider_config = ProviderConfig()\n"
            ),
            "shop/tools/__init__.py": "",
            "shop/tools/cli.py": (
                SETTINGS_V2
                + "\n\nclass ToolSettings(BaseSettings):\n    verbose: bool = False\n\n\n"
                "tool_settings = ToolSettings()\n"
            ),
            "shop/main.py": (
                "from fastapi import FastAPI\n\nfrom shop.settings import settings\n\n"
                "app = FastAPI(title=settings.TITLE)\n"
            ),
        },
        served="shop.main:app",
        include_module="shop.main",
        settings_class="shop.settings:Settings",
        tasks_module="shop.tasks",
        routes_module="shop.api",
        env_names={"celery_broker_url": "SHOP_CELERY_BROKER_URL", "redis_url": "SHOP_REDIS_URL"},
    ),
    Shape(
        "mounted-api-sub-app",
        {
            "shop/__init__.py": "",
            "shop/config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    TITLE: str = 'shop'\n\n\n"
                "settings = Settings()\n"
            ),
            "shop/api.py": (
                "from fastapi import FastAPI\n\nfrom shop.routers import orders, users\n\n"
                "api_app = FastAPI()\napi_app.include_router(users.router)\n"
                "api_app.include_router(orders.router)\n"
            ),
            "shop/admin.py": (
                "from fastapi import FastAPI\n\nadmin_app = FastAPI()\n\n\n"
                '@admin_app.get("/")\ndef dashboard() -> str:\n    return "admin"\n'
            ),
            "shop/main.py": (
                "from fastapi import FastAPI\n\nfrom shop.admin import admin_app\n"
                "from shop.api import api_app\nfrom shop.config import settings\n\n"
                "app = FastAPI(title=settings.TITLE)\n"
                'app.mount("/api", api_app)\napp.mount("/admin", admin_app)\n'
            ),
            "shop/routers/__init__.py": "",
            "shop/routers/users.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/users")\ndef users() -> list[str]:\n    return []\n'
            ),
            "shop/routers/orders.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/orders")\ndef orders() -> list[str]:\n    return []\n'
            ),
            "shop/testing/__init__.py": "",
            "shop/testing/mock_app.py": (
                "from fastapi import FastAPI\n\nfrom shop.routers import users\n\n"
                "mock_app = FastAPI()\nmock_app.include_router(users.router)\n"
                "mock_app.include_router(users.router)\nmock_app.include_router(users.router)\n"
            ),
            "model_server/__init__.py": "",
            "model_server/serve.py": ("from fastapi import FastAPI\n\nmodel_app = FastAPI()\n"),
            "Procfile": "web: gunicorn -k uvicorn.workers.UvicornWorker shop.main:app\n",
        },
        served="shop.main:app",
        include_module="shop.api",
        settings_class="shop.config:Settings",
        tasks_module="shop.tasks",
        routes_module="shop.routers",
        prefix="/api",
        runners=("builtin", "celery"),  # arq: on the main app, see test_arq_on_a_mounted_sub_app
        notes=("sub-app",),
        openapi_at="/api/openapi.json",
    ),
    Shape(
        "factory-with-module-level-includes",
        {
            "app/__init__.py": "",
            "app/config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    title: str = 'x'\n\n\n"
                "def get_settings() -> Settings:\n    return Settings()\n"
            ),
            "app/factory.py": (
                "from fastapi import FastAPI\n\nfrom app.config import Settings\n\n\n"
                "def create_app(settings: Settings) -> FastAPI:\n"
                "    application = FastAPI(title=settings.title)\n    return application\n"
            ),
            "app/main.py": (
                "from fastapi import FastAPI\n\nfrom app.config import get_settings\n"
                "from app.factory import create_app\nfrom app.routers import items, users\n\n"
                "main_app: FastAPI = create_app(get_settings())\n"
                'main_app.include_router(users.router, prefix="/v1")\n'
                'main_app.include_router(items.router, prefix="/v1")\n\n'
                "STARTED: list[bool] = []\n\n\n"
                '@main_app.on_event("startup")\ndef started() -> None:\n    STARTED.append(True)\n'
            ),
            "app/routers/__init__.py": "",
            "app/routers/users.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/users")\ndef users() -> list[str]:\n    return []\n'
            ),
            "app/routers/items.py": (
                "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                '@router.get("/items")\ndef items() -> list[str]:\n    return []\n'
            ),
        },
        served="app.main:main_app",
        include_module="app.main",
        settings_class="app.config:Settings",
        tasks_module="app.tasks",
        routes_module="app.routers",
        prefix="/v1",
    ),
    Shape(
        "api-prefix-and-auth",
        {
            "app/__init__.py": "",
            "app/core/__init__.py": "",
            "app/core/config.py": (
                "from pydantic import (\n    AnyUrl,\n    Field,\n)\n"
                + SETTINGS_V2
                + "\n\nclass Settings(BaseSettings):\n"
                "    API_V1_STR: str = '/api/v1'\n    SMTP_HOST: str | None = None\n"
                "    REDIS_URL: str | None = None\n"
                "    SENTRY: AnyUrl | None = Field(default=None)\n\n\n"
                "settings = Settings()\n"
            ),
            "app/deps.py": (
                "from fastapi import Header, HTTPException\n\n\n"
                "def get_current_user(authorization: str = Header('')) -> str:\n"
                "    if not authorization:\n        raise HTTPException(status_code=401)\n"
                "    return authorization\n"
            ),
            "app/main.py": (
                "from fastapi import Depends, FastAPI\n\nfrom app.core.config import settings\n"
                "from app.deps import get_current_user\n"
                "from app.routes import items, login, users\n\n"
                "app = FastAPI()\n"
                "app.include_router(\n    items.router,\n    prefix=settings.API_V1_STR,\n"
                "    dependencies=[Depends(get_current_user)],\n)\n"
                "app.include_router(\n    users.router,\n    prefix=settings.API_V1_STR,\n"
                "    dependencies=[Depends(get_current_user)],\n)\n"
                "app.include_router(\n    login.router,\n    prefix=settings.API_V1_STR,\n"
                "    dependencies=[Depends(get_current_user)],\n)\n"
            ),
            "app/routes/__init__.py": "",
            **{
                f"app/routes/{name}.py": (
                    "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
                    f'@router.get("/{name}")\ndef {name}() -> list[str]:\n    return []\n'
                )
                for name in ("items", "users", "login")
            },
        },
        served="app.main:app",
        include_module="app.main",
        settings_class="app.core.config:Settings",
        tasks_module="app.tasks",
        routes_module="app.routes",
        prefix="/api/v1",
        notes=("dependencies=[Depends(get_current_user)]", "SMTP_HOST not reused"),
    ),
    Shape(
        "router-placement",
        {
            "app/__init__.py": "",
            "app/config.py": (
                SETTINGS_V2 + "\n\nclass Settings(BaseSettings):\n    title: str = 'x'\n\n\n"
                "settings = Settings()\n"
            ),
            "app/main.py": (
                "from fastapi import FastAPI\n\nfrom app.oauth import wellknown\n"
                "from app.routers import items, users\n\napp = FastAPI()\n"
                "app.include_router(wellknown.router)\napp.include_router(items.router)\n"
                "app.include_router(users.router)\n"
            ),
            "app/oauth/__init__.py": "",
            "app/oauth/wellknown.py": "from fastapi import APIRouter\n\nrouter = APIRouter()\n",
            "app/routers/__init__.py": "",
            "app/routers/items.py": "from fastapi import APIRouter\n\nrouter = APIRouter()\n",
            "app/routers/users.py": "from fastapi import APIRouter\n\nrouter = APIRouter()\n",
        },
        served="app.main:app",
        include_module="app.main",
        settings_class="app.config:Settings",
        tasks_module="app.tasks",
        routes_module="app.routers",
    ),
    Shape(
        "no-basesettings",
        {
            "svc/__init__.py": "",
            "svc/config.py": "import os\n\nDATABASE_URL = os.getenv('DATABASE_URL', 'sqlite://')\n",
            "svc/main.py": (
                "from fastapi import FastAPI\n\nfrom svc import config\n\n"
                "app = FastAPI(title=config.DATABASE_URL)\n"
            ),
        },
        served="svc.main:app",
        include_module="svc.main",
        settings_class="",
        tasks_module="svc.tasks",
        routes_module="svc.api",
        notes=("no pydantic BaseSettings class",),
    ),
]

BY_NAME = {shape.name: shape for shape in SHAPES}

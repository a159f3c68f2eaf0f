"""Before/after pairs for wiring the arq pool's lifespan into the user's app."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch.lifespan import LifespanPatchError, add_lifespan

POOL = "shop.tasks.pool"

# (a) a module-level app without lifespan: add the keyword
PLAIN_BEFORE = """from fastapi import FastAPI

from shop.api import health
from shop.core.config import settings

app = FastAPI(title=settings.NAME)  # the app

app.include_router(health.router)
"""
PLAIN_AFTER = """from fastapi import FastAPI

from shop.api import health
from shop.core.config import settings
from shop.tasks.pool import lifespan as bgtasks_lifespan

app = FastAPI(title=settings.NAME, lifespan=bgtasks_lifespan)  # the app

app.include_router(health.router)
"""

NO_ARGS_BEFORE = """import fastapi

app = fastapi.FastAPI()
"""
NO_ARGS_AFTER = """import fastapi

from shop.tasks.pool import lifespan as bgtasks_lifespan

app = fastapi.FastAPI(lifespan=bgtasks_lifespan)
"""

# (b) an existing lifespan is wrapped, never replaced
EXISTING_BEFORE = """from contextlib import asynccontextmanager

from fastapi import FastAPI

from shop.db import engine


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
"""
EXISTING_AFTER = """from contextlib import asynccontextmanager

from fastapi import FastAPI

from shop.db import engine
from shop.tasks.pool import combine_lifespans
from shop.tasks.pool import lifespan as bgtasks_lifespan


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await engine.dispose()


app = FastAPI(lifespan=combine_lifespans(lifespan, bgtasks_lifespan))
"""

# (c) @app.on_event handlers keep running: on_event_handlers runs them, first
ON_EVENT_BEFORE = """from fastapi import FastAPI

from shop.core.config import settings
from shop.db import database

app = FastAPI(title=settings.NAME, description="The shop's public API")


@app.on_event("startup")
async def connect() -> None:
    await database.connect()


@app.on_event("shutdown")
async def disconnect() -> None:
    await database.disconnect()
"""
ON_EVENT_AFTER = """from fastapi import FastAPI

from shop.core.config import settings
from shop.db import database
from shop.tasks.pool import combine_lifespans, on_event_handlers
from shop.tasks.pool import lifespan as bgtasks_lifespan

app = FastAPI(
    title=settings.NAME,
    description="The shop's public API",
    lifespan=combine_lifespans(on_event_handlers, bgtasks_lifespan),
)


@app.on_event("startup")
async def connect() -> None:
    await database.connect()


@app.on_event("shutdown")
async def disconnect() -> None:
    await database.disconnect()
"""

ON_STARTUP_KWARG_BEFORE = """from fastapi import FastAPI

from shop.db import connect

app = FastAPI(on_startup=[connect])
"""
ON_STARTUP_KWARG_AFTER = """from fastapi import FastAPI

from shop.db import connect
from shop.tasks.pool import combine_lifespans, on_event_handlers
from shop.tasks.pool import lifespan as bgtasks_lifespan

app = FastAPI(
    on_startup=[connect],
    lifespan=combine_lifespans(on_event_handlers, bgtasks_lifespan),
)
"""

# (d) the app built in a factory function
FACTORY_BEFORE = """from fastapi import FastAPI

from shop.api.router import api_router
from shop.core.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    application = FastAPI(title=settings.app_name)
    application.include_router(api_router, prefix="/api")
    return application


app = create_app()
"""
FACTORY_AFTER = """from fastapi import FastAPI

from shop.api.router import api_router
from shop.core.settings import get_settings
from shop.tasks.pool import lifespan as bgtasks_lifespan


def create_app() -> FastAPI:
    settings = get_settings()
    application = FastAPI(title=settings.app_name, lifespan=bgtasks_lifespan)
    application.include_router(api_router, prefix="/api")
    return application


app = create_app()
"""

FACTORY_EXISTING_BEFORE = """from fastapi import FastAPI as App

from shop.lifecycle import lifespan


def create_app() -> App:
    return App(
        title="shop",
        lifespan=lifespan,
    )
"""
FACTORY_EXISTING_AFTER = """from fastapi import FastAPI as App

from shop.lifecycle import lifespan
from shop.tasks.pool import combine_lifespans
from shop.tasks.pool import lifespan as bgtasks_lifespan


def create_app() -> App:
    return App(
        title="shop",
        lifespan=combine_lifespans(lifespan, bgtasks_lifespan),
    )
"""

# a call already one argument per line keeps its layout
EXPLODED_BEFORE = """from fastapi import FastAPI

from shop.core.config import settings

app = FastAPI(
    title=settings.NAME,
    version="1.0",  # keep in step with pyproject
)
"""
EXPLODED_AFTER = """from fastapi import FastAPI

from shop.core.config import settings
from shop.tasks.pool import lifespan as bgtasks_lifespan

app = FastAPI(
    title=settings.NAME,
    version="1.0",  # keep in step with pyproject
    lifespan=bgtasks_lifespan,
)
"""

# an annotated assignment, below a module docstring
ANNOTATED_BEFORE = '''"""The shop's app."""

from fastapi import FastAPI

app: FastAPI = FastAPI(title="shop")
'''
ANNOTATED_AFTER = '''"""The shop's app."""

from fastapi import FastAPI

from shop.tasks.pool import lifespan as bgtasks_lifespan

app: FastAPI = FastAPI(title="shop", lifespan=bgtasks_lifespan)
'''

CASES = {
    "plain": (PLAIN_BEFORE, PLAIN_AFTER, "app"),
    "no-args": (NO_ARGS_BEFORE, NO_ARGS_AFTER, "app"),
    "existing-lifespan": (EXISTING_BEFORE, EXISTING_AFTER, "app"),
    "on-event": (ON_EVENT_BEFORE, ON_EVENT_AFTER, "app"),
    "on-startup-kwarg": (ON_STARTUP_KWARG_BEFORE, ON_STARTUP_KWARG_AFTER, "app"),
    "factory": (FACTORY_BEFORE, FACTORY_AFTER, "application"),
    "factory-existing": (FACTORY_EXISTING_BEFORE, FACTORY_EXISTING_AFTER, "create_app"),
    "exploded": (EXPLODED_BEFORE, EXPLODED_AFTER, "app"),
    "annotated": (ANNOTATED_BEFORE, ANNOTATED_AFTER, "app"),
}


@pytest.mark.parametrize("case", CASES)
def test_before_after(case: str) -> None:
    before, after, hint = CASES[case]
    assert add_lifespan(before, app_name_hint=hint, import_module=POOL) == after


@pytest.mark.parametrize("case", CASES)
def test_already_patched_is_unchanged(case: str) -> None:
    _, after, hint = CASES[case]
    assert add_lifespan(after, app_name_hint=hint, import_module=POOL) == after


def test_hint_picks_one_of_several_apps() -> None:
    source = """from fastapi import FastAPI

admin = FastAPI()
app = FastAPI()
"""
    out = add_lifespan(source, app_name_hint="app", import_module=POOL)
    assert "admin = FastAPI()\napp = FastAPI(lifespan=bgtasks_lifespan)\n" in out


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from fastapi import APIRouter\n\nrouter = APIRouter()\n", "no FastAPI(...) call"),
        ("from fastapi import FastAPI\n\napp = FastAPI(**options)\n", "FastAPI(**...)"),
        ("from fastapi import FastAPI\n\na = FastAPI()\nb = FastAPI()\n", "2 FastAPI(...) calls"),
        ("def broken(:\n", "does not parse"),
    ],
)
def test_errors_are_value_errors_with_a_message(source: str, message: str) -> None:
    with pytest.raises(LifespanPatchError, match=re.escape(message)) as info:
        add_lifespan(source, app_name_hint="app", import_module=POOL)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PatchError)  # the CLI shows it as a message + hint


@pytest.mark.parametrize("case", CASES)
def test_result_is_ruff_clean(case: str, tmp_path: Path) -> None:
    """Each edited module passes ruff format --check and ruff check (isort included)."""
    before, _, hint = CASES[case]
    after = add_lifespan(before, app_name_hint=hint, import_module=POOL)
    (tmp_path / "shop").mkdir()  # makes `shop` first-party for isort
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "main.py").write_text(after)
    ruff = [sys.executable, "-m", "ruff"]
    lint = ["--select", "E,W,I,UP", "--target-version", "py311"]
    for command in (
        [*ruff, "format", "--check", "--no-cache", "--isolated", "shop/main.py"],
        [*ruff, "check", "--no-cache", "--isolated", *lint, "shop/main.py"],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_fastapi_skips_on_event_handlers_once_a_lifespan_is_set() -> None:
    """Why case (c) exists: with lifespan=..., @app.on_event handlers silently never run
    (checked on FastAPI 0.165 / Starlette 1.10). If this starts failing, FastAPI has
    changed and on_event_handlers would run them twice: revisit the patch."""
    import warnings

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    ran: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ran.append("lifespan")
        yield

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with_lifespan = FastAPI(lifespan=lifespan)
        with_lifespan.on_event("startup")(lambda: ran.append("on_event"))
        without = FastAPI()
        without.on_event("startup")(lambda: ran.append("on_event without lifespan"))
        with TestClient(with_lifespan):
            pass
        with TestClient(without):
            pass
    assert ran == ["lifespan", "on_event without lifespan"]

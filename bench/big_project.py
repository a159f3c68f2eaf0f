"""A synthetic FastAPI project of about 1,800 files, shaped like a large real one.

    .venv/bin/python bench/big_project.py DEST [--domains 30]

Package `shop`: `shop/main.py` builds the app in `create_app()` and includes one router
from each route module; `shop/core/config.py` holds the `Settings(BaseSettings)` class and
a cached `get_settings()`; each domain package has models, schemas, repositories and
services that import each other and other domains, and routes that read the settings
through `Depends(get_settings)`. About 25 modules use syntax newer than Python 3.11
(`type X = ...` aliases, PEP 695 generics, `except A, B:` without parentheses), some of
them reached by the app, some not. Then tests, migrations, templates and static files,
which discovery must skip. The same arguments always write the same tree.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SETTINGS_FIELDS = 40
MODELS, SCHEMAS, REPOSITORIES, SERVICES, ROUTES = 12, 6, 3, 12, 5
UTILS = 60
TEST_FILES = 450
MIGRATIONS = 100
TEMPLATES, STATIC = 30, 20
# (domain, module) of the modules written in newer syntax: one in every few domains is
# imported by a service (so the app reaches it); the rest are not imported by anything
NEWER_SYNTAX_REACHED = 10
NEWER_SYNTAX_UNREACHED = 15


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _settings_module() -> str:
    fields = "\n".join(
        f'    FEATURE_{n:02d}_URL: str = "http://localhost:{8000 + n}"'
        for n in range(SETTINGS_FIELDS)
    )
    return f'''"""Application settings, read from the environment."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    PROJECT_NAME: str = "Shop"
    API_PREFIX: str = "/api"
    DATABASE_URL: str = "postgresql://localhost/shop"
{fields}


@lru_cache
def get_settings() -> Settings:
    return Settings()


settings = get_settings()
'''


def _main_module(routes: list[str]) -> str:
    imports = "\n".join(
        f"from shop.domains.{r.rpartition('.')[0]} import {r.rpartition('.')[2]} "
        f"as {r.replace('.', '_')}"
        for r in routes
    )
    includes = "\n".join(
        f"    app.include_router({r.replace('.', '_')}.router, prefix=settings.API_PREFIX)"
        for r in routes
    )
    return f'''"""The application factory and the served app."""

from fastapi import FastAPI

from shop.core.config import get_settings
from shop.core.lifespan import lifespan
{imports}


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title=settings.PROJECT_NAME, lifespan=lifespan)
{includes}
    return app


app = create_app()
'''


def _model(domain: str, index: int, rng: random.Random, domains: list[str]) -> str:
    other = rng.choice(domains)
    other_index = rng.randrange(MODELS)
    base = (
        f"from shop.domains.{other}.models_{other_index:02d} "
        f"import Model{other_index:02d} as Other\n"
        if (other, other_index) != (domain, index)
        else ""
    )
    fields = "\n".join(f"    field_{n}: str = ''" for n in range(8))
    linked = "    other: Other | None = None\n" if base else ""
    return f'''"""Models of {domain}, part {index}."""

from datetime import datetime

from pydantic import BaseModel

{base}

class Model{index:02d}(BaseModel):
    id: int
    created: datetime | None = None
{fields}
{linked}'''


def _schema(domain: str, index: int) -> str:
    return f'''"""Request and response bodies of {domain}, part {index}."""

from pydantic import BaseModel

from shop.domains.{domain}.models_{index:02d} import Model{index:02d}


class Create{index:02d}(BaseModel):
    name: str
    description: str = ""


class Read{index:02d}(Model{index:02d}):
    pass
'''


def _repository(domain: str, index: int) -> str:
    return f'''"""Storage of {domain}, part {index}."""

from shop.core.db import Session
from shop.domains.{domain}.models_{index:02d} import Model{index:02d}


class Repository{index:02d}:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, item_id: int) -> Model{index:02d} | None:
        return self.session.get(Model{index:02d}, item_id)
'''


def _service(
    domain: str, index: int, rng: random.Random, domains: list[str], newer: str | None
) -> str:
    others = sorted({rng.choice(domains) for _ in range(3)} - {domain})
    imports = [
        "from shop.core.config import settings",
        f"from shop.domains.{domain}.models_{index % MODELS:02d} import Model{index % MODELS:02d}",
        f"from shop.domains.{domain}.repository_{index % REPOSITORIES:02d} import "
        f"Repository{index % REPOSITORIES:02d}",
        f"from shop.utils import util_{rng.randrange(UTILS):02d}",
    ]
    imports += [
        f"from shop.domains.{o} import services_{index % SERVICES:02d} as {o}_service"
        for o in others
    ]
    if newer:
        imports.append(f"from shop.domains.{domain} import {newer}")
    # some services take the settings object as a parameter (a common style)
    takes_settings = index % 3 == 0
    if takes_settings:
        imports.insert(1, "from shop.core.config import Settings")
    signature = "settings: Settings, " if takes_settings else ""
    body = "settings" if takes_settings else "None"
    return '"""Business rules of {d}, part {i}."""\n\n{imports}\n\n\n{funcs}'.format(
        d=domain,
        i=index,
        imports="\n".join(sorted(imports)),
        funcs="\n\n".join(
            f"def operation_{n}({signature}item_id: int) -> str:\n"
            f"    model = Model{index % MODELS:02d}(id=item_id)\n"
            f'    return f"{{model.id}}:{{settings.PROJECT_NAME}}:{{{body} is None}}"\n'
            for n in range(6)
        ),
    )


def _route(domain: str, index: int) -> str:
    service = index % SERVICES
    return f'''"""HTTP routes of {domain}, part {index}."""

from fastapi import APIRouter, Depends

from shop.core.config import Settings, get_settings
from shop.domains.{domain} import services_{service:02d}
from shop.domains.{domain}.schemas_{index % SCHEMAS:02d} import Create{index % SCHEMAS:02d}

router = APIRouter(prefix="/{domain}/r{index}", tags=["{domain}"])


@router.get("/{{item_id}}")
async def read_item(item_id: int, settings: Settings = Depends(get_settings)) -> str:
    return services_{service:02d}.operation_0({"settings, " if service % 3 == 0 else ""}item_id)


@router.post("/")
async def create_item(body: Create{index % SCHEMAS:02d}) -> dict[str, str]:
    return {{"name": body.name}}
'''


def _newer_syntax(domain: str, index: int) -> str:
    """A module only Python 3.12+ (3.14 for `except A, B:`) parses."""
    return f'''"""Typed helpers of {domain} ({index}), in the newest syntax."""

from collections.abc import Callable, Sequence

from shop.core.config import Settings

type ItemId = int
type Handler[T] = Callable[[T], None]


def first[T](items: Sequence[T]) -> T:
    return items[0]


class Page[T]:
    def __init__(self, items: list[T], settings: Settings) -> None:
        self.items = items
        self.limit = len(settings.PROJECT_NAME)


def parse_id(raw: str) -> ItemId:
    try:
        return int(raw)
    except ValueError, TypeError:
        return 0
'''


def _util(index: int) -> str:
    return f'''"""Small helpers ({index})."""

import hashlib


def digest_{index}(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def clamp_{index}(value: int, low: int = 0, high: int = 100) -> int:
    return max(low, min(high, value))
'''


def _test(index: int, domains: list[str]) -> str:
    domain = domains[index % len(domains)]
    return f"""from fastapi.testclient import TestClient

from shop.main import app

client = TestClient(app)


def test_read_{index}() -> None:
    assert client.get("/api/{domain}/r{index % ROUTES}/1").status_code in (200, 422)
"""


def write_project(dest: Path, domains_count: int = 30, package: str = "app", seed: int = 7) -> int:
    """Write the project into `dest` (which must not exist); the number of files. The
    package is written as `shop`, then renamed: `app` (the default, as in FastAPI's own
    project template) is a word nearly every module then contains."""
    if dest.exists():
        raise SystemExit(f"{dest} exists: give a new folder")
    rng = random.Random(seed)
    domains = [f"d{n:02d}" for n in range(domains_count)]
    newer: dict[tuple[str, int], str] = {}  # (domain, service index) -> module importing it
    for n in range(NEWER_SYNTAX_REACHED):
        newer[(domains[(n * 3) % domains_count], n % SERVICES)] = f"typed_{n:02d}"
    routes: list[str] = []

    _write(
        dest / "pyproject.toml",
        '[project]\nname = "shop"\nversion = "1.0.0"\n'
        'requires-python = ">=3.11"\ndependencies = [\n    "fastapi>=0.115",\n'
        '    "pydantic-settings>=2.0",\n    "uvicorn>=0.30",\n]\n',
    )
    _write(
        dest / "Dockerfile",
        "FROM python:3.11-slim\nCOPY . /srv\nWORKDIR /srv\n"
        'RUN pip install .\nCMD ["uvicorn", "shop.main:app", "--host", "0.0.0.0"]\n',
    )
    _write(dest / "README.md", "# Shop\n")
    _write(dest / "shop" / "__init__.py", "")
    _write(dest / "shop" / "core" / "__init__.py", "")
    _write(dest / "shop" / "core" / "config.py", _settings_module())
    _write(
        dest / "shop" / "core" / "db.py",
        "class Session:\n    def get(self, model: type, key: int) -> None:\n        return None\n",
    )
    _write(
        dest / "shop" / "core" / "lifespan.py",
        "from collections.abc import AsyncIterator\n"
        "from contextlib import asynccontextmanager\n\nfrom fastapi import FastAPI\n\n\n"
        "@asynccontextmanager\nasync def lifespan(app: FastAPI) -> AsyncIterator[None]:\n"
        "    yield\n",
    )
    _write(dest / "shop" / "utils" / "__init__.py", "")
    for n in range(UTILS):
        _write(dest / "shop" / "utils" / f"util_{n:02d}.py", _util(n))
    _write(dest / "shop" / "domains" / "__init__.py", "")
    for domain in domains:
        folder = dest / "shop" / "domains" / domain
        _write(folder / "__init__.py", "")
        for n in range(MODELS):
            _write(folder / f"models_{n:02d}.py", _model(domain, n, rng, domains))
        for n in range(SCHEMAS):
            _write(folder / f"schemas_{n:02d}.py", _schema(domain, n))
        for n in range(REPOSITORIES):
            _write(folder / f"repository_{n:02d}.py", _repository(domain, n))
        for n in range(SERVICES):
            module = newer.get((domain, n))
            _write(folder / f"services_{n:02d}.py", _service(domain, n, rng, domains, module))
            if module:
                _write(folder / f"{module}.py", _newer_syntax(domain, n))
        for n in range(ROUTES):
            _write(folder / f"routes_{n:02d}.py", _route(domain, n))
            routes.append(f"{domain}.routes_{n:02d}")
    for n in range(NEWER_SYNTAX_UNREACHED):  # written, never imported: drafts, experiments
        _write(dest / "shop" / "experimental" / f"draft_{n:02d}.py", _newer_syntax("drafts", n))
    _write(dest / "shop" / "experimental" / "__init__.py", "")
    _write(dest / "shop" / "main.py", _main_module(routes))
    _write(
        dest / "shop" / "__main__.py",
        "import uvicorn\n\n\ndef serve() -> None:\n"
        '    uvicorn.run("shop.main:app", host="0.0.0.0", port=8000)\n\n\n'
        'if __name__ == "__main__":\n    serve()\n',
    )
    _write(dest / "tests" / "__init__.py", "")
    for n in range(TEST_FILES):
        _write(dest / "tests" / f"test_{n:03d}.py", _test(n, domains))
    for n in range(MIGRATIONS):
        _write(
            dest / "migrations" / "versions" / f"{n:04d}_change.py",
            f'revision = "{n:04d}"\ndown_revision = {f"{n - 1:04d}"!r}\n\n\n'
            "def upgrade() -> None:\n    pass\n",
        )
    for n in range(TEMPLATES):
        _write(dest / "shop" / "templates" / f"page_{n:02d}.html", f"<h1>{n}</h1>\n")
    for n in range(STATIC):
        _write(dest / "shop" / "static" / f"style_{n:02d}.css", f".c{n} {{ color: red; }}\n")
    if package != "shop":
        _rename_package(dest, package)
    return sum(1 for path in dest.rglob("*") if path.is_file())


def _rename_package(dest: Path, package: str) -> None:
    (dest / "shop").rename(dest / package)
    for path in dest.rglob("*"):
        if path.suffix in (".py", ".toml") or path.name == "Dockerfile":
            text = path.read_text(encoding="utf-8")
            renamed = text.replace("shop.", f"{package}.").replace('"shop"', f'"{package}"')
            path.write_text(renamed, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--domains", type=int, default=30)
    parser.add_argument("--package", default="app")
    args = parser.parse_args()
    count = write_project(args.dest, args.domains, args.package)
    print(f"{count} files written under {args.dest}")


if __name__ == "__main__":
    main()

"""Discovery reads only what can change its answer: a module that merely mentions the app
or the settings class is decided from its text, never parsed; newer syntax is lowered
from the tokens; equal texts are parsed once; `--help` loads no runner metadata."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen import modules
from bgtasks_gen.discovery import discover, project_index
from bgtasks_gen.modules import ModuleIndex, _lower_tokens, _lower_with_libcst
from tests.conftest import REPO, write_tree

SETTINGS = (
    "from functools import lru_cache\n\n"
    "from pydantic_settings import BaseSettings\n\n\n"
    "class Settings(BaseSettings):\n    REDIS_URL: str = 'redis://localhost'\n\n\n"
    "@lru_cache\ndef get_settings() -> Settings:\n    return Settings()\n"
)
# a module as large projects have hundreds: it names `app` (the package) and the settings
# class (a parameter annotation), and defines nothing discovery looks for
ROUTE = (
    "from fastapi import APIRouter, Depends\n\n"
    "from app.config import Settings, get_settings\n\n"
    "router = APIRouter()\n\n\n"
    "@router.get('/{n}')\n"
    "async def read(settings: Settings = Depends(get_settings)) -> str:\n"
    "    return settings.REDIS_URL\n"
)
# newer syntax, imported by nothing, naming the settings class too
DRAFT = (
    "from app.config import Settings\n\n"
    "type Id = int\n\n\n"
    "def first[T](items: list[T], settings: Settings) -> T:\n"
    "    try:\n        return items[0]\n    except IndexError, KeyError:\n        raise\n"
)


def _project(root: Path, routes: int = 3, services: int = 12) -> Path:
    files = {
        "app/__init__.py": "",
        "app/config.py": SETTINGS,
        "app/routes/__init__.py": "",
        "app/drafts/__init__.py": "",
        "app/drafts/typed.py": DRAFT,
    }
    imports = []
    for n in range(routes):
        files[f"app/routes/r{n}.py"] = ROUTE.replace("{n}", str(n))
        imports.append(f"from app.routes import r{n}\n")
    for n in range(services):
        files[f"app/services/s{n}.py"] = ROUTE.replace("{n}", str(n))
    includes = "".join(f"app.include_router(r{n}.router)\n" for n in range(routes))
    files["app/main.py"] = (
        "from fastapi import FastAPI\n\n" + "".join(imports) + "\napp = FastAPI()\n" + includes
    )
    return write_tree(root, files)


@pytest.fixture
def summarised(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file discovery parses and summarises, in order."""
    seen: list[Path] = []
    real = modules._summarise

    def spy(info: modules.ModuleInfo, tree: ast.Module) -> None:
        seen.append(info.path)
        real(info, tree)

    monkeypatch.setattr(modules, "_summarise", spy)
    return seen


def test_modules_that_only_mention_the_app_or_the_settings_are_never_parsed(
    tmp_path: Path, summarised: list[Path]
) -> None:
    root = _project(tmp_path / "proj").resolve()
    layout = discover(root)
    assert (layout.app.module, layout.app.app_var) == ("app.main", "app")
    assert (layout.settings.module, layout.settings.access_name) == ("app.config", "get_settings")
    read = {path.relative_to(root).as_posix() for path in summarised}
    # each included router's module assigns `router = ...` in its text: not parsed either
    assert read == {"app/main.py", "app/config.py"}
    assert layout.routes_module == "app.routes"


def test_a_router_re_exported_by_a_package_is_followed_to_its_module(
    tmp_path: Path, summarised: list[Path]
) -> None:
    root = _project(tmp_path / "proj", routes=0)
    write_tree(
        root,
        {
            "app/api/__init__.py": "",
            "app/api/v1/__init__.py": "from app.api.v1.items import router as router\n",
            "app/api/v1/items.py": ROUTE.replace("{n}", "items"),
            "app/main.py": "from fastapi import FastAPI\n\nfrom app.api import v1\n\n"
            "app = FastAPI()\napp.include_router(v1.router)\n",
        },
    )
    layout = discover(root.resolve())
    assert layout.routes_module == "app.api.v1"
    read = {path.relative_to(root.resolve()).as_posix() for path in summarised}
    assert {"app/api/v1/__init__.py", "app/api/v1/items.py"} <= read


def test_newer_syntax_nothing_needs_is_not_lowered(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    index = project_index(root)
    discover(root, index=index)
    assert index.lowered == []


def test_a_settings_module_in_newer_syntax_is_lowered_from_its_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: str, path: Path) -> ast.Module:
        raise AssertionError(f"libcst lowered {path}")

    monkeypatch.setattr(modules, "_lower_with_libcst", refuse)
    root = _project(tmp_path / "proj")
    newer = SETTINGS + "\n\ntype Url = str\n\n\ndef pick[T](x: T) -> T:\n    return x\n"
    (root / "app" / "config.py").write_text(newer, encoding="utf-8")
    index = project_index(root)
    layout = discover(root, index=index)
    assert layout.settings.class_name == "Settings"
    assert "REDIS_URL" in layout.settings.fields
    assert [path.name for path in index.lowered] == ["config.py"]


def test_settings_reached_through_aliases_are_still_found(tmp_path: Path) -> None:
    """The text filters keep every way a class or accessor is spelled: an aliased base,
    a subclass in another module, an instance made under an alias."""
    root = write_tree(
        tmp_path / "proj",
        {
            "svc/__init__.py": "",
            "svc/base.py": "from pydantic_settings import BaseSettings as Base\n\n\n"
            "class Common(Base):\n    name: str = 'x'\n",
            "svc/config.py": "from svc.base import Common as Parent\n\n\n"
            "class Settings(Parent):\n    redis_url: str = 'redis://'\n",
            "svc/deps.py": "from svc.config import Settings as Conf\n\nconfig = Conf()\n",
            "svc/main.py": "from fastapi import FastAPI\n\nfrom svc.deps import config\n\n"
            "app = FastAPI(title=config.name)\n",
        },
    )
    layout = discover(root)
    assert (layout.settings.module, layout.settings.class_name) == ("svc.config", "Settings")
    assert (layout.settings.access_module, layout.settings.access_name) == ("svc.deps", "config")
    assert set(layout.settings.fields) == {"name", "redis_url"}


def test_an_app_reexported_in_a_parenthesised_import_is_followed(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "proj",
        {
            "svc/__init__.py": "",
            "svc/application.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "svc/main.py": "from svc.application import (\n    app,\n)\n",
            "Procfile": "web: uvicorn svc.main:app\n",
        },
    )
    layout = discover(root)
    assert layout.app.served == "svc.main:app"


def test_equal_texts_are_parsed_once(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "proj", {"a/one.py": ROUTE, "a/two.py": ROUTE})
    index = ModuleIndex(root)
    one, two = index.load(root / "a/one.py"), index.load(root / "a/two.py")
    assert (one.name, two.name) == ("a.one", "a.two")
    assert len(index.parsed) == 1
    assert index.tree(one) is index.tree(two)


NEWER = [
    DRAFT,
    "class Box[T: (int, str), *Ts, **P](Base[T]):\n    item: T\n",
    "type Pair[K] = tuple[K, K]\nif True:\n    type Y = int\n",
    "def f():\n    try:\n        pass\n    except (A, B):\n        pass\n"
    "    except A, B:  # PEP 758\n        pass\n",
]


@pytest.mark.parametrize("source", NEWER)
def test_token_lowering_reads_as_libcst_lowering(source: str) -> None:
    lowered = _lower_tokens(source)
    assert lowered is not None
    ours = ast.parse(lowered)
    theirs = _lower_with_libcst(source, Path("x.py"))
    assert ast.dump(ours) == ast.dump(theirs)
    # every statement stays on its line
    lines = [(type(n).__name__, n.lineno) for n in ast.walk(ours) if isinstance(n, ast.stmt)]
    assert lines == [
        (type(n).__name__, n.lineno) for n in ast.walk(theirs) if isinstance(n, ast.stmt)
    ]


def test_except_star_without_parentheses_is_kept() -> None:
    """libcst's lowering drops this statement; the token lowering keeps it."""
    lowered = _lower_tokens("try:\n    pass\nexcept* ValueError, TypeError:\n    pass\n")
    assert lowered is not None
    assert isinstance(ast.parse(lowered).body[0], ast.TryStar)


def test_help_loads_no_runner_metadata_nor_heavy_libraries() -> None:
    code = (
        "import sys\nfrom bgtasks_gen.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('importlib.metadata', 'libcst', 'jinja2', 'copier', 'rich')\n"
        "print(','.join(m for m in heavy if m in sys.modules) or 'none', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "none"


def test_runner_names_read_from_the_folders_match_importlib_metadata() -> None:
    from bgtasks_gen.runners import _registry, _scanned_entries, registry

    scanned = _scanned_entries()
    assert scanned is not None
    assert tuple(_registry(scanned).runners) == tuple(registry().runners)

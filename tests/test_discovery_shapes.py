"""Discovery on shapes real projects have: runners set up without the usual names, an app
built in one module and served from another (or in a class method), a console script
serving it, an API sub-app carrying its auth, settings a factory builds, and a source
folder that is not a package (a routes module of the project's own under the router's
name: test_router_name_collision.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bgtasks_gen.discovery import Overrides, discover
from tests.conftest import invoke, write_tree
from tests.e2e.harness import runner_python

H = "from pydantic_settings import BaseSettings, SettingsConfigDict\n"
SETTINGS = H + "\n\nclass Settings(BaseSettings):\n    name: str = 'x'\n\n\nsettings = Settings()\n"
ROUTER = "from fastapi import APIRouter\n\nrouter = APIRouter()\n"
MAIN = (
    "from fastapi import FastAPI\n\nfrom svc.config import settings\n\n"
    "app = FastAPI(title=settings.name)\n"
)
BASE = {"svc/__init__.py": "", "svc/config.py": SETTINGS, "svc/main.py": MAIN}


def _plan(project: Path, runner: str, *extra: str) -> dict:
    code, output = invoke("init", str(project), "--runner", runner, "--dry-run", "--json", *extra)
    assert code == 0, output
    return json.loads(output)


def _changed(report: dict) -> set[str]:
    return {f["path"] for f in report["files"] if f["action"] == "patch"}


# 1. runners already there ------------------------------------------------------------------
RUNNER_SETUPS = [
    (
        "arq",
        "from arq.worker import Worker\n\n\ndef run() -> None:\n    Worker(functions=[]).run()\n",
        5,
    ),
    (
        "arq",
        "from arq import run_worker\n\n\nclass Cfg:\n    functions = []\n\n\nrun_worker(Cfg)\n",
        8,
    ),
    (
        "arq",
        "from arq import create_pool as pool\nfrom arq.connections import RedisSettings\n\n\n"
        "async def connect() -> object:\n    return await pool(RedisSettings(host='x'))\n",
        6,
    ),
    (
        "taskiq",
        "from taskiq_redis import ListQueueBroker\n\nbroker = ListQueueBroker('redis://')\n",
        3,
    ),
    (
        "taskiq",
        "from taskiq_aio_pika import AioPikaBroker\n\nbroker = AioPikaBroker('amqp://')\n",
        3,
    ),
    ("taskiq", "import taskiq\n\nbroker = taskiq.InMemoryBroker()\n", 3),
    ("taskiq", "from taskiq_redis import RedisStreamBroker as B\n\nbroker = B('redis://')\n", 3),
    (
        "taskiq",
        "from taskiq_redis import ListQueueBroker\n\n\nclass Mine(ListQueueBroker):\n    pass\n",
        4,
    ),
    ("celery", "from celery import shared_task\n\n\n@shared_task\ndef f() -> None:\n    pass\n", 4),
    (
        "celery",
        "from celery import current_app\n\n\ndef f() -> None:\n    current_app.send_task('x')\n",
        5,
    ),
    ("celery", "from celery import Celery\n\n\ndef make() -> Celery:\n    return Celery('x')\n", 5),
]


@pytest.mark.parametrize(("runner", "source", "line"), RUNNER_SETUPS)
def test_a_runner_set_up_any_way_is_named_first(
    tmp_path: Path, runner: str, source: str, line: int
) -> None:
    # no settings class at all: the runner is what the project hears about first
    files = {
        "svc/__init__.py": "",
        "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
    }
    project = write_tree(tmp_path, {**files, "svc/work.py": source})
    code, output = invoke("init", str(project), "--runner", runner, "--dry-run")
    assert code == 2, output
    assert f"already has a {runner} setup at svc/work.py:{line}" in output
    # another runner goes beside it, with a note naming it
    other = "builtin"
    notes = "\n".join(_plan(project, other)["notes"])
    assert f"{runner} is already here (svc/work.py)" in notes


def test_a_subclass_of_a_broker_in_another_module_is_a_taskiq_setup(tmp_path: Path) -> None:
    project = write_tree(
        tmp_path,
        {
            **BASE,
            "svc/brokers.py": "from taskiq import InMemoryBroker\n\n\nclass Base(InMemoryBroker):\n"
            "    pass\n",
            "svc/work.py": "from svc.brokers import Base\n\n\nclass Mine(Base):\n    pass\n",
        },
    )
    code, output = invoke("init", str(project), "--runner", "taskiq", "--dry-run")
    assert code == 2 and "already has a taskiq setup at svc/brokers.py:4" in output


@pytest.mark.parametrize("system", ["dramatiq", "rq", "saq", "streaq", "faststream"])
def test_other_task_systems_are_noted(tmp_path: Path, system: str) -> None:
    project = write_tree(tmp_path, {**BASE, "svc/work.py": f"import {system}\n"})
    for runner in ("builtin", "celery"):
        notes = "\n".join(_plan(project, runner)["notes"])
        assert f"{system} is already here (svc/work.py)" in notes


def test_names_that_only_look_like_a_runner_are_not_one(tmp_path: Path) -> None:
    project = write_tree(
        tmp_path,
        {
            **BASE,
            "svc/work.py": "from taskiq import TaskiqDepends\n\n\nclass Worker:\n    pass\n\n\n"
            "def create_pool() -> None:\n    Worker()\n",
        },
    )
    for runner in ("arq", "taskiq", "celery"):
        _plan(project, runner)


# 2. the served app -------------------------------------------------------------------------
APPLICATION = (
    "from fastapi import FastAPI\n\nfrom svc.config import settings\n\n"
    "app = FastAPI(title=settings.name)\n"
)
REEXPORT_INCLUDING = {
    **BASE,
    "svc/application.py": APPLICATION,
    "svc/main.py": "from .application import app\nfrom .routers import items\n\n"
    "app.include_router(items.router)\n",
    "svc/routers/__init__.py": "",
    "svc/routers/items.py": ROUTER,
    "svc/other.py": "from fastapi import FastAPI\n\nother = FastAPI()\n",
    "Dockerfile": 'CMD ["uvicorn", "svc.main:app"]\n',
}
REEXPORT_PLAIN = {
    **REEXPORT_INCLUDING,
    "svc/main.py": "from .application import app\n\n__all__ = ['app']\n",
}
CLASS_METHOD = {
    **BASE,
    "svc/main.py": "from fastapi import FastAPI\n\nfrom svc.config import settings\n\n\n"
    "class Server:\n    def create(self) -> FastAPI:\n"
    "        application = FastAPI(title=settings.name)\n        return application\n\n\n"
    "app = Server().create()\n",
}
MOUNT_REEXPORT = {
    **BASE,
    "svc/apps/__init__.py": "from svc.apps.dash import dashboard_app\n",
    "svc/apps/dash.py": "from fastapi import FastAPI\n\ndashboard_app = FastAPI()\n",
    "svc/web.py": "from fastapi import FastAPI\n\nfrom svc.apps import dashboard_app\n\n"
    "root = FastAPI()\nroot.mount('/dash', dashboard_app)\n",
    "svc/main.py": "",
}
CONSOLE_SCRIPT = {
    **BASE,
    "svc/main.py": "",
    "svc/web.py": "from fastapi import FastAPI\n\nweb = FastAPI()\n",
    "svc/admin.py": "from fastapi import FastAPI\n\nadmin = FastAPI()\n",
    "svc/cli.py": "import typer\nimport uvicorn\n\ncli = typer.Typer()\n\n\n@cli.command()\n"
    "def serve(target: str = typer.Option('svc.web:web')) -> None:\n    uvicorn.run(target)\n",
}
CLICK_SCRIPT = {
    **CONSOLE_SCRIPT,
    "svc/cli.py": "import click\nimport uvicorn\n\n\n@click.command()\n"
    "@click.option('--app-target', default='svc.web:web')\n"
    "def serve(app_target: str) -> None:\n    uvicorn.run(app_target)\n",
}

SERVED_SHAPES = [
    # (files, served, include goes into, override)
    (REEXPORT_INCLUDING, "svc.main:app", "svc/main.py", "svc.main:app"),
    (REEXPORT_PLAIN, "svc.main:app", "svc/application.py", "svc.main:app"),
    (CLASS_METHOD, "svc.main:app", "svc/main.py", "svc.main:app"),
    (MOUNT_REEXPORT, "svc.web:root", "svc/web.py", "svc.web:root"),
    (CONSOLE_SCRIPT, "svc.web:web", "svc/web.py", "svc.web:web"),
    (CLICK_SCRIPT, "svc.web:web", "svc/web.py", "svc.web:web"),
]


@pytest.mark.parametrize(
    ("files", "served", "include_file", "override"),
    SERVED_SHAPES,
    ids=[
        "reexport-including",
        "reexport-plain",
        "class-method",
        "mount-reexport",
        "typer",
        "click",
    ],
)
def test_the_served_app_is_found_and_the_include_lands_where_it_belongs(
    tmp_path: Path, files: dict[str, str], served: str, include_file: str, override: str
) -> None:
    project = write_tree(tmp_path, files)
    for given in (None, override):
        layout = discover(project, Overrides(app_module=given))
        assert layout.app.served == served
        assert layout.app.path == project / include_file
        assert not layout.app.mounted_in
        extra = ("--app-module", given) if given else ()
        report = _plan(project, "celery", *extra)
        assert include_file in _changed(report)
        assert {"svc/main.py", "svc/application.py", "svc/web.py"} & _changed(report) == {
            include_file
        }


def test_the_app_found_by_where_it_is_served(tmp_path: Path) -> None:
    layout = discover(write_tree(tmp_path / "a", REEXPORT_PLAIN))
    assert layout.app.created_module == "svc.application"
    assert "served by Dockerfile CMD" in layout.app.found_by
    assert "svc/application.py:5" in layout.app.found_by
    layout = discover(write_tree(tmp_path / "b", CONSOLE_SCRIPT))
    assert "uvicorn.run in svc/cli.py (the default of serve's target)" in layout.app.found_by
    layout = discover(write_tree(tmp_path / "c", CLASS_METHOD))
    assert (layout.app.created_var, layout.app.app_var, layout.app.factory) == (
        "application",
        "app",
        None,
    )


# 3. an API sub-app carrying its auth ------------------------------------------------------
MOUNTED_API = {
    **BASE,
    "svc/auth.py": "def auth() -> None:\n    pass\n",
    "svc/routers/__init__.py": "",
    **{f"svc/routers/{name}.py": ROUTER for name in ("a", "b", "health")},
    "svc/main.py": "from fastapi import Depends, FastAPI\n\nfrom svc.auth import auth\n"
    "from svc.config import settings\nfrom svc.routers import a, b, health\n\n"
    "api = FastAPI(dependencies=[Depends(auth)])\napi.include_router(a.router)\n"
    "api.include_router(b.router)\n\n"
    "app = FastAPI(title=settings.name)\napp.include_router(health.router)\n"
    'app.mount("/api/v1", api)\n',
}


def test_the_router_goes_on_the_api_sub_app_even_beside_a_health_router(tmp_path: Path) -> None:
    project = write_tree(tmp_path, MOUNTED_API)
    layout = discover(project)
    assert (layout.app.app_var, layout.app.mounted_in) == ("api", "svc.main:app")
    assert layout.app.served == "svc.main:app"
    report = _plan(project, "celery")
    assert "sub-app" in "\n".join(report["notes"])
    code, _ = invoke("init", str(project), "--runner", "celery")
    assert code == 0
    assert "api.include_router(tasks_router)" in (project / "svc/main.py").read_text()


# 4. settings -------------------------------------------------------------------------------
FACTORY_BUILDS = {
    **BASE,
    "svc/config.py": H + "\n\nclass Bootstrap(BaseSettings):\n    env: str = 'dev'\n\n\n"
    "bootstrap = Bootstrap()\n\n\nclass AppSettings(BaseSettings):\n    name: str = 'x'\n\n\n"
    "class ProdSettings(AppSettings):\n    debug: bool = False\n\n\n"
    "class DevSettings(AppSettings):\n    debug: bool = True\n\n\n"
    "def get_settings() -> AppSettings:\n"
    "    return ProdSettings() if bootstrap.env == 'prod' else DevSettings()\n",
    "svc/main.py": "from fastapi import FastAPI\n\n"
    "from svc.config import bootstrap, get_settings\n\n"
    "app = FastAPI(title=get_settings().name, debug=bootstrap.env == 'dev')\n",
}
FACTORY_BRANCHES = {
    **FACTORY_BUILDS,
    "svc/config.py": FACTORY_BUILDS["svc/config.py"].replace(
        "def get_settings() -> AppSettings:\n"
        "    return ProdSettings() if bootstrap.env == 'prod' else DevSettings()\n",
        "def get_settings():  # type: ignore[no-untyped-def]\n    if bootstrap.env == 'prod':\n"
        "        return ProdSettings()\n    return DevSettings()\n",
    ),
}
AUTH_SETTINGS = {
    **BASE,
    "svc/auth.py": H + "\n\nclass AuthSettings(BaseSettings):\n"
    "    model_config = SettingsConfigDict(env_prefix='AUTH_')\n    secret: str = 'x'\n\n\n"
    "auth_settings = AuthSettings()\n\n\ndef verify(token: str) -> bool:\n"
    "    return token == auth_settings.secret\n",
    "svc/db.py": "from svc.config import settings\n\nURL = settings.name\n",
    "svc/main.py": "from fastapi import FastAPI\n\nfrom svc import db\n"
    "from svc.auth import auth_settings\n\n"
    "app = FastAPI(title=auth_settings.secret + db.URL)\n",
}
ENVIRONMENTS = {
    **BASE,
    "svc/config.py": "import os\n\n"
    + H
    + "\n\nclass Base(BaseSettings):\n    name: str = 'x'\n\n\n"
    "class Dev(Base):\n    debug: bool = True\n\n\nclass Prod(Base):\n    debug: bool = False\n\n\n"
    "settings = {'dev': Dev, 'prod': Prod}[os.getenv('ENV', 'dev')]()\n",
}


@pytest.mark.parametrize(
    ("files", "expected", "access", "found_by"),
    [
        (FACTORY_BUILDS, "AppSettings", "get_settings", "builds ProdSettings, DevSettings"),
        (FACTORY_BRANCHES, "AppSettings", "get_settings", "builds ProdSettings, DevSettings"),
        (AUTH_SETTINGS, "Settings", "settings", "module-level instance"),
        (ENVIRONMENTS, "Base", "settings", "one of Dev, Prod, chosen at run time"),
    ],
    ids=["factory-builds", "factory-branches", "subsystem-settings", "environments"],
)
def test_the_settings_the_app_runs_with(
    tmp_path: Path, files: dict[str, str], expected: str, access: str, found_by: str
) -> None:
    project = write_tree(tmp_path, files)
    settings = discover(project).settings
    assert (settings.class_name, settings.access_name) == (expected, access)
    assert found_by in settings.found_by
    assert "svc/config.py" in _changed(_plan(project, "celery"))


# 5. a source folder that is not a package --------------------------------------------------
HYPHENATED = {
    "pyproject.toml": "[project]\nname = 'x'\nversion = '0'\ndependencies = ['fastapi']\n",
    "my-service/main.py": "from fastapi import FastAPI\n\nfrom config import settings\n\n"
    "app = FastAPI(title=settings.name)\n",
    "my-service/config.py": SETTINGS,
    "Dockerfile": (
        'FROM python:3.12\nWORKDIR /app/my-service\nCOPY . /app\nCMD ["uvicorn", "main:app"]\n'
    ),
}


def test_a_hyphenated_source_folder_is_the_import_root(tmp_path: Path) -> None:
    project = write_tree(tmp_path, HYPHENATED)
    layout = discover(project)
    assert layout.source_root == project / "my-service"
    assert (layout.app.served, layout.tasks_module) == ("main:app", "tasks")
    report = _plan(project, "celery")
    assert {"my-service/main.py", "my-service/config.py", "pyproject.toml"} <= _changed(report)
    created = {f["path"] for f in report["files"] if f["action"] == "create"}
    assert "my-service/tasks/celery_app.py" in created
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 0, output
    assert "celery" in (project / "pyproject.toml").read_text()
    assert "--app-dir my-service" in (project / "Procfile").read_text()


# a plain folder with a name an import could spell: put on sys.path by how the project
# runs (`cd backend && uvicorn main:app`), or evidently so (its modules import each other
# by top-level names); with neither, it stays part of the dotted name
PLAIN_FOLDER = {
    "pyproject.toml": "[project]\nname = 'x'\nversion = '0'\ndependencies = ['fastapi']\n",
    "backend/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
    "backend/config.py": SETTINGS,
}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"Makefile": "run:\n\tcd backend && uvicorn main:app --reload\n"}, "main:app"),
        ({"Procfile": "web: uvicorn main:app --app-dir backend\n"}, "main:app"),
        (
            {
                "backend/main.py": "from fastapi import FastAPI\n\nfrom config import settings\n"
                "\napp = FastAPI(title=settings.name)\n"
            },
            "main:app",
        ),
        (
            {
                "Dockerfile": (
                    'FROM python:3.12\nWORKDIR /backend\nCMD ["uvicorn", "backend.main:app"]\n'
                )
            },
            "backend.main:app",
        ),
        ({}, "backend.main:app"),
    ],
    ids=[
        "cd-in-makefile",
        "app-dir-in-procfile",
        "sibling-imports",
        "workdir-is-no-evidence",
        "no-evidence",
    ],
)
def test_a_plain_folder_the_project_runs_from_is_the_import_root(
    tmp_path: Path, extra: dict[str, str], expected: str
) -> None:
    project = write_tree(tmp_path, {**PLAIN_FOLDER, **extra})
    layout = discover(project)
    assert layout.app.served == expected
    top_level = expected == "main:app"
    assert layout.source_root == (project / "backend" if top_level else project)
    assert layout.tasks_module == ("tasks" if top_level else "backend.tasks")
    if top_level:
        code, output = invoke("init", str(project), "--runner", "arq", "--no-verify")
        assert code == 0, output
        main = (project / "backend/main.py").read_text()
        assert "from backend." not in main, main  # imports as the app is run
        assert (project / "backend/tasks/arq_worker.py").is_file()


# the patched apps import, in the arq environment ------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("files", "served", "folder"),
    [
        (REEXPORT_INCLUDING, "svc.main:app", ""),
        (CLASS_METHOD, "svc.main:app", ""),
        (HYPHENATED, "main:app", "my-service"),
    ],
    ids=["reexport", "class-method", "hyphenated"],
)
def test_the_patched_app_imports_with_the_new_routes(
    tmp_path: Path, files: dict[str, str], served: str, folder: str
) -> None:
    project = write_tree(tmp_path / "project", files)
    code, output = invoke("init", str(project), "--runner", "arq", "--no-deps")
    assert code == 0, output
    source = project / folder
    script = (
        "import importlib, sys\nmodule, _, attr = sys.argv[1].partition(':')\n"
        "app = getattr(importlib.import_module(module), attr)\n"
        "print(sorted(app.openapi()['paths']))\n"
    )
    result = subprocess.run(
        [str(runner_python("arq")), "-c", script, served],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "/tasks/process-data" in result.stdout

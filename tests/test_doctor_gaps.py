"""`bgtasks doctor` on what it used to pass or misread: an empty API token (every task
request 401), schedules counted while the worker does not import, and a package missing
from the environment sent to the environment variables instead of an install.

Real scaffolds of the layered example, run by the real doctor in the arq environment
(and an empty virtualenv: the project not installed at all).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtasks_gen.install_hint import distribution_for, install_fix, missing_module
from bgtasks_gen.nextsteps import MAKE_TOKEN
from bgtasks_gen.project_env import Interpreter
from tests.conftest import write_tree
from tests.e2e.harness import EXAMPLES, SmtpSink, redis_server, runner_python, scaffold, smtp_sink
from tests.test_doctor import clean_environment, doctor_json, edit, failed, passed

TOKEN_ENV = "BGTASKS_API_TOKEN"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("doctor-gaps")


@pytest.fixture(scope="module")
def arq_project(workdir: Path) -> Path:
    return scaffold("layered", workdir / "arq", "--runner", "arq")


@pytest.fixture(scope="module")
def arq_python() -> Path:
    return runner_python("arq")


@pytest.fixture(scope="module")
def services(workdir: Path) -> Iterator[tuple[str, SmtpSink]]:
    with redis_server(workdir) as url, smtp_sink() as sink:
        yield url, sink


def env_for(services: tuple[str, SmtpSink], **values: str) -> dict[str, str]:
    """Every service answering; no API token unless given. BGTASKS_* of this process
    are dropped, so a token exported here cannot hide the failure."""
    url, sink = services
    base = clean_environment(
        REDIS_URL=f"{url}/0", SMTP_HOST=sink.host, SMTP_PORT=str(sink.port), **values
    )
    kept = {key: value for key, value in base.items() if not key.startswith("BGTASKS_")}
    return {**kept, **{k: v for k, v in values.items() if k.startswith("BGTASKS_")}}


def copy_of(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest / project.name)
    return dest / project.name


# -- the API token ---------------------------------------------------------------------


def test_an_empty_api_token_fails_with_how_to_make_one(
    arq_project: Path, arq_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    code, checks = doctor_json(arq_project, arq_python, env_for(services))
    assert code == 1, checks
    check = failed(checks, "api token")
    assert check["detail"] == f"{TOKEN_ENV} is empty: every request to the task routes is " + (
        "refused (401)"
    )
    assert MAKE_TOKEN in check["fix"], check
    assert f"{TOKEN_ENV}=<token> in {arq_project / '.env'}" in check["fix"], check
    passed(checks, "settings", "worker import", "app import")  # only the token is wrong

    # set in the environment, or in .env: passes, and the token never reaches the output
    code, checks = doctor_json(arq_project, arq_python, env_for(services, **{TOKEN_ENV: "t0k"}))
    assert code == 0, checks
    assert checks["api token"]["detail"] == f"{TOKEN_ENV} is set"
    project = copy_of(arq_project, tmp_path)
    (project / ".env").write_text(f"{TOKEN_ENV}=from-dotenv-token\n")
    code, checks = doctor_json(project, arq_python, env_for(services))
    assert code == 0, checks
    assert "from-dotenv-token" not in str(checks)

    # anonymous access switched on for local development: nothing is refused
    anonymous = env_for(services, BGTASKS_ALLOW_ANONYMOUS="true")
    code, checks = doctor_json(arq_project, arq_python, anonymous)
    assert code == 0, checks
    assert "BGTASKS_ALLOW_ANONYMOUS is on" in checks["api token"]["detail"]

    # anything but true or false stops the app: said, with the two values
    code, checks = doctor_json(
        arq_project, arq_python, env_for(services, BGTASKS_ALLOW_ANONYMOUS="yes")
    )
    assert code == 1, checks
    assert checks["api token"]["detail"] == (
        "BGTASKS_ALLOW_ANONYMOUS is 'yes': the app refuses to start with it"
    )
    assert checks["api token"]["fix"] == "set BGTASKS_ALLOW_ANONYMOUS to true or false"


AUTH_DEPENDENCY = '''

def require_user() -> None:
    """The project's own auth (a stand-in)."""
'''


def test_the_apps_own_auth_on_the_include_needs_no_token(
    arq_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    main = project / "app/main.py"
    edit(main, "from fastapi import FastAPI", "from fastapi import Depends, FastAPI")
    edit(main, "\napp = FastAPI(", AUTH_DEPENDENCY + "\n\napp = FastAPI(")
    edit(
        main,
        "app.include_router(health.router)",
        "app.include_router(health.router, dependencies=[Depends(require_user)])",
    )
    edit(
        main,
        "prefix=settings.API_V1_PREFIX)",
        "prefix=settings.API_V1_PREFIX, dependencies=[Depends(require_user)])",
    )
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "arq"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    code, checks = doctor_json(project, arq_python, env_for(services))
    assert code == 0, checks
    detail = checks["api token"]["detail"]
    assert "dependencies=[Depends(require_user)]" in detail, detail


# -- schedules of a worker that does not import -------------------------------------------


def test_schedules_are_not_counted_when_the_worker_does_not_import(
    arq_project: Path, arq_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    code, checks = doctor_json(arq_project, arq_python, env_for(services, **{TOKEN_ENV: "t"}))
    assert "entries" in checks["schedules"]["detail"], "imports: the entries are counted"

    project = copy_of(arq_project, tmp_path)
    worker = project / "app/tasks/arq_worker.py"
    worker.write_text(worker.read_text() + "\nraise RuntimeError('worker broken at import')\n")
    code, checks = doctor_json(project, arq_python, env_for(services, **{TOKEN_ENV: "t"}))
    assert code == 1, checks
    assert "worker broken at import" in failed(checks, "worker import")["detail"]
    schedules = checks["schedules"]
    assert schedules["status"] == "skip", schedules
    assert schedules["detail"] == (
        "not read: app.tasks.arq_worker does not import (see worker import)"
    )
    assert "entries" not in schedules["detail"]


# -- a package missing from the environment -----------------------------------------------


@pytest.fixture(scope="module")
def empty_python(workdir: Path) -> Path:
    """A virtualenv with nothing installed: the project's packages all missing."""
    folder = workdir / "empty-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120
    )
    return folder / "bin/python"


def test_a_missing_package_gets_the_projects_install_command(
    arq_project: Path, empty_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    code, checks = doctor_json(arq_project, empty_python, env_for(services))
    assert code == 1
    settings = failed(checks, "settings")
    assert "No module named 'pydantic'" in settings["detail"], settings
    fix = settings["fix"]
    assert fix.startswith(f"{empty_python} -m pip install -e . (in {arq_project})"), fix
    assert "pydantic comes with its dependencies" in fix, fix
    assert "environment or .env" not in fix
    worker = failed(checks, "worker import")
    assert "No module named 'arq'" in worker["detail"]
    assert worker["fix"].startswith(f"{empty_python} -m pip install -e ."), worker
    assert "arq is one of its dependencies" in worker["fix"], worker
    app = failed(checks, "app import")
    assert "fastapi is one of its dependencies" in app["fix"], app

    # a uv project: the install step init prints for it
    project = copy_of(arq_project, tmp_path)
    (project / "uv.lock").write_text("version = 1\n")
    code, checks = doctor_json(project, empty_python, env_for(services))
    assert failed(checks, "settings")["fix"].startswith(f"uv sync (in {project})")


def test_a_module_the_project_does_not_declare_is_added(
    arq_project: Path, arq_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    project = copy_of(arq_project, tmp_path)
    config = project / "app/core/config.py"
    config.write_text("import yaml  # noqa: F401\n" + config.read_text())
    code, checks = doctor_json(project, arq_python, env_for(services, **{TOKEN_ENV: "t"}))
    fix = failed(checks, "settings")["fix"]
    assert fix.startswith(f"{arq_python} -m pip install PyYAML: the code imports yaml"), fix
    assert "does not declare" in fix


# -- the fix, for each tooling (no interpreter run) -------------------------------------------

PYPROJECT = """[project]
name = "shop"
version = "0"
dependencies = ["fastapi>=0.115", "PyYAML>=6"]
"""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "/venv/bin/python -m pip install -e . (in "),
        ({"uv.lock": ""}, "uv sync (in "),
        ({"poetry.lock": ""}, "poetry install (in "),
    ],
)
def test_the_install_fix_follows_the_projects_tooling(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    write_tree(tmp_path, {"pyproject.toml": PYPROJECT, "app/__init__.py": "", **files})
    python = Interpreter(Path("/venv/bin/python"), "--python")
    error = "/x/app/config.py:1: ModuleNotFoundError: No module named 'yaml'"
    fix = install_fix(tmp_path, tmp_path, python, error)
    assert fix is not None and fix.startswith(expected), fix
    assert "PyYAML is one of its dependencies" in fix, fix
    # not a package: a module of the project itself, or another error
    own = "ModuleNotFoundError: No module named 'app.settings'"
    assert install_fix(tmp_path, tmp_path, python, own) is None
    assert install_fix(tmp_path, tmp_path, python, "ValueError: REDIS_URL: bad") is None


def test_module_names_map_to_their_packages() -> None:
    assert missing_module("a.py:3: ModuleNotFoundError: No module named 'jose.jwt'") == "jose"
    assert missing_module("ImportError: cannot import name 'x'") is None
    assert distribution_for("yaml") == "PyYAML"
    assert distribution_for("pydantic_settings") == "pydantic-settings"

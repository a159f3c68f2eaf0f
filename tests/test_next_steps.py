"""What `init` prints after writing: the steps in order for the project's tooling, the
.env.example it writes, and the scaffold's test packages put into the project's group."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from bgtasks_gen.deps import plan_test_dependencies
from tests.conftest import invoke, write_tree

MAIN = """from fastapi import FastAPI

from app.config import settings

app = FastAPI(debug=settings.debug)
"""
PREFIXED_SETTINGS = """from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="shop_", env_file=".env")

    debug: bool = False


settings = Settings()
"""
PROJECT = '[project]\nname = "shop"\nversion = "0"\ndependencies = ["fastapi>=0.115"]\n'
# the example call's headers and body, after its URL
CURL = (
    '-H "Authorization: Bearer <token>" -H "Content-Type: application/json" '
    """-d '{"to": "you@example.com", "subject": "Hello", "body": "It works"}'"""
)


def _project(root: Path, pyproject: str = PROJECT, **extra: str) -> Path:
    return write_tree(
        root,
        {
            "app/__init__.py": "",
            "app/config.py": PREFIXED_SETTINGS,
            "app/main.py": MAIN,
            "pyproject.toml": pyproject,
            **extra,
        },
    )


def _steps(root: Path, runner: str = "celery") -> list[str]:
    code, output = invoke("init", str(root), "--runner", runner, "--json")
    assert code == 0, output
    steps: list[str] = json.loads(output)["next_steps"]
    return [step.partition("  # ")[0] for step in steps]


def test_pip_project_steps_in_order(tmp_path: Path) -> None:
    steps = _steps(_project(tmp_path))
    assert steps == [
        "pip install -e .",
        'pip install "pytest>=8" "httpx>=0.27"',
        "cp .env.example .env",
        'python3 -c "import secrets; print(secrets.token_urlsafe(32))"',
        "bgtasks dev",
        "celery -A app.tasks.celery_app worker --loglevel=info",
        "celery -A app.tasks.celery_app beat --loglevel=info",
        "uvicorn app.main:app --reload",
        'pip install flower && FLOWER_BASIC_AUTH="admin:<a-long-random-password>" '
        "celery -A app.tasks.celery_app flower",
        f"curl -X POST http://127.0.0.1:8000/tasks/send-email {CURL}",
        "pytest tests/test_bgtasks_celery.py tests/test_bgtasks_celery_publish.py",
    ]


def test_uv_project_runs_everything_through_uv(tmp_path: Path) -> None:
    pyproject = PROJECT + '\n[dependency-groups]\ndev = ["ruff"]\n'
    steps = _steps(_project(tmp_path, pyproject, **{"uv.lock": "version = 1\n"}), "arq")
    assert steps == [
        "uv sync",  # relocks, and installs the dev group the test packages went into
        "cp .env.example .env",
        'python3 -c "import secrets; print(secrets.token_urlsafe(32))"',
        "bgtasks dev",
        "uv run arq app.tasks.arq_worker.WorkerSettings",
        "uv run uvicorn app.main:app --reload",
        f"curl -X POST http://127.0.0.1:8000/tasks/send-email {CURL}",
        "uv run pytest tests/test_bgtasks_arq.py",
    ]


def test_poetry_project_locks_then_installs(tmp_path: Path) -> None:
    pyproject = (
        '[tool.poetry]\nname = "shop"\nversion = "0"\n\n'
        '[tool.poetry.dependencies]\npython = "^3.11"\nfastapi = ">=0.115"\n\n'
        '[tool.poetry.group.dev.dependencies]\nruff = "*"\n'
    )
    steps = _steps(_project(tmp_path, pyproject), "builtin")
    assert steps == [
        "poetry lock",
        "poetry install",
        "cp .env.example .env",
        'python3 -c "import secrets; print(secrets.token_urlsafe(32))"',
        "bgtasks dev",
        "poetry run uvicorn app.main:app --reload",
        f"curl -X POST http://127.0.0.1:8000/notifications/send-email {CURL}",
        "poetry run pytest tests/test_bgtasks_builtin.py",
    ]
    group = tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["poetry"]["group"]
    assert group["dev"]["dependencies"] == {"ruff": "*", "pytest": ">=8", "httpx": ">=0.27"}


def test_long_running_steps_are_marked(tmp_path: Path) -> None:
    code, output = invoke("init", str(_project(tmp_path)), "--runner", "builtin")
    assert code == 0
    lines = output.split("Next steps", 1)[1].splitlines()[1:]
    marked = [line for line in lines if "runs until Ctrl-C" in line]
    assert [line.split("  # ")[0].strip() for line in marked] == [
        "$ bgtasks dev",
        "$ uvicorn app.main:app --reload",
    ]


def test_env_example_names_follow_the_env_prefix(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert invoke("init", str(root), "--runner", "celery")[0] == 0
    text = (root / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert values == {
        "SHOP_CELERY_BROKER_URL": "redis://localhost:6379/0",
        "SHOP_CELERY_RESULT_BACKEND": "redis://localhost:6379/1",
        "SHOP_SMTP_HOST": "127.0.0.1",
        "SHOP_SMTP_PORT": "1025",
        "SHOP_SMTP_USER": "",
        "SHOP_SMTP_PASSWORD": "",
        "SHOP_SMTP_STARTTLS": "false",
        "SHOP_SMTP_TIMEOUT": "10.0",
        "SHOP_EMAIL_FROM": "noreply@example.com",
        "SHOP_BGTASKS_API_TOKEN": "",
        "SHOP_BGTASKS_ALLOW_ANONYMOUS": "false",
        "SHOP_BGTASKS_FAILED_MAX_ENTRIES": "10000",
        "SHOP_BGTASKS_FAILED_RETENTION_SECONDS": "604800",
        "SHOP_BGTASKS_RESULT_RETENTION_SECONDS": "86400",
    }
    # a run file: once written it is the user's
    (root / ".env.example").write_text(text + "MINE=1\n")
    code, output = invoke("init", str(root), "--runner", "celery", "--json")
    files = {f["path"]: f["action"] for f in json.loads(output)["files"]}
    assert code == 0 and files[".env.example"] == "kept"


def test_an_existing_env_example_gets_the_missing_variables(tmp_path: Path) -> None:
    root = _project(tmp_path, **{".env.example": "# mine\nSHOP_SMTP_HOST=mail.internal\n"})
    assert invoke("init", str(root), "--runner", "builtin")[0] == 0
    text = (root / ".env.example").read_text()
    assert text.startswith("# mine\nSHOP_SMTP_HOST=mail.internal\n")
    assert text.count("SHOP_SMTP_HOST=") == 1 and "SHOP_SMTP_PORT=1025\n" in text


def test_existing_env_is_not_overwritten_by_a_step(tmp_path: Path) -> None:
    steps = _steps(_project(tmp_path, **{".env": "SHOP_DEBUG=true\n"}), "builtin")
    assert not any(".env" in step for step in steps)


GROUP_LAYOUTS = {
    "pep735": (
        PROJECT + '\n[dependency-groups]\ndev = [\n    "ruff",  # lint\n]\n',
        "group:dev",
        lambda data: data["dependency-groups"]["dev"],
        ["ruff", "pytest>=8", "httpx>=0.27"],
    ),
    "extra": (
        PROJECT + '\n[project.optional-dependencies]\ntest = ["pytest>=7"]\n',
        "extra:test",
        lambda data: data["project"]["optional-dependencies"]["test"],
        ["pytest>=7", "httpx>=0.27"],
    ),
    "poetry": (
        '[tool.poetry]\nname = "s"\n\n[tool.poetry.dependencies]\npython = "^3.11"\n\n'
        '[tool.poetry.group.dev.dependencies]\nruff = "*"\n\n[build-system]\nrequires = []\n',
        "poetry:dev",
        lambda data: data["tool"]["poetry"]["group"]["dev"]["dependencies"],
        {"ruff": "*", "pytest": ">=8", "httpx": ">=0.27"},
    ),
}


@pytest.mark.parametrize("layout", sorted(GROUP_LAYOUTS))
def test_test_packages_go_into_the_group(tmp_path: Path, layout: str) -> None:
    text, group, read, expected = GROUP_LAYOUTS[layout]
    write_tree(tmp_path, {"pyproject.toml": text})
    edit = plan_test_dependencies(tmp_path, {})
    assert edit.group == group and edit.path == "pyproject.toml"
    assert read(tomllib.loads(edit.new)) == expected
    assert edit.new.startswith(text.split("\n[", 1)[0])  # what came before is untouched
    if layout == "pep735":
        assert '    "ruff",  # lint\n    "pytest>=8",\n' in edit.new


def test_test_packages_go_into_requirements_dev_with_its_newlines(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements-dev.txt": "# tools\r\nruff\r\nhttpx"})
    edit = plan_test_dependencies(tmp_path, {})
    assert edit.group == "file:requirements-dev.txt"
    assert edit.new == "# tools\r\nruff\r\nhttpx\r\npytest>=8\r\n"
    assert edit.added == ["pytest>=8"]


def test_without_a_group_the_packages_are_printed(tmp_path: Path) -> None:
    write_tree(tmp_path, {"pyproject.toml": PROJECT})
    edit = plan_test_dependencies(tmp_path, {})
    assert edit.path is None and edit.group is None
    assert edit.added == ["pytest>=8", "httpx>=0.27"]


def test_requirements_dev_project_installs_it(tmp_path: Path) -> None:
    root = _project(tmp_path, **{"requirements-dev.txt": "ruff\n"})
    steps = _steps(root, "builtin")
    assert steps[0] == "pip install -e . -r requirements-dev.txt"
    assert (root / "requirements-dev.txt").read_text() == "ruff\npytest>=8\nhttpx>=0.27\n"


def test_the_token_step_names_the_variable_the_settings_read(tmp_path: Path) -> None:
    code, output = invoke("init", str(_project(tmp_path)), "--runner", "arq", "--json")
    assert code == 0, output
    steps: list[str] = json.loads(output)["next_steps"]
    (token,) = [step for step in steps if "token_urlsafe" in step]
    # the env_prefix of the project's settings class is part of the name
    assert "SHOP_BGTASKS_API_TOKEN=<token>" in token
    assert "SHOP_BGTASKS_ALLOW_ANONYMOUS=true" in token
    assert "authorize_task_access in app.api.arq_tasks" in token
    env = (tmp_path / ".env.example").read_text()
    assert "SHOP_BGTASKS_API_TOKEN=\n" in env and "SHOP_BGTASKS_ALLOW_ANONYMOUS=false\n" in env


PROJECT_AUTH_MAIN = """from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException

from app.config import settings


def current_user(authorization: str = Header("")) -> str:
    if not authorization:
        raise HTTPException(status_code=401)
    return authorization


items = APIRouter()
app = FastAPI(debug=settings.debug)
app.include_router(items, prefix="/v1", dependencies=[Depends(current_user)])
"""


def test_no_token_step_when_the_projects_own_auth_guards_the_router(tmp_path: Path) -> None:
    root = _project(tmp_path, **{"app/main.py": PROJECT_AUTH_MAIN})
    steps = _steps(root, "builtin")
    assert not [step for step in steps if "token_urlsafe" in step or "curl" in step]
    auth = (root / "app" / "tasks" / "auth.py").read_text()
    assert "dependencies=[Depends(current_user)]" in auth
    assert "return client_identity(request)" in auth


@pytest.mark.parametrize(
    ("venv", "said"),
    [
        (None, "python3 -m venv .venv && . .venv/bin/activate first"),
        ("venv", "into the project's venv (activate it first: . venv/bin/activate)"),
    ],
)
def test_the_install_step_says_which_environment(
    tmp_path: Path, venv: str | None, said: str
) -> None:
    root = _project(tmp_path)
    if venv:
        write_tree(root, {f"{venv}/pyvenv.cfg": "home = /usr/bin\n"})
    code, output = invoke("init", str(root), "--runner", "arq", "--json")
    assert code == 0, output
    install = json.loads(output)["next_steps"][0]
    assert install.startswith("pip install -e .  # ") and said in install, install

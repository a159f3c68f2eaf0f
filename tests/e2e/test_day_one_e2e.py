"""Day one on a project shaped like the most common FastAPI template: its routers are
included under `prefix=settings.API_V1_STR`, its Settings has optional SMTP fields
(`SMTP_HOST: str | None = None`, `EMAILS_FROM_EMAIL: EmailStr | None = None`) and its
routes take a current-user dependency of their own.

Per runner, the commands must agree with `init`: `check` passes right after it, the
printed token and `curl` work as printed (under the prefix), the scaffold's own tests
pass under the prefix, and so do they after `add-task`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_tree
from tests.e2e.harness import bgtasks, redis_server, runner_python, running, serve_app

pytestmark = pytest.mark.e2e

TEMPLATE_SHAPED = {
    "pyproject.toml": (
        '[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = [\n    "fastapi[standard]>=0.115,<1.0.0",\n'
        '    "pydantic-settings>=2.2.1,<3.0.0",\n    "email-validator>=2.1.0,<3.0.0",\n]\n'
    ),
    "app/__init__.py": "",
    "app/core/__init__.py": "",
    "app/core/config.py": (
        "from pydantic import EmailStr\n"
        "from pydantic_settings import BaseSettings, SettingsConfigDict\n\n\n"
        "class Settings(BaseSettings):\n"
        '    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, '
        'extra="ignore")\n'
        '    API_V1_STR: str = "/api/v1"\n'
        '    PROJECT_NAME: str = "demo"\n'
        "    SMTP_TLS: bool = True\n"
        "    SMTP_SSL: bool = False\n"
        "    SMTP_PORT: int = 587\n"
        "    SMTP_HOST: str | None = None\n"
        "    SMTP_USER: str | None = None\n"
        "    SMTP_PASSWORD: str | None = None\n"
        "    EMAILS_FROM_EMAIL: EmailStr | None = None\n"
        "    EMAILS_FROM_NAME: str | None = None\n\n\n"
        "settings = Settings()\n"
    ),
    "app/api/__init__.py": "",
    "app/api/deps.py": (
        "from typing import Annotated\n\n"
        "from fastapi import Depends, Header, HTTPException\n\n\n"
        'def get_current_user(authorization: Annotated[str, Header()] = "") -> str:\n'
        "    if not authorization:\n"
        "        raise HTTPException(status_code=401)\n"
        "    return authorization\n\n\n"
        "CurrentUser = Annotated[str, Depends(get_current_user)]\n"
    ),
    "app/api/routes/__init__.py": "",
    "app/api/routes/items.py": (
        "from fastapi import APIRouter\n\nfrom app.api.deps import CurrentUser\n\n"
        'router = APIRouter(prefix="/items", tags=["items"])\n\n\n'
        '@router.get("/")\n'
        "def read_items(current_user: CurrentUser) -> list[str]:\n"
        "    return [current_user]\n"
    ),
    "app/api/main.py": (
        "from fastapi import APIRouter\n\nfrom app.api.routes import items\n\n"
        "api_router = APIRouter()\napi_router.include_router(items.router)\n"
    ),
    "app/main.py": (
        "from fastapi import FastAPI\n\n"
        "from app.api.main import api_router\n"
        "from app.core.config import settings\n\n"
        "app = FastAPI(\n"
        "    title=settings.PROJECT_NAME,\n"
        '    openapi_url=f"{settings.API_V1_STR}/openapi.json",\n'
        ")\n\n"
        "app.include_router(api_router, prefix=settings.API_V1_STR)\n"
    ),
}

# the environment each runner's web app and tests run in (builtin needs FastAPI only)
VENV = {"builtin": "celery", "celery": "celery", "arq": "arq", "taskiq": "taskiq"}


def _next_steps(output: str) -> list[tuple[str, str]]:
    """(command, why) of each `$ command  # why` line init printed under Next steps."""
    steps = []
    for line in output.split("Next steps", 1)[1].splitlines():
        if line.strip().startswith("$ "):
            command, _, why = line.strip()[2:].partition("  # ")
            steps.append((command, why))
    return steps


def _step(steps: list[tuple[str, str]], starts: str) -> str:
    found = [command for command, _ in steps if command.startswith(starts)]
    assert found, f"no printed step starts with {starts!r}: {steps}"
    return found[0]


def _set_env_line(env_file: Path, name: str, value: str) -> None:
    text = env_file.read_text(encoding="utf-8")
    assert re.search(rf"^{name}=", text, re.M), f"{name} is not in {env_file}:\n{text}"
    env_file.write_text(re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M), "utf-8")


def _scaffold_tests(python: Path, project: Path, steps: list[tuple[str, str]]) -> None:
    """The printed `pytest ...` step, run in the runner's environment: all pass."""
    args = shlex.split(_step(steps, "pytest "))[1:]
    done = subprocess.run(
        [str(python), "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={"CI": "true", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]


def _edit_the_added_body(project: Path, runner: str) -> None:
    """The first real edit of an added task: it returns its own result, not its input
    (the scaffold's tests must still pass: they test what the scaffold guarantees)."""
    placeholder = '"image_id": image_id,'
    edited = [
        path
        for path in (project / "app").rglob("*.py")
        if "def resize_image" in (text := path.read_text()) and placeholder in text
    ]
    for path in edited:
        text = path.read_text().replace(placeholder, '"thumbnails": [image_id * 2],')
        path.write_text(text)
    # BackgroundTasks' generated test replaces the function: its body is not run there
    assert edited or runner == "builtin", "no added body found to edit"


@pytest.mark.parametrize("runner", ["builtin", "celery", "arq", "taskiq"])
def test_first_hour_on_a_template_shaped_project(tmp_path: Path, runner: str) -> None:
    python = runner_python(VENV[runner])
    project = write_tree(tmp_path / "project", TEMPLATE_SHAPED)
    laps: dict[str, float] = {}  # seconds per step of the first hour, printed at the end
    started = time.monotonic()

    def lap(step: str) -> None:
        nonlocal started
        laps[step] = round(time.monotonic() - started, 2)
        started = time.monotonic()

    init = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    steps = _next_steps(init.stdout)
    lap("init")

    check = bgtasks(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    lap("check")

    with redis_server(tmp_path) as redis_url:
        subprocess.run(_step(steps, "cp .env.example .env"), shell=True, cwd=project, check=True)
        env_file = project / ".env"
        # the local Redis of .env.example is this test's private one
        env_file.write_text(
            env_file.read_text(encoding="utf-8").replace("redis://localhost:6379", redis_url),
            "utf-8",
        )
        token_step = next(c for c, why in steps if "BGTASKS_API_TOKEN=<token>" in why)
        token = subprocess.run(
            token_step, shell=True, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        assert len(token) >= 32
        _set_env_line(env_file, "BGTASKS_API_TOKEN", token)

        curl = _step(steps, "curl ")
        assert "/api/v1/" in curl, curl
        server, base = serve_app(
            python, project, "app.main:app", tmp_path / "uvicorn.log", {"BGTASKS_API_TOKEN": token}
        )
        with running(server):
            literal = curl.replace("<token>", token).replace("http://127.0.0.1:8000", base)
            answered = subprocess.run(
                f"{literal} -s -o /dev/null -w '%{{http_code}}'",
                shell=True,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert answered.stdout == "202", f"{literal}\n{answered.stdout}\n{server.log()}"
        lap("next steps: .env, token, serve, printed curl 202")

        _scaffold_tests(python, project, steps)
        lap("the scaffold's own tests")

        added = bgtasks(project, "add-task", "resize_image", "--arg", "image_id:int")
        assert added.returncode == 0, added.stdout + added.stderr
        assert "route: POST /api/v1/" in added.stdout, added.stdout
        _edit_the_added_body(project, runner)
        if runner != "builtin":  # BackgroundTasks has no schedules, retries or limits
            scheduled = ("--cron", "0 6 * * 1-5", "--retries", "2", "--timeout", "120")
            added = bgtasks(project, "add-task", "nightly_report", *scheduled)
            assert added.returncode == 0, added.stdout + added.stderr
        lap("add-task (x2 on queue runners)")
        check = bgtasks(project, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        lap("check")
        _scaffold_tests(python, project, steps)
        lap("the scaffold's own tests, added tasks included")

    listed = bgtasks(project, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    # the router's folder of routes, as the printed curl reaches it: /api/v1/<router>
    router_path = curl.split("127.0.0.1:8000", 1)[1].split()[0].rsplit("/", 1)[0]
    assert rows["resize_image"]["route"] == f"POST {router_path}/resize-image"
    if runner != "builtin":
        nightly = rows["nightly_report"]
        assert (nightly["schedule"], nightly["retries"], nightly["timeout"]) == (
            "0 6 * * 1-5",
            2,
            120,
        )
    assert {tuple(sorted(row)) for row in rows.values()} == {tuple(sorted(rows["resize_image"]))}
    lap("list --json")
    print(json.dumps({"runner": runner, "seconds": laps}))

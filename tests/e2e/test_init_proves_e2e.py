"""`init` proves its edit: pip resolves the patched dependencies (the real package index)
before anything is written, and the written app is served once in the project's own
interpreter (a real redis-server behind arq's lifespan pool) after.

The package index must answer: locally a test skips without it, with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import EXAMPLES, missing, redis_server, runner_python

RESOLVED = "dependencies resolve with pip for Python 3.11 ("
NOT_VERIFIED = "resolution not verified:"


def _project(tmp_path: Path, *extra_requirements: str) -> Path:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    pyproject = project / "pyproject.toml"
    lines = "".join(f'    "{r}",\n' for r in extra_requirements)
    pyproject.write_text(pyproject.read_text().replace("\n]\n", f"\n{lines}]\n", 1))
    return project


def _init(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "BGTASKS_RESOLVE_TIMEOUT": "60", **(env or {})},
    )
    output = result.stdout + result.stderr
    if NOT_VERIFIED in output:
        reason = output.split(NOT_VERIFIED, 1)[1].splitlines()[0]
        missing(f"the package index does not answer pip:{reason}")
    return result.returncode, output


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_celery_beside_redis_below_6_resolves_with_the_56_pin(tmp_path: Path) -> None:
    # bgtasks' pin rules already choose celery 5.6 beside a project's redis<6 (celery
    # 5.7's kombu needs redis>=6.4): pip confirms that choice resolves
    project = _project(tmp_path, "redis<6")
    code, output = _init(project, "--runner", "celery")
    assert code == 0, output
    assert RESOLVED in output, output
    assert '"celery[redis]>=5.6,<5.7"' in (project / "pyproject.toml").read_text()


def test_collision_refuses_naming_both_requirements_and_writes_nothing(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, "redis<4")
    before = _tree(project)
    code, output = _init(project, "--runner", "celery")
    assert code == 2, output
    flat = " ".join(output.split())
    assert "the dependencies do not resolve for Python 3.11" in flat, output
    assert "(added by bgtasks)" in flat and "celery[redis]" in flat, output
    assert "redis<4 (declared in pyproject.toml)" in flat, output
    assert "another runner" in flat and "--no-deps" in flat, output
    assert _tree(project) == before, "nothing is written"


def test_dry_run_shows_the_verdict_and_no_verify_skips_it(tmp_path: Path) -> None:
    project = _project(tmp_path, "redis<4")
    code, output = _init(project, "--runner", "celery", "--dry-run")
    assert code == 2 and "do not resolve" in output, output
    code, output = _init(project, "--runner", "celery", "--dry-run", "--no-verify")
    assert code == 0 and "do not resolve" not in output and RESOLVED not in output, output


def test_arq_beside_redis_below_6_resolves(tmp_path: Path) -> None:
    project = _project(tmp_path, "redis<6")
    code, output = _init(project, "--runner", "arq")
    assert code == 0, output
    assert RESOLVED in output, output
    # no environment in the project: the next steps say doctor proves it once installed
    assert "then `bgtasks doctor` serves the app" in output, output


def test_init_serves_the_written_app_in_the_project_interpreter(tmp_path: Path) -> None:
    python = runner_python("arq")
    project = _project(tmp_path)
    with redis_server(tmp_path) as redis_url:
        code, output = _init(
            project, "--runner", "arq", "--python", str(python), env={"REDIS_URL": redis_url}
        )
    assert code == 0, output
    assert RESOLVED in output, output
    flat = " ".join(output.split())
    assert "served: GET /tasks/status/" in flat, output
    assert "answered 404 with the app's lifespans running" in flat, output


def test_init_reports_an_app_that_does_not_import(tmp_path: Path) -> None:
    python = runner_python("arq")
    project = _project(tmp_path)
    main = project / "app" / "main.py"
    main.write_text(main.read_text() + "\nSTARTUP_RATIO = 1 / 0\n")
    with redis_server(tmp_path) as redis_url:
        code, output = _init(
            project, "--runner", "arq", "--python", str(python), env={"REDIS_URL": redis_url}
        )
    assert code == 1, output
    flat = " ".join(output.split())
    assert "the app app.main:app does not import" in flat, output
    assert "ZeroDivisionError" in flat, output
    assert "the files stay written" in flat, output
    assert (project / ".bgtasks.toml").is_file(), "the files stay written"


def test_doctor_runs_the_same_served_check(tmp_path: Path) -> None:
    python = runner_python("arq")
    project = _project(tmp_path)
    code, output = _init(project, "--runner", "arq", "--no-verify")
    assert code == 0, output
    with redis_server(tmp_path) as redis_url:
        result = subprocess.run(
            [sys.executable, "-m", "bgtasks_gen", "doctor", str(project), "--python", str(python)]
            + ["--json"],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "REDIS_URL": redis_url},
        )
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    served = checks["served"]
    assert served["status"] == "pass", served
    assert "answered 404 with the app's lifespans running" in served["detail"], served


def _served(output: str) -> bool:
    flat = " ".join(output.split())
    return "served: GET /tasks/status/" in flat and "answered 404 with the app's lifespans" in flat


def test_a_lock_below_router_lifespans_gets_the_app_lifespan_and_answers_404(
    tmp_path: Path,
) -> None:
    # uv.lock pins FastAPI 0.112.1 (router lifespans came in 0.112.2) while the declared
    # floor allows newer: the lock decides, the lifespan goes on the app's FastAPI(...)
    # call, and the app served in an environment with that very FastAPI answers 404 on
    # the status route (a router lifespan that never runs would make it 503 forever)
    python = runner_python("oldfastapi")
    project = _project(tmp_path)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"fastapi>=0.115"', '"fastapi>=0.112.1"'))
    (project / "uv.lock").write_text(
        'version = 1\n\n[[package]]\nname = "fastapi"\nversion = "0.112.1"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
    )
    with redis_server(tmp_path) as redis_url:
        code, output = _init(
            project, "--runner", "arq", "--python", str(python), env={"REDIS_URL": redis_url}
        )
    assert code == 0, output
    flat = " ".join(output.split())
    assert "uv.lock pins fastapi 0.112.1" in flat, output
    assert "lifespan=" in (project / "app" / "main.py").read_text()
    assert RESOLVED in output, output
    assert _served(output), output


def test_a_requirements_driven_project_gets_its_requirements_file_edited(
    tmp_path: Path,
) -> None:
    # the Dockerfile installs requirements.txt: that file gets the packages, resolved by
    # pip as that install would see them; the pyproject list nobody installs stays as is
    project = _project(tmp_path)
    pyproject_before = (project / "pyproject.toml").read_text()
    (project / "requirements.txt").write_text(
        "fastapi>=0.115\npydantic-settings>=2.0\nuvicorn>=0.30\n"
    )
    (project / "Dockerfile").write_text(
        "FROM python:3.11-slim\nWORKDIR /srv\nCOPY requirements.txt .\n"
        "RUN pip install --no-cache-dir -r requirements.txt\nCOPY . .\n"
        'CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0"]\n'
    )
    code, output = _init(project, "--runner", "celery")
    assert code == 0, output
    assert RESOLVED in output, output
    requirements = (project / "requirements.txt").read_text()
    assert "celery[redis]" in requirements, requirements
    assert (project / "pyproject.toml").read_text() == pyproject_before


def test_dramatiq_with_redis_below_6_beside_celery_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    # dramatiq 1.17's [redis] extra holds redis-py below 6 (1.18 lifted it); celery 5.7's
    # kombu needs 6.4 or later: no pin rule sees a cap that comes with another package,
    # pip does, and init refuses before writing, naming the two requirements
    project = _project(tmp_path, "dramatiq[redis]==1.17.1")
    before = _tree(project)
    code, output = _init(project, "--runner", "celery")
    flat = " ".join(output.split())
    assert code == 2, output
    assert "celery[redis]>=5.7,<5.8 (added by bgtasks)" in flat, output
    assert "dramatiq[redis]==1.17.1 (declared in pyproject.toml)" in flat, output
    assert "another runner" in flat and "--no-deps" in flat, output
    assert _tree(project) == before, "nothing is written"


def test_the_projects_own_venv_is_found_and_the_app_served_at_the_end_of_init(
    tmp_path: Path,
) -> None:
    # no --python: init finds PROJECT/.venv (here the arq environment, linked in)
    environment = runner_python("arq").parent.parent
    project = _project(tmp_path)
    (project / ".venv").symlink_to(environment, target_is_directory=True)
    with redis_server(tmp_path) as redis_url:
        code, output = _init(project, "--runner", "arq", env={"REDIS_URL": redis_url})
    assert code == 0, output
    assert _served(output), output
    assert "then `bgtasks doctor` serves the app" not in output, output

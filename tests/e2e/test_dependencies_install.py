"""The dependency list `init` writes installs, in a fresh virtual environment, per runner;
and celery added beside arq gets pins that install together with it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.e2e.harness import scaffold

pytestmark = pytest.mark.e2e


def install(requirements: list[str], where: Path) -> str:
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120
    )
    return freeze.stdout.lower()


def declared(project: Path) -> list[str]:
    data = tomllib.loads((project / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


@pytest.mark.parametrize(("runner", "expect"), [("celery", "celery=="), ("arq", "arq==")])
def test_runner_dependencies_install(runner: str, expect: str, tmp_path: Path) -> None:
    project = scaffold("layered", tmp_path, "--runner", runner)
    requirements = declared(project)
    frozen = install(requirements, tmp_path)
    assert expect in frozen
    python = tmp_path / "venv" / "bin" / "python"
    # the scaffold's modules import in that environment (settings read from defaults)
    module = "app.tasks.celery_app" if runner == "celery" else "app.tasks.arq_worker"
    result = subprocess.run(
        [str(python), "-c", f"import {module}, app.main"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_celery_beside_arq_installs_together(tmp_path: Path) -> None:
    project = scaffold("layered", tmp_path, "--runner", "arq")
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "celery"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "redis-py" in result.stdout  # the reason for the 5.6 pin is printed
    requirements = declared(project)
    assert "celery[redis]>=5.6,<5.7" in requirements
    frozen = install(requirements, tmp_path)
    assert "celery==5.6." in frozen and "arq==" in frozen
    redis_line = next(line for line in frozen.splitlines() if line.startswith("redis=="))
    assert redis_line.split("==")[1].startswith("5.")

"""The code `init --runner builtin` generates meets the same bar as ours, in each example:
ruff check, ruff format --check, mypy, and the scaffolded project's own tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from tests.conftest import EXAMPLES

RUFF_RULES = "E,F,W,I,B,UP,ASYNC"


def scaffold(example: str, tmp_path: Path) -> Path:
    project = tmp_path / example
    shutil.copytree(EXAMPLES / example, project)
    result = CliRunner().invoke(app, ["init", str(project), "--runner", "builtin"])
    assert result.exit_code == 0, result.output
    return project


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"


def source_dirs(project: Path) -> list[str]:
    return ["src", "tests"] if (project / "src").is_dir() else ["."]


@pytest.mark.parametrize("example", ["layered", "factory"])
def test_generated_code_passes_ruff_and_mypy(example: str, tmp_path: Path) -> None:
    project = scaffold(example, tmp_path)
    ruff = [sys.executable, "-m", "ruff"]
    run(
        [*ruff, "check", "--no-cache", "--select", RUFF_RULES, "--target-version", "py311", "."],
        project,
    )
    run([*ruff, "format", "--check", "--no-cache", "."], project)
    env = {"MYPYPATH": "src"} if (project / "src").is_dir() else {}
    mypy = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--python-version", "3.11"]
    run([*mypy, "--cache-dir", str(tmp_path / ".mypy"), *source_dirs(project)], project, env)


@pytest.mark.parametrize("example", ["layered", "factory"])
def test_scaffolded_project_own_tests_pass(example: str, tmp_path: Path) -> None:
    project = scaffold(example, tmp_path)
    env = {"PYTHONPATH": "src" if (project / "src").is_dir() else "."}
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env)

"""bgtasks holds its own code to the bar it holds generated code to."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check() -> None:
    run("ruff", "check", "--no-cache", "bgtasks_gen", "tests", "bench")


def test_ruff_format() -> None:
    run("ruff", "format", "--check", "--no-cache", "bgtasks_gen", "tests", "bench")


def test_mypy_strict() -> None:
    run("mypy")  # [tool.mypy] in pyproject.toml: strict, on bgtasks_gen

"""A project that still supports Python 3.9 gets code without `X | None` where pydantic or
FastAPI evaluate annotations at run time: it passes ruff with a py39 target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.runners import available_runners, get_runner
from tests.conftest import invoke


@pytest.mark.parametrize(
    "runner", [spec.name for spec in available_runners() if spec.min_python is None]
)
def test_py39_project_gets_py39_compatible_code(example, runner: str) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('">=3.11"', '">=3.9"'))
    code, output = invoke("init", str(project), "--runner", runner, "--no-deps")
    assert code == 0, output
    generated = [str(p) for p in project.rglob("*.py") if "bgtasks" in p.name or "tasks" in p.parts]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "E9,F",
            "--target-version",
            "py39",
            *generated,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
    # FastAPI evaluates the router's annotations at run time (even postponed ones): on
    # Python 3.9 an `X | None` there is a TypeError at import
    routes = project / "app/api/v1/routes" / f"{get_runner(runner).router_file}.py"
    assert "| None" not in routes.read_text()


def test_a_runner_needing_a_newer_python_is_refused(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('">=3.11"', '">=3.9"'))
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    code, output = invoke("init", str(project), "--runner", "taskiq")
    assert code == 2, output
    assert "Python 3.10+" in output and "requires-python" in output
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before

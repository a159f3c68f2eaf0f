"""Quorum queues on the machine's RabbitMQ, with the generated USE_QUORUM_QUEUES switch on.

For each celery line bgtasks generates for: 5.7 (a celery project, .venvs/celery) and 5.6
(celery beside arq, .venvs/arq). A private vhost per run keeps the machine's other
(classic) `celery` queues out of the way: RabbitMQ refuses to redeclare a queue with
another type. A task runs to success over HTTP and a retry with a countdown waits in
RabbitMQ's delayed delivery queues (celery's native delayed delivery, which quorum
queues need), not in the worker. `rabbitmqctl list_queues` shows the types: the task
queue quorum, the control and event queues exclusive (RabbitMQ 4.3 refuses transient
queues that are not; celery 5.6 makes them exclusive only when the config asks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    add_task,
    missing,
    port_open,
    redis_server,
    runner_python,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)
from tests.e2e.test_celery56_e2e import celery_router_prefix

pytestmark = pytest.mark.e2e

API_TOKEN = "quorum-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
COUNTDOWN = 4  # seconds the retried task waits; long enough to see where it waits
# the first run asks for a retry; the second one returns
RETRY_ONCE = "    if self.request.retries == 0:\n        raise self.retry(countdown={})\n"


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def queues(vhost: str) -> dict[str, dict[str, Any]]:
    out = rabbitmqctl(
        "list_queues",
        *("-p", vhost),
        *("name", "type", "durable", "exclusive", "messages"),
        *("--formatter", "json"),
    )
    return {row["name"]: row for row in json.loads(out)}


@pytest.fixture
def vhost() -> Iterator[str]:
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl is not installed")
    name = f"bgtasks-quorum-{uuid.uuid4().hex[:8]}"
    try:
        rabbitmqctl("add_vhost", name)
    except AssertionError as exc:
        missing(f"rabbitmqctl cannot manage the local RabbitMQ: {exc}")
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def scaffold_project(celery: str, workdir: Path) -> tuple[Path, Path]:
    """A project on RabbitMQ for the given celery line; (interpreter, project)."""
    if celery == "5.7":
        python = runner_python("celery")
        return python, scaffold("layered", workdir, "--runner", "celery", "--broker", "rabbitmq")
    python = runner_python("arq")
    project = scaffold("layered", workdir, "--runner", "arq")
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project)]
        + ["--runner", "celery", "--broker", "rabbitmq"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return python, project


@pytest.mark.parametrize("celery", ["5.7", "5.6"])
def test_quorum_queues_task_and_delayed_retry(celery: str, vhost: str, tmp_path: Path) -> None:
    python, project = scaffold_project(celery, tmp_path)
    config = project / "app/tasks/celery_app.py"
    source = config.read_text()
    assert source.count("USE_QUORUM_QUEUES = False\n") == 1, source
    config.write_text(source.replace("USE_QUORUM_QUEUES = False\n", "USE_QUORUM_QUEUES = True\n"))
    assert ("control_queue_exclusive=True" in source) is (celery == "5.6")
    add_task(project, "flaky", "--arg", "n:int")
    tasks = project / "app/tasks/tasks.py"
    anchor = '    logger.info("flaky: attempt %d", self.request.retries + 1)\n'
    text = tasks.read_text()
    assert text.count(anchor) == 1
    tasks.write_text(text.replace(anchor, anchor + RETRY_ONCE.format(COUNTDOWN)))

    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp_path))
        env = {
            "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            "CELERY_RESULT_BACKEND": f"{redis_url}/1",
            "REDIS_URL": f"{redis_url}/2",
            "BGTASKS_API_TOKEN": API_TOKEN,
        }
        # gossip on: the worker then also declares an event queue (celeryev.*)
        worker = start_process(
            [str(python), "-m", "celery", "-A", "app.tasks.celery_app", "worker"]
            + ["-P", "prefork", "-c", "1", "--loglevel=info", "--without-mingle"]
            + ["-n", f"quorum-{uuid.uuid4().hex[:6]}@%h"],
            project,
            logs / "worker.log",
            env,
        )
        stack.callback(worker.stop)

        def ready() -> bool:
            if not worker.alive():
                pytest.fail(f"celery worker exited:\n{worker.log()}")
            return " ready." in worker.log()

        wait_until(ready, 40, "celery worker ready")
        assert f" v{celery}." in worker.log(), worker.log()
        server, base = serve_app(python, project, "app.main:app", logs / "web.log", env)
        stack.callback(server.stop)

        # with celery 5.6 the project holds arq too: find celery's own router
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

        def final(task_id: str, timeout: float = 30) -> dict[str, Any]:
            body: dict[str, Any] = wait_until(
                lambda: (s := status(task_id))["status"] == "complete" and s,
                timeout,
                f"task {task_id} to finish\n{worker.log()[-3000:]}",
            )
            return body

        done = final(queue("/process-order", json={"order_id": 4242}))
        assert done["success"] is True, (done, worker.log()[-3000:])
        assert done["result"]["order_id"] == 4242

        started = time.monotonic()
        flaky = queue("/flaky", json={"n": 7})
        wait_until(lambda: status(flaky)["status"] == "retrying", 10, "the first run to retry")

        # while it waits, RabbitMQ holds it: in a delayed delivery queue, not the worker
        def delayed() -> list[str]:
            return [
                name
                for name, row in queues(vhost).items()
                if name.startswith("celery_delayed_") and row["messages"]
            ]

        assert wait_until(delayed, COUNTDOWN, "the retry in a delayed delivery queue")
        ended = final(flaky)
        assert ended["success"] is True, (ended, worker.log()[-3000:])
        assert ended["result"] == {"n": 7}
        assert time.monotonic() - started >= COUNTDOWN

        found = queues(vhost)
        log = worker.log()
    for bad in ("Traceback", "ERROR", "CRITICAL"):
        assert bad not in log, log
    # celery warns when the exchange cannot take delayed delivery (a direct one)
    assert "direct exchange" not in log.lower(), log
    assert found["celery"]["type"] == "quorum" and found["celery"]["durable"], found
    delayed_queues = [row for name, row in found.items() if name.startswith("celery_delayed_")]
    assert delayed_queues and all(row["type"] == "quorum" for row in delayed_queues), found
    # control (pidbox) and event queues: exclusive, so RabbitMQ 4.3 accepts them
    (control,) = [row for name, row in found.items() if name.endswith(".celery.pidbox")]
    events = [row for name, row in found.items() if name.startswith("celeryev.")]
    assert control["exclusive"] is True, control
    assert events and all(row["exclusive"] is True for row in events), found

"""What operators do to a generated Celery stack: poison messages, a killed worker, two beats.

Real processes only: a private redis-server, `celery worker` (prefork) and `celery beat`
from .venvs/celery, uvicorn serving the scaffolded `layered` example. The scaffold's
visibility timeout is lowered (as its comments invite) so a killed worker's task is
redelivered within the test's bounds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.harness import (
    SmtpSink,
    add_task,
    redis_server,
    runner_python,
    running,
    scaffold,
    smtp_sink,
    wait_until,
)
from tests.e2e.test_celery_e2e import Stack, _env, _run, _serve

pytestmark = pytest.mark.e2e

TASKS = "app.tasks.tasks"
VISIBILITY_TIMEOUT = 20  # seconds, written into the scaffold's celery_app.py


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery-reliability")


@pytest.fixture(scope="module")
def redis_url(workdir: Path) -> Iterator[str]:
    with redis_server(workdir) as url:
        yield url


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as server:
        yield server


@pytest.fixture(scope="module")
def stack(workdir: Path, redis_url: str, sink: SmtpSink) -> Iterator[Stack]:
    python = runner_python("celery")
    project = scaffold("layered", workdir / "redis", "--runner", "celery")
    add_task(project, "tick", "--every", "5", "--no-route")
    config = project / "app" / "tasks" / "celery_app.py"
    text = config.read_text()
    formula = "VISIBILITY_TIMEOUT = 2 * TASK_TIME_LIMIT + RETRY_BACKOFF_MAX"
    assert formula in text
    config.write_text(text.replace(formula, f"VISIBILITY_TIMEOUT = {VISIBILITY_TIMEOUT}"))
    logs = workdir / "logs"
    logs.mkdir()
    stack = Stack(python, project, _env(f"{redis_url}/0", f"{redis_url}/1", sink), logs, sink)
    with running(_serve(stack)):
        yield stack


def _envelope(body: bytes, headers: dict[str, Any]) -> bytes:
    """A message as kombu's Redis transport stores it on the queue's list."""
    tag = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": headers.get("id", tag),
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
            },
        }
    ).encode()


def _headers(task: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "e2e",
        "ignore_result": False,
    }


ORDER = f"{TASKS}.process_order"
POISON = {
    "not json": b"this is not a kombu envelope {",
    "json, not an object": b"[1, 2, 3]",
    "no protocol-2 headers": _envelope(json.dumps([[], {"order_id": 1}, {}]).encode(), {}),
    "unknown task": _envelope(b"[[], {}, {}]", _headers(f"{TASKS}.no_such_task")),
    "body not json": _envelope(b"not json", _headers(ORDER)),
    "body not [args, kwargs, embed]": _envelope(b'{"order_id": 1}', _headers(ORDER)),
    "args not a list": _envelope(b'[1, {"order_id": 1}, {}]', _headers(ORDER)),
    "embed not an object": _envelope(b'[[], {"order_id": 1}, "x"]', _headers(ORDER)),
    "wrong keyword": _envelope(b'[[], {"nope": 1}, {}]', _headers(ORDER)),
}


def test_poison_messages_leave_the_worker_serving(stack: Stack, redis_url: str) -> None:
    broker = redis.Redis.from_url(f"{redis_url}/0")
    worker = stack.worker("poison")
    with running(worker):
        for kind, raw in POISON.items():
            broker.lpush("celery", raw)
            order = stack.queue("/process-order/9")
            final = stack.final(order, timeout=30)
            assert final["state"] == "SUCCESS", (kind, worker.log())
            assert worker.alive(), (kind, worker.log())
        # nothing left to come back on the next start
        assert broker.llen("celery") == 0
        assert broker.hlen("unacked") == 0, broker.hkeys("unacked")
        worker.stop()
    log = worker.log()
    assert "Unrecoverable error" not in log, log
    assert "dropped a queue entry that is not a message" in log, log
    assert log.count("dropped a malformed") >= 3, log
    # a restart finds nothing to restore and serves at once
    again = stack.worker("poison-again")
    with running(again):
        assert stack.final(stack.queue("/process-order/10"))["state"] == "SUCCESS"
    assert "Restoring" not in again.log(), again.log()


def test_a_killed_worker_is_reported_lost_and_its_task_runs_again(stack: Stack) -> None:
    first = stack.worker("doomed")
    with running(first):
        task_id = stack.queue("/long-running", params={"steps": 80})
        wait_until(lambda: stack.status(task_id)["state"] == "PROGRESS", 20, "PROGRESS")
        os.killpg(first.popen.pid, signal.SIGKILL)  # the whole worker, pool included
        first.popen.wait(10)
        killed_at = time.time()
        lost = wait_until(lambda: stack.status(task_id).get("lost"), 30, "reported lost")
        status = stack.status(task_id)
    assert time.time() - killed_at < 30
    assert status["state"] in ("STARTED", "PROGRESS") and lost is True, status
    due = datetime.fromisoformat(status["redelivery_due_at"]).timestamp()
    assert killed_at - 30 < due <= killed_at + VISIBILITY_TIMEOUT + 15, status

    second = stack.worker("rescuer")
    with running(second):
        final = stack.final(task_id, timeout=max(due - time.time(), 0) + 15 + 8 + 10)
        assert final["state"] == "SUCCESS", (final, second.log())
        assert final["lost"] is False
    assert f"long_running[{task_id}] received" in second.log(), second.log()


def _sends(log: str) -> int:
    return len(re.findall(rf"Sending due task tick \({TASKS}\.tick\)", log))


def test_two_beats_run_each_entry_once_per_period(stack: Stack) -> None:
    first = stack.beat("beat-a", loglevel="info")
    time.sleep(1)
    second = stack.beat("beat-b", loglevel="info")
    with running(first, second):
        time.sleep(31)
        assert first.alive() and second.alive(), first.log() + second.log()
        sent = _sends(first.log()), _sends(second.log())
        assert 5 <= sum(sent) <= 7, (sent, first.log(), second.log())
        assert 0 in sent, sent  # only the lock holder sent anything
        assert "holds the beat lock; standing by" in second.log(), second.log()
        # the holder stops: the standby takes over within its retry interval
        first.stop()
        assert "released the beat lock" in first.log(), first.log()
        wait_until(lambda: _sends(second.log()) > 0, 20, f"takeover\n{second.log()}")


def test_config_follows_celery_documentation(stack: Stack, workdir: Path) -> None:
    probe = (
        "import json; from app.tasks.celery_app import celery_app as a; c = a.conf; "
        "print(json.dumps({k: c[k] for k in ('broker_transport_options', "
        "'result_backend_transport_options', 'visibility_timeout', 'worker_eta_task_limit',"
        " 'worker_soft_shutdown_timeout', 'worker_enable_soft_shutdown_on_idle', "
        "'task_reject_on_worker_lost', 'task_retry_on_worker_lost', 'beat_scheduler', "
        "'broker_transport', 'task_default_queue_type')}))"
    )
    conf = json.loads(_run([str(stack.python), "-c", probe], stack.project, stack.env))
    assert conf["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert conf["result_backend_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert conf["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert conf["worker_eta_task_limit"] and conf["worker_soft_shutdown_timeout"] > 0
    assert conf["worker_enable_soft_shutdown_on_idle"] is True
    assert conf["task_reject_on_worker_lost"] and conf["task_retry_on_worker_lost"]
    assert conf["beat_scheduler"].endswith("beat_lock:SingleBeatScheduler")
    assert conf["broker_transport"].endswith("message_guard:GuardedRedisTransport")
    procfile = (stack.project / "Procfile").read_text()
    assert "worker: REMAP_SIGTERM=SIGQUIT celery" in procfile
    compose = (stack.project / "compose.yaml").read_text()
    assert "REMAP_SIGTERM: SIGQUIT" in compose and "stop_grace_period: 45s" in compose

    # celery 5.6 (a redis<6 pin): no reject-on-lost loop, exclusive RabbitMQ queues
    pinned = workdir / "pinned"
    pinned.mkdir()
    project = scaffold_pinned(pinned)
    text = (project / "app" / "tasks" / "celery_app.py").read_text()
    assert "task_reject_on_worker_lost=True" not in text
    assert "control_queue_exclusive=True" in text and "event_queue_exclusive=True" in text


def scaffold_pinned(dest: Path) -> Path:
    """The layered example with redis-py pinned below 6, scaffolded for RabbitMQ."""
    import shutil

    from tests.e2e.harness import EXAMPLES

    source = dest / "source"
    shutil.copytree(EXAMPLES / "layered", source)
    pyproject = source / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace("dependencies = [", 'dependencies = [\n    "redis<6",', 1))
    return scaffold_from(source, dest)


def scaffold_from(source: Path, dest: Path) -> Path:
    import subprocess
    import sys

    project = dest / "layered"
    source.rename(project)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bgtasks_gen",
            "init",
            str(project),
            "--runner",
            "celery",
            "--broker",
            "rabbitmq",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project

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
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.harness import (
    RestartableRedis,
    SmtpSink,
    add_task,
    redis_server,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    smtp_sink,
    wait_until,
)
from tests.e2e.test_celery_e2e import Stack, _env, _run, _serve, reports_progress, succeeded

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
            order = stack.queue("/process-order", json={"order_id": 9})
            final = stack.final(order, timeout=30)
            assert succeeded(final), (kind, worker.log())
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
        assert succeeded(stack.final(stack.queue("/process-order", json={"order_id": 10})))
    assert "Restoring" not in again.log(), again.log()


def test_a_killed_worker_is_reported_lost_and_its_task_runs_again(stack: Stack) -> None:
    first = stack.worker("doomed")
    with running(first):
        task_id = stack.queue("/long-running", json={"steps": 80})
        wait_until(lambda: reports_progress(stack.status(task_id)), 20, "progress")
        os.killpg(first.popen.pid, signal.SIGKILL)  # the whole worker, pool included
        first.popen.wait(10)
        killed_at = time.time()
        lost = wait_until(lambda: stack.status(task_id).get("lost"), 30, "reported lost")
        status = stack.status(task_id)
    assert time.time() - killed_at < 30
    assert status["status"] == "in_progress" and lost is True, status
    due = datetime.fromisoformat(status["redelivery_due_at"]).timestamp()
    assert killed_at - 30 < due <= killed_at + VISIBILITY_TIMEOUT + 15, status

    second = stack.worker("rescuer")
    with running(second):
        final = stack.final(task_id, timeout=max(due - time.time(), 0) + 15 + 8 + 10)
        assert succeeded(final), (final, second.log())
        assert final["lost"] is False
    assert f"long_running[{task_id}] received" in second.log(), second.log()


def _sends(log: str) -> int:
    return len(re.findall(rf"Sending due task tick \({TASKS}\.tick\)", log))


def test_two_beats_run_each_entry_once_per_period(stack: Stack) -> None:
    first = stack.beat("beat-a", loglevel="info")
    time.sleep(1)
    second = stack.beat("beat-b", loglevel="info")
    with running(first, second):
        time.sleep(16)  # three periods of the 5 s entry
        assert first.alive() and second.alive(), first.log() + second.log()
        sent = _sends(first.log()), _sends(second.log())
        assert 2 <= sum(sent) <= 4, (sent, first.log(), second.log())
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


# A broker restart while tasks run: each order takes ORDER_SECONDS, a batch of them runs
# on a prefork pool, and Redis (append-only, fsync always) is stopped and started again
# under it, twice. Every task must succeed: redelivered if need be, never cancelled.
RESTART_ORDERS = 40
RESTART_CONCURRENCY = 4
RESTART_ORDER_SECONDS = 1.5
RESTART_VISIBILITY_TIMEOUT = 30


@pytest.fixture(scope="module")
def restart_stack(workdir: Path, sink: SmtpSink) -> Iterator[tuple[Stack, RestartableRedis]]:
    python = runner_python("celery")
    project = scaffold("layered", workdir / "restart", "--runner", "celery")
    config = project / "app" / "tasks" / "celery_app.py"
    text = config.read_text()
    formula = "VISIBILITY_TIMEOUT = 2 * TASK_TIME_LIMIT + RETRY_BACKOFF_MAX"
    assert formula in text
    config.write_text(text.replace(formula, f"VISIBILITY_TIMEOUT = {RESTART_VISIBILITY_TIMEOUT}"))
    tasks = project / "app" / "tasks" / "tasks.py"
    text = tasks.read_text()
    assert "ORDER_SECONDS = 0.5" in text
    tasks.write_text(
        text.replace("ORDER_SECONDS = 0.5", f"ORDER_SECONDS = {RESTART_ORDER_SECONDS}")
    )
    data = workdir / "restart-redis"
    data.mkdir()
    logs = workdir / "restart-logs"
    logs.mkdir()
    with restartable_redis(data) as server:
        env = _env(f"{server.url}/0", f"{server.url}/1", sink)
        stack = Stack(python, project, env, logs, sink)
        with running(_serve(stack)):
            yield stack, server


UNFINISHED = {"queued", "in_progress", "retrying", None}


def _outcome_or_none(stack: Stack, task_id: str) -> str | None:
    """The status while unfinished, then "succeeded" or the error word."""
    try:
        status = stack.status(task_id)
    except (httpx.HTTPError, AssertionError):
        return None  # the API answers 503 while Redis is down
    if status["status"] != "complete":
        return str(status["status"])
    return "succeeded" if status["success"] is True else str(status["error"])


def _any_started(stack: Stack, ids: list[str]) -> bool:
    return any(_outcome_or_none(stack, task_id) == "in_progress" for task_id in ids)


def test_a_redis_restart_mid_run_loses_no_running_task(
    restart_stack: tuple[Stack, RestartableRedis],
) -> None:
    stack, server = restart_stack
    worker = stack.worker("restart", concurrency=RESTART_CONCURRENCY)
    with running(worker):
        ids = [
            stack.queue("/process-order", json={"order_id": n})
            for n in range(1, RESTART_ORDERS + 1)
        ]
        restarts = 0
        for batch in (ids[:10], ids[15:25]):
            # tasks of this batch are running: pull the broker from under them
            wait_until(partial(_any_started, stack, batch), 30, "a running task", interval=0.05)
            time.sleep(0.3)
            server.stop()
            time.sleep(1.0)
            server.start()
            restarts += 1
        states: dict[str, str | None] = {}

        def all_done() -> bool:
            for task_id in ids:
                if states.get(task_id) in UNFINISHED:
                    states[task_id] = _outcome_or_none(stack, task_id)
            return all(state not in UNFINISHED for state in states.values())

        wait_until(
            all_done,
            RESTART_ORDERS * RESTART_ORDER_SECONDS / RESTART_CONCURRENCY
            + RESTART_VISIBILITY_TIMEOUT
            + 60,
            f"every order to finish: {states}\n{worker.log()}",
            interval=0.5,
        )
        assert worker.alive(), worker.log()
    log = worker.log()
    revoked = [i for i, state in states.items() if state == "cancelled"]
    assert restarts == 2
    assert not revoked, (f"{len(revoked)} of {len(ids)} cancelled", revoked, log)
    assert set(states.values()) == {"succeeded"}, (Counter(states.values()), states, log)
    assert "Terminating it instead" not in log, log


# Protocol-2 headers the worker converts (eta, expires, timelimit, retries) holding
# what no Celery client would send. Each must be dropped, acknowledged and recorded,
# while the same worker process goes on serving.
HEADER_POISON: dict[str, dict[str, Any]] = {
    "timelimit not numbers": {"timelimit": ["a", "b"]},
    "timelimit of three": {"timelimit": [10, 5, 1]},
    "timelimit of one": {"timelimit": [10]},
    "timelimit not a list": {"timelimit": "soon"},
    "timelimit negative": {"timelimit": [-1, None]},
    "eta not a time": {"eta": "tomorrow"},
    "eta a number": {"eta": 12},
    "eta out of range": {"eta": "9999-12-31T23:59:59-23:00"},
    "expires not a time": {"expires": "never"},
    "expires a list": {"expires": [1]},
    "retries not a number": {"retries": "many"},
    "retries negative": {"retries": -3},
    "task name not a string": {"task": [ORDER]},
    "root id not a string": {"root_id": {"a": 1}},
    "group not a string": {"group": [1]},
}


# Run by the celery environment's interpreter (kombu lives there): publishes one message
# with the given headers to the generated queue, as any kombu client can.
_PUBLISH_RAW = """
import json, sys
from kombu import Connection, Exchange
with Connection(sys.argv[1], connect_timeout=5) as conn:
    conn.Producer(serializer="json").publish(
        [[], {"order_id": 1}, {}],
        exchange=Exchange("celery", type="direct"),
        routing_key="celery",
        headers=json.loads(sys.argv[2]),
        retry=False,
    )
"""


def _publish_raw(stack: Stack, url: str, headers: dict[str, Any]) -> None:
    _run([str(stack.python), "-c", _PUBLISH_RAW, url, json.dumps(headers)], stack.project)


def test_poison_headers_are_dropped_and_the_worker_keeps_serving(
    stack: Stack, redis_url: str
) -> None:
    broker = redis.Redis.from_url(f"{redis_url}/0")
    results = redis.Redis.from_url(f"{redis_url}/1")
    worker = stack.worker("poison-headers")
    pid = worker.popen.pid
    with running(worker):
        for kind, bad in HEADER_POISON.items():
            headers = {**_headers(ORDER), **bad}
            _publish_raw(stack, f"{redis_url}/0", headers)
            order = stack.queue("/process-order", json={"order_id": 9})
            final = stack.final(order, timeout=30)
            assert succeeded(final), (kind, worker.log())
            assert worker.alive() and worker.popen.pid == pid, (kind, worker.log())
            # dropped for good: nothing waits on the queue or unacknowledged
            assert broker.llen("celery") == 0, kind
            assert broker.hlen("unacked") == 0, (kind, broker.hkeys("unacked"))
            meta = results.get(f"celery-task-meta-{headers['id']}")
            if isinstance(headers.get("task"), str):
                # recorded, so a status request does not wait forever
                assert meta is not None and json.loads(meta)["status"] == "FAILURE", kind
        time.sleep(1)
        assert worker.alive() and worker.popen.pid == pid, worker.log()
    log = worker.log()
    assert "Unrecoverable error" not in log, log
    assert log.count("dropped a malformed") >= len(HEADER_POISON) - 1, log
    assert "its timelimit" in log and "its eta" in log and "its retries" in log, log

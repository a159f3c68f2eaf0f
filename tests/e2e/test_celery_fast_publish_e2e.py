"""Messages written by fast_publish, run by a real `celery worker`.

The generated project's own test compares what fast_publish stores with what
apply_async stores; this is the other half of the proof: a real prefork worker on a
private redis-server runs what the `async def` queue endpoints (and fast_publish itself,
for options the endpoints do not take) wrote, with the result backend, retries, a
countdown and an ETA, progress read through the status route, the revoke of a queued
task and the cancel of a running one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    Proc,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)
from tests.e2e.test_celery_e2e import cancelled, reports_progress, succeeded

pytestmark = pytest.mark.e2e

API_TOKEN = "fast-publish-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}

# Tasks of the test's own, imported by the worker with -I: one that fails once and is
# retried, one that records when it ran.
E2E_TASKS = """
import time

from app.tasks import registry
from app.tasks.celery_app import celery_app


@celery_app.task(bind=True, max_retries=3)
def flaky(self, key):
    attempts = registry.client().incr(f"e2e:attempts:{key}")
    if attempts < 2:
        raise self.retry(countdown=0.2)
    return {"attempts": attempts, "retries": self.request.retries}


@celery_app.task
def stamp(key):
    registry.client().set(f"e2e:ran:{key}", repr(time.time()))
    return key
"""

# Publishes through fast_publish from the project's own environment and prints what it
# sent: the message each time comes from a template (the endpoints' case) after the
# first, and the ETA one from apply_async on the keeping producer.
PUBLISH = """
import asyncio, json, sys, time, uuid
from datetime import datetime, timedelta, timezone
from app import e2e_tasks
from app.tasks import fast_publish

async def main():
    assert fast_publish.route() is not None, "fast_publish is off"
    ids = {}
    # the first publish of a task makes its template; the others repeat it
    for name in ("flaky-1", "flaky-2"):
        ids[name] = str(uuid.uuid4())
        await fast_publish.enqueue(
            e2e_tasks.flaky, {"key": ids[name]}, task_id=ids[name], ttl=600
        )
    ids["countdown"] = str(uuid.uuid4())
    await fast_publish.enqueue(
        e2e_tasks.stamp, {"key": "countdown"}, task_id=ids["countdown"], ttl=600,
        countdown=2,
    )
    ids["eta"] = str(uuid.uuid4())
    eta = datetime.now(timezone.utc) + timedelta(seconds=2)
    await fast_publish.enqueue(
        e2e_tasks.stamp, {"key": "eta"}, task_id=ids["eta"], ttl=600, eta=eta
    )
    repeated = fast_publish.build(
        e2e_tasks.flaky, {"key": "x"}, str(uuid.uuid4())
    ).repeated
    await fast_publish.aclose()
    print(json.dumps({"ids": ids, "sent_at": time.time(), "repeated": repeated}))

asyncio.run(main())
"""


# Serves the app with its lifespan (TestClient in a `with`), queues through the fast
# path, and counts the other clients of a Redis no one else uses: during the app's life
# and after its shutdown, with this process still alive (so the OS closed nothing).
SHUTDOWN = """
import json, os
import redis
from fastapi.testclient import TestClient
from app.main import app

probe = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
probe_id = probe.client_id()

def others():
    return sum(1 for c in probe.client_list() if int(c["id"]) != probe_id)

headers = {
    "Authorization": "Bearer " + os.environ["BGTASKS_API_TOKEN"],
    "Content-Type": "application/json",
}
before = others()
with TestClient(app) as client:
    for n in (1, 2, 3):
        response = client.post("/tasks/process-order", json={"order_id": n}, headers=headers)
        assert response.status_code == 202, response.text
    during = others()
print(json.dumps({"before": before, "during": during, "after": others()}))
"""


@dataclass
class Stack:
    python: Path
    project: Path
    env: dict[str, str]
    base: str
    worker: Proc

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/tasks{path}", headers=HEADERS, timeout=10, **kwargs)

    def queue(self, path: str, **kwargs: Any) -> str:
        response = self.post(path, **kwargs)
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def status(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/tasks/status/{task_id}", headers=HEADERS, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def cancel(self, task_id: str, wait: float = 5) -> httpx.Response:
        url = f"{self.base}/tasks/cancel/{task_id}"
        return httpx.post(url, params={"wait": wait}, headers=HEADERS, timeout=wait + 10)

    def final(self, task_id: str, timeout: float = 30) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            status = self.status(task_id)
            return status if status["status"] == "complete" else None

        result: dict[str, Any] = wait_until(finished, timeout, f"task {task_id} to finish")
        return result

    def redis(self, *args: str) -> str:
        url = self.env["CELERY_RESULT_BACKEND"]
        out = subprocess.run(
            ["redis-cli", "-u", url, "--raw", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = runner_python("celery")
    workdir = tmp_path_factory.mktemp("celery-fast-publish")
    project = scaffold("layered", workdir, "--runner", "celery")
    (project / "app" / "e2e_tasks.py").write_text(E2E_TASKS)
    with redis_server(workdir) as url:
        env = {
            "CELERY_BROKER_URL": f"{url}/0",
            "CELERY_RESULT_BACKEND": f"{url}/1",
            "BGTASKS_API_TOKEN": API_TOKEN,
            "PYTHONPATH": str(project),
        }
        worker = start_process(
            [str(python), "-m", "celery", "-A", "app.tasks.celery_app", "worker"]
            + ["-I", "app.e2e_tasks", "-P", "prefork", "-c", "1", "--loglevel=info"]
            + ["-n", f"fast-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
            cwd=project,
            log_path=workdir / "worker.log",
            env=env,
        )
        with running(worker):
            wait_until(lambda: " ready." in worker.log() or not worker.alive(), 30, "worker ready")
            assert worker.alive(), worker.log()
            server, base = serve_app(python, project, "app.main:app", workdir / "uvicorn.log", env)
            with running(server):
                yield Stack(python, project, env, base, worker)


def test_endpoints_messages_succeed_with_results_and_progress(stack: Stack) -> None:
    orders = [stack.queue("/process-order", json={"order_id": n}) for n in (11, 12)]
    steps = stack.queue("/long-running", json={"steps": 15})
    for order_id, n in zip(orders, (11, 12), strict=True):
        final = stack.final(order_id)
        assert succeeded(final), (final, stack.worker.log())
        assert final["result"] == {"order_id": n, "status": "processed"}
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while (status := stack.status(steps))["status"] != "complete":
        assert time.monotonic() < deadline, status
        if reports_progress(status):
            seen.append(status["progress"]["percent"])
        time.sleep(0.05)
    assert succeeded(status), (status, stack.worker.log())
    assert seen and seen == sorted(seen), seen
    assert "Traceback" not in stack.worker.log(), stack.worker.log()


def test_requests_queued_together_all_run(stack: Stack) -> None:
    """Concurrent requests share fast_publish's script calls (its Batches): the worker
    runs every one of them, each with its own arguments."""
    numbers = range(200, 224)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=f"{stack.base}/tasks", headers=HEADERS, timeout=30
        ) as client:
            return list(
                await asyncio.gather(
                    *(client.post("/process-order", json={"order_id": n}) for n in numbers)
                )
            )

    responses = asyncio.run(burst())
    refused = [r.text for r in responses if r.status_code != 202]
    assert not refused, refused
    assert len({r.json()["task_id"] for r in responses}) == len(numbers)
    for n, response in zip(numbers, responses, strict=True):
        final = stack.final(response.json()["task_id"], timeout=60)
        assert succeeded(final), (final, stack.worker.log())
        assert final["result"] == {"order_id": n, "status": "processed"}


def test_retry_countdown_and_eta_of_fast_path_messages(stack: Stack) -> None:
    result = subprocess.run(
        [str(stack.python), "-c", PUBLISH],
        cwd=stack.project,
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sent = json.loads(result.stdout.splitlines()[-1])
    ids, sent_at = sent["ids"], sent["sent_at"]
    assert sent["repeated"] is True
    for name in ("flaky-1", "flaky-2"):
        final = stack.final(ids[name])
        assert succeeded(final), (final, stack.worker.log())
        assert final["result"] == {"attempts": 2, "retries": 1}
    log = stack.worker.log()
    assert log.count(f"flaky[{ids['flaky-1']}] retry") == 1, log
    for name in ("countdown", "eta"):
        assert succeeded(stack.final(ids[name])), stack.worker.log()
        ran_at = float(stack.redis("GET", f"e2e:ran:{name}"))
        # not before its time (2 s after it was sent), and not long after
        assert sent_at + 1.5 <= ran_at <= sent_at + 15, (name, ran_at - sent_at)


def test_revoke_a_queued_and_cancel_a_running_fast_path_message(stack: Stack) -> None:
    running_id = stack.queue("/long-running", json={"steps": 40})
    wait_until(lambda: reports_progress(stack.status(running_id)), 20, "the long task to start")
    # the only pool process is busy: this one waits in the queue, then is revoked
    queued_id = stack.queue("/process-order", json={"order_id": 99})
    response = stack.cancel(queued_id)
    assert response.status_code == 200, response.text
    assert response.json() == {"task_id": queued_id, "cancelled": True, "status": "complete"}
    # without waiting: asked to stop, still running (the cancel stays asked for)
    response = stack.cancel(running_id, wait=0)
    assert response.status_code == 202, response.text
    assert response.json() == {"task_id": running_id, "cancelled": False, "status": "in_progress"}
    assert cancelled(stack.final(running_id)), stack.worker.log()
    # once the worker took the revoked one off the queue it stays cancelled, never run
    marker = stack.queue("/process-order", json={"order_id": 100})
    assert succeeded(stack.final(marker))
    assert cancelled(stack.status(queued_id))
    assert f"process_order[{queued_id}] succeeded" not in stack.worker.log()


def test_shutdown_closes_the_fast_path_connections(stack: Stack, tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        env = {**stack.env, "CELERY_BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1"}
        result = subprocess.run(
            [str(stack.python), "-W", "ignore", "-c", SHUTDOWN],
            cwd=stack.project,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    # the queue requests opened fast_publish's pool; the router's lifespan closed it
    assert counts["before"] == 0, counts
    assert counts["during"] >= 1, counts
    assert counts["after"] == 0, counts


# Wraps Task.apply_async the way a tracing integration does (sentry-sdk's Celery
# integration adds sentry-trace and baggage headers this way), then queues several
# messages of one task through fast_publish: each must carry the header the wrapper
# made for it, not a copy of the first message's.
WRAPPED = """
import asyncio, functools, json, logging, sys, uuid
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from celery.app.task import Task
from app.tasks import fast_publish, tasks

added = {}
original = Task.apply_async

@functools.wraps(original)
def apply_async(self, *args, **kwargs):
    trace = uuid.uuid4().hex
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "e2e-trace": trace}
    result = original(self, *args, **kwargs)
    added[result.id] = trace
    return result

Task.apply_async = apply_async

async def main():
    ids = [str(uuid.uuid4()) for _ in range(4)]
    for n, task_id in enumerate(ids, 1):
        await fast_publish.enqueue(
            tasks.process_order, {"order_id": n}, task_id=task_id, ttl=600
        )
    await fast_publish.aclose()
    print(json.dumps({"ids": ids, "added": added}))

asyncio.run(main())
"""


def test_each_message_carries_the_headers_a_wrapper_added_for_it(
    stack: Stack, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as url:
        env = {**stack.env, "CELERY_BROKER_URL": f"{url}/0", "CELERY_RESULT_BACKEND": f"{url}/1"}
        result = subprocess.run(
            [str(stack.python), "-c", WRAPPED],
            cwd=stack.project,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        sent = json.loads(result.stdout.splitlines()[-1])
        raw = subprocess.run(
            ["redis-cli", "-u", f"{url}/0", "--raw", "LRANGE", "celery", "0", "-1"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    headers = {h["id"]: h for h in (json.loads(line)["headers"] for line in raw)}
    assert sorted(headers) == sorted(sent["ids"]), (raw, sent)
    # the wrapper ran for every message, and each carries its own trace
    assert sorted(sent["added"]) == sorted(sent["ids"]), sent
    for task_id, trace in sent["added"].items():
        assert headers[task_id].get("e2e-trace") == trace, (task_id, headers[task_id])
    assert len({h.get("e2e-trace") for h in headers.values()}) == len(sent["ids"])
    warnings = [line for line in result.stderr.splitlines() if "steps aside" in line]
    assert len(warnings) == 1 and "Task.apply_async is wrapped" in warnings[0], result.stderr

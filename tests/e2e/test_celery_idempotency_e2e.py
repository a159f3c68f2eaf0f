"""The generated Celery API while its Redis hangs, and tasks kept to their caller.

A private redis-server (broker and result backend) is paused with SIGSTOP: it keeps its
connections and accepts new ones (the kernel does), reads nothing, and runs everything
it was sent once SIGCONT resumes it, long after the API gave up waiting. uvicorn (from
.venvs/celery) serves the scaffolded `layered` example. No worker runs while Redis is
paused, so every message queued stays in the broker's list where the test counts it;
a real `celery worker` then runs what is there.

Two callers: the API token's holder, and an anonymous caller (BGTASKS_ALLOW_ANONYMOUS=
true, its identity the client address). The generated hook needs no edit for that, and
the two identities differ as two users' would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.harness import (
    AUTH,
    RestartableRedis,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

REQUESTS = 64
PAUSE_SECONDS = 10.0
ANONYMOUS = {"content-type": "application/json"}


@dataclass
class Stack:
    redis: RestartableRedis
    base: str
    python: Path
    project: Path
    env: dict[str, str]
    workdir: Path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    python = runner_python("celery")
    project = scaffold("layered", tmp_path, "--runner", "celery")
    data = tmp_path / "redis-data"
    data.mkdir()
    with restartable_redis(data) as server:
        env = {
            "CELERY_BROKER_URL": f"{server.url}/0",
            "CELERY_RESULT_BACKEND": f"{server.url}/1",
            "BGTASKS_ALLOW_ANONYMOUS": "true",
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", tmp_path / "uvicorn.log", env)
        with running(api):
            yield Stack(server, base, python, project, env, tmp_path)


def _broker_messages(url: str) -> list[dict[str, Any]]:
    """Every message waiting in the broker's lists: its task id and kwargs."""
    client = redis.Redis.from_url(url)
    try:
        found = []
        for key in client.scan_iter():
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                envelope = json.loads(raw)
                _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
                found.append({"id": envelope["headers"]["id"], "kwargs": kwargs})
        return found
    finally:
        client.close()


def _queued_orders(url: str) -> Counter[int]:
    return Counter(int(m["kwargs"]["order_id"]) for m in _broker_messages(url))


async def _post_all(base: str, keys: dict[int, str]) -> dict[int, httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def post(order_id: int) -> httpx.Response:
            headers = dict(AUTH)
            if order_id in keys:
                headers["Idempotency-Key"] = keys[order_id]
            return await client.post(
                "/tasks/process-order", json={"order_id": order_id}, headers=headers
            )

        ids = list(range(1, REQUESTS + 1))
        answers = await asyncio.gather(*(post(order_id) for order_id in ids))
        return dict(zip(ids, answers, strict=True))


def test_503_is_never_queued_and_a_keyed_retry_never_duplicates(stack: Stack) -> None:
    assert stack.redis.proc is not None
    pid = stack.redis.proc.popen.pid
    broker = f"{stack.redis.url}/0"
    keys = {order_id: uuid.uuid4().hex for order_id in range(2, REQUESTS + 1, 2)}
    # warm up: connections open, the message template made
    warm = httpx.post(
        f"{stack.base}/tasks/process-order",
        json={"order_id": 1000},
        headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex},
        timeout=10,
    )
    assert warm.status_code == 202, warm.text

    os.kill(pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        answers = asyncio.run(_post_all(stack.base, keys))
        answered_in = time.monotonic() - paused_at
        assert answered_in < PAUSE_SECONDS, "answered after the pause"
        time.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(1.0)  # Redis runs what it was sent while paused

    codes = Counter(response.status_code for response in answers.values())
    assert set(codes) <= {503, 504}, codes  # nothing can be confirmed while paused
    messages = _broker_messages(broker)
    queued = Counter(int(m["kwargs"]["order_id"]) for m in messages)
    queued_ids = {m["id"] for m in messages}
    refused_yet_queued = [
        order_id
        for order_id, response in answers.items()
        if response.status_code == 503 and queued[order_id]
    ]
    unknown_queued = sum(
        1
        for response in answers.values()
        if response.status_code == 504 and response.json()["detail"]["task_id"] in queued_ids
    )
    print(
        f"while paused: {dict(codes)} within {answered_in:.1f}s; 503 yet queued: "
        f"{len(refused_yet_queued)}; 504 queued after all: {unknown_queued}"
    )
    for order_id, response in answers.items():
        if response.status_code == 503:
            # "unavailable" means not queued, then and after Redis resumed
            assert queued[order_id] == 0, (order_id, response.text, codes)
        else:
            detail = response.json()["detail"]
            assert detail["outcome"] == "unknown", detail
            assert detail["task_id"], detail
            assert queued[order_id] <= 1

    # a retry with the same key once Redis answers: queued once, whatever came first
    for order_id, key in keys.items():
        again = httpx.post(
            f"{stack.base}/tasks/process-order",
            json={"order_id": order_id},
            headers={**AUTH, "Idempotency-Key": key},
            timeout=10,
        )
        assert again.status_code in (200, 202), again.text
        assert again.json()["duplicate"] is (again.status_code == 200)
        first = answers[order_id]
        if first.status_code == 504:
            # the 504's task reached Redis after all (its claim went with it)...
            if first.json()["detail"]["task_id"] in queued_ids:
                assert again.status_code == 200, again.text
            # ...and whichever it is, the retry names the task the key queued
            if again.status_code == 200:
                assert again.json()["task_id"] == first.json()["detail"]["task_id"]
        # once more: the key is claimed now, by the task just named
        third = httpx.post(
            f"{stack.base}/tasks/process-order",
            json={"order_id": order_id},
            headers={**AUTH, "Idempotency-Key": key},
            timeout=10,
        )
        assert third.status_code == 200, third.text
        assert third.json()["task_id"] == again.json()["task_id"]
    queued = _queued_orders(broker)
    assert all(queued[order_id] == 1 for order_id in keys), queued

    # a real worker runs what is queued: each key's task, once
    worker = start_process(
        [str(stack.python), "-m", "celery", "-A", "app.tasks.celery_app", "worker"]
        + ["-P", "threads", "-c", "8", "--loglevel=info"]
        + ["-n", f"idem-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
        cwd=stack.project,
        log_path=stack.workdir / "worker.log",
        env=stack.env,
    )
    with running(worker):
        wait_until(lambda: not _broker_messages(broker), 60, "the worker to drain the queue")
        for order_id, key in keys.items():
            again = httpx.post(
                f"{stack.base}/tasks/process-order",
                json={"order_id": order_id},
                headers={**AUTH, "Idempotency-Key": key},
                timeout=10,
            )
            assert again.status_code == 200, again.text
            status_url = f"{stack.base}{again.json()['status_url']}"

            def finished(url: str = status_url) -> bool:
                status = httpx.get(url, headers=AUTH, timeout=5).json()
                return bool(status["status"] == "complete" and status["success"])

            wait_until(finished, 30, f"order {order_id}'s task to succeed")
    runs = Counter(
        int(line.rsplit("processing order ", 1)[1].split()[0])
        for line in worker.log().splitlines()
        if "processing order " in line
    )
    assert all(runs[order_id] == 1 for order_id in keys), runs


def test_a_task_is_private_to_the_caller_who_queued_it(stack: Stack) -> None:
    owner = httpx.Client(base_url=stack.base, headers=AUTH, timeout=10)
    # another identity: no token, so the client address (allowed anonymous callers)
    other = httpx.Client(base_url=stack.base, headers=ANONYMOUS, timeout=10)
    with owner, other:
        queued = owner.post("/tasks/long-running", json={"steps": 5})
        assert queued.status_code == 202, queued.text
        task_id = queued.json()["task_id"]
        never_issued = other.get(f"/tasks/status/{uuid.uuid4()}")
        assert never_issued.status_code == 404
        # the other caller learns nothing: the same answer as for an id never issued
        status = other.get(f"/tasks/status/{task_id}")
        cancel = other.post(f"/tasks/cancel/{task_id}", params={"wait": 0})
        for answer in (status, cancel):
            assert answer.status_code == 404, answer.text
            assert answer.json() == never_issued.json()
        # ...and its cancel did nothing: the owner still finds it queued
        mine = owner.get(f"/tasks/status/{task_id}")
        assert mine.status_code == 200, mine.text
        assert mine.json()["status"] == "queued"
        # a key is per caller: the same key from the other caller is its own task
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = owner.post("/tasks/process-order", json={"order_id": 1}, headers=key)
        second = other.post("/tasks/process-order", json={"order_id": 1}, headers=key)
        assert (first.status_code, second.status_code) == (202, 202), second.text
        assert first.json()["task_id"] != second.json()["task_id"]
        theirs = other.get(f"/tasks/status/{second.json()['task_id']}")
        assert theirs.status_code == 200, theirs.text
        # the owner cancels its own task: no worker runs, so it is revoked while queued
        cancelled = owner.post(f"/tasks/cancel/{task_id}", params={"wait": 0})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["cancelled"] is True


def test_status_answers_503_at_once_while_redis_hangs(stack: Stack) -> None:
    """A stalled Redis holds neither the status request nor a thread for seconds."""
    assert stack.redis.proc is not None
    queued = httpx.post(
        f"{stack.base}/tasks/process-order", json={"order_id": 5}, headers=AUTH, timeout=10
    )
    assert queued.status_code == 202, queued.text
    status_url = f"{stack.base}{queued.json()['status_url']}"
    pid = stack.redis.proc.popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:

        async def many() -> list[tuple[int, float]]:
            async with httpx.AsyncClient(timeout=10) as client:

                async def one() -> tuple[int, float]:
                    started = time.monotonic()
                    response = await client.get(status_url, headers=AUTH)
                    return response.status_code, time.monotonic() - started

                return list(await asyncio.gather(*(one() for _ in range(80))))

        answers = asyncio.run(many())
        # the app's own routes still answer meanwhile (threadpool and loop are free)
        health = httpx.get(f"{stack.base}/health", timeout=5)
    finally:
        os.kill(pid, signal.SIGCONT)
    codes = Counter(code for code, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    print(f"status while paused: {dict(codes)}, slowest {slowest:.2f}s")
    assert set(codes) == {503}, codes
    assert slowest < 2.0, slowest
    assert health.status_code == 200

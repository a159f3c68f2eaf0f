"""The generated arq API while its Redis hangs: 503 means "not queued".

A private redis-server is paused with SIGSTOP: it keeps its connections and accepts new
ones (the kernel does), reads nothing, and runs everything it was sent once SIGCONT
resumes it, long after the API gave up waiting. uvicorn (from .venvs/arq) serves the
scaffolded `layered` example; no worker runs, so every queued job stays in Redis where
the test counts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
)

pytestmark = pytest.mark.e2e

REQUESTS = 64
PAUSE_SECONDS = 10.0


@dataclass
class Stack:
    redis: RestartableRedis
    base: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    python = runner_python("arq")
    project = scaffold("layered", tmp_path, "--runner", "arq")
    data = tmp_path / "redis-data"
    data.mkdir()
    with restartable_redis(data) as server:
        env = {"REDIS_URL": f"{server.url}/0", "PYTHONPATH": str(project)}
        api, base = serve_app(python, project, "app.main:app", tmp_path / "uvicorn.log", env)
        with running(api):
            yield Stack(server, base)


def _queued_data_ids(url: str) -> Counter[int]:
    """How many jobs Redis holds for each data_id."""
    client = redis.Redis.from_url(url)
    try:
        counts: Counter[int] = Counter()
        for key in client.scan_iter("arq:job:*"):
            record = json.loads(client.get(key) or b"{}")
            counts[int(record["k"]["data_id"])] += 1
        return counts
    finally:
        client.close()


async def _post_all(base: str, keys: dict[int, str]) -> dict[int, httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def post(data_id: int) -> httpx.Response:
            headers = dict(AUTH)
            if data_id in keys:
                headers["Idempotency-Key"] = keys[data_id]
            return await client.post(
                "/tasks/process-data",
                json={"data_id": data_id, "values": [data_id]},
                headers=headers,
            )

        ids = list(range(1, REQUESTS + 1))
        answers = await asyncio.gather(*(post(data_id) for data_id in ids))
        return dict(zip(ids, answers, strict=True))


def test_503_is_never_queued_and_a_keyed_retry_never_duplicates(stack: Stack) -> None:
    assert stack.redis.proc is not None
    pid = stack.redis.proc.popen.pid
    keys = {data_id: uuid.uuid4().hex for data_id in range(2, REQUESTS + 1, 2)}
    # warm up: the idempotency secret is cached and connections are open
    warm = httpx.post(
        f"{stack.base}/tasks/process-data",
        json={"data_id": 1000, "values": [1]},
        headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex},
        timeout=10,
    )
    assert warm.status_code == 202, warm.text

    os.kill(pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        answers = asyncio.run(_post_all(stack.base, keys))
        assert time.monotonic() - paused_at < PAUSE_SECONDS, "answered after the pause"
        time.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(1.0)  # Redis runs what it was sent while paused

    codes = Counter(response.status_code for response in answers.values())
    assert set(codes) <= {503, 504}, codes  # nothing can be confirmed while paused
    queued = _queued_data_ids(f"{stack.redis.url}/0")
    refused_yet_queued = [
        data_id
        for data_id, response in answers.items()
        if response.status_code == 503 and queued[data_id]
    ]
    print(f"while paused: {dict(codes)}; 503 yet queued: {len(refused_yet_queued)}")
    for data_id, response in answers.items():
        if response.status_code == 503:
            # "unavailable" means not queued, then and after Redis resumed
            assert queued[data_id] == 0, (data_id, response.text, codes)
        else:
            detail = response.json()["detail"]
            assert detail["outcome"] == "unknown", detail
            assert detail["task_id"]
            assert queued[data_id] <= 1

    # a retry with the same key once Redis answers: queued once, whatever came first
    for data_id, key in keys.items():
        again = httpx.post(
            f"{stack.base}/tasks/process-data",
            json={"data_id": data_id, "values": [data_id]},
            headers={**AUTH, "Idempotency-Key": key},
            timeout=10,
        )
        assert again.status_code in (200, 202), again.text
        assert again.json()["duplicate"] is (again.status_code == 200)
        first = answers[data_id]
        if first.status_code == 504:
            assert again.json()["task_id"] == first.json()["detail"]["task_id"]
    queued = _queued_data_ids(f"{stack.redis.url}/0")
    assert all(queued[data_id] == 1 for data_id in keys), queued

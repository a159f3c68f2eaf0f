"""The arq worker's pipelines survive a connection dropped while they WATCH a key.

arq's worker watches a job's in-progress key and then reads it outside any error
handling; redis-py answers a connection lost in between with WatchError, and the worker
exits (seen when Redis restarts under load). The generated worker's pipelines watch
again on a new connection and repeat the read. Proven on a real redis-server by killing
the pipeline's connection right after its WATCH: arq's plain pipeline raises, the
worker's carries on, and a key changed meanwhile is what its repeated read sees.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import redis_server, runner_python, scaffold

pytestmark = pytest.mark.e2e

SCRIPT = """
import asyncio, json, sys
import redis.asyncio
from arq.connections import create_pool
from redis.exceptions import WatchError
from app.tasks.arq_worker import resilient_redis_settings, rewatching_pipelines

URL = sys.argv[1]


async def killed_mid_watch(pool, change_after_watch=False):
    other = redis.asyncio.Redis.from_url(URL)
    try:
        async with pool.pipeline(transaction=True) as pipe:
            await pipe.watch("job-in-progress")
            await other.client_kill_filter(_type="normal", skipme=True)
            if change_after_watch:
                await other.set("job-in-progress", "taken")
            found = await pipe.exists("job-in-progress")
            pipe.multi()
            pipe.set("job-in-progress", "mine")
            try:
                await pipe.execute()
            except WatchError:
                return {"read": found, "committed": False}
            return {"read": found, "committed": True}
    except WatchError as exc:
        return {"raised": str(exc)}
    finally:
        await other.aclose()


async def main():
    pool = await create_pool(resilient_redis_settings(URL))
    plain = await killed_mid_watch(pool)
    await pool.delete("job-in-progress")
    rewatching_pipelines(pool)
    rewatched = await killed_mid_watch(pool)
    changed = await killed_mid_watch(pool, change_after_watch=True)
    await pool.aclose()
    print(json.dumps({"plain": plain, "rewatched": rewatched, "changed": changed}))


asyncio.run(main())
"""


def test_a_connection_lost_while_watching_is_watched_again(tmp_path: Path) -> None:
    python = runner_python("arq")
    project = scaffold("layered", tmp_path, "--runner", "arq")
    with redis_server(tmp_path) as url:
        done = subprocess.run(
            [str(python), "-c", SCRIPT, f"{url}/0"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # arq's own pipeline: the error the worker's loop does not catch
    assert "while watching" in answer["plain"]["raised"], answer
    # the worker's: watched again, read, committed
    assert answer["rewatched"] == {"read": 0, "committed": True}, answer
    # a claim made by another worker meanwhile is what the repeated read sees (arq
    # then leaves the job to it): never a decision on a value read before the loss
    assert answer["changed"]["read"] == 1, answer

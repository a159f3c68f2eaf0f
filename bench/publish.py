"""What one enqueue costs, piece by piece: the cause behind the load benchmark's ratios.

For each queue runner, the `layered` example is scaffolded into a temporary folder and
a script runs in the runner's own environment (.venvs/<runner>) against a private
redis-server, one call at a time (no concurrency, so no GIL or pool contention):

- celery: the API's issued-id record (one Redis SET), `apply_async` as the generated
  app configures it (its result backend skips Celery's per-publish SUBSCRIBE), the
  same with Celery's stock Redis backend, and the construction of one `redis.Redis`
  client object, which kombu's Redis transport does on every publish;
  Then the generated fast path the `async def` endpoints use: `fast_publish.build`
  (Celery's create_task_message from a template, unsent) and `fast_publish.enqueue`
  (build, then one Lua call with the issued-id record);
- arq: arq's own `enqueue_job` (WATCH, EXISTS, MULTI/EXEC) against the generated
  `QueueClient.enqueue_job` (one Lua script call).

For the generated enqueues, also 32 at a time (`asyncio.gather`, per message): calls
made together share a script call (`Batches`), which is what a loaded web process does.

Each figure is microseconds per call, the median of several batches (min and max
beside it). Compare them with the no-op request time bench/load.py implies
(1e6 / its no-op req/s).

    bash .ci/setup-venvs          # the runner environments, once
    .venv/bin/python bench/publish.py [--runner celery] [--batches 5] [--calls 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from _common import private_redis, scaffold_runner

CELERY_PROBE = """
import json, sys, time, uuid
import redis
from celery.backends.redis import RedisBackend
from app.tasks import registry, tasks
from app.tasks.celery_app import RESULT_EXPIRES, celery_app

batches, calls = int(sys.argv[1]), int(sys.argv[2])
pool = redis.ConnectionPool.from_url(str(celery_app.conf.broker_url))

def per_call(fn):
    fn()
    figures = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        figures.append((time.perf_counter() - start) / calls * 1e6)
    return figures

def publish():
    tasks.process_order.apply_async(kwargs={"order_id": 1})

out = {
    "issued-id SET (registry.remember)": per_call(
        lambda: registry.remember(str(uuid.uuid4()), ttl=RESULT_EXPIRES)
    ),
    "apply_async, generated ResultBackend": per_call(publish),
    "redis.Redis() construction (kombu: once per publish)": per_call(
        lambda: redis.Redis(connection_pool=pool)
    ),
}
"""

# The generated fast path: run after CELERY_PROBE, in the same process.
CELERY_FAST_PROBE = """
import asyncio
from app.tasks import fast_publish

assert fast_publish.route() is not None, "fast_publish is off"

def build():
    fast_publish.build(tasks.process_order, {"order_id": 1}, str(uuid.uuid4()))

async def enqueue():
    await fast_publish.enqueue(
        tasks.process_order, {"order_id": 1}, task_id=str(uuid.uuid4()),
        ttl=RESULT_EXPIRES,
    )

async def per_message(together):
    await enqueue()
    figures = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls // together):
            await asyncio.gather(*(enqueue() for _ in range(together)))
        figures.append((time.perf_counter() - start) / (calls // together * together) * 1e6)
    return figures

async def main():
    out = {
        "fast_publish.build (from a template, unsent)": per_call(build),
        "fast_publish.enqueue (1 Lua call)": await per_message(1),
        "fast_publish.enqueue, 32 at a time (per message)": await per_message(32),
    }
    await fast_publish.aclose()
    return out

out.update(asyncio.run(main()))
"""

# Last, as it changes the app's result backend (the fast path needs the generated one).
CELERY_STOCK_PROBE = """
# Celery's stock backend: it subscribes to every published task's result channel.
celery_app.backend_cls = None
celery_app._backend_cache = None
celery_app._local.__dict__.pop("backend", None)
assert type(celery_app.backend) is RedisBackend, type(celery_app.backend)
out["apply_async, Celery's stock RedisBackend"] = per_call(publish)
print(json.dumps(out))
"""

ARQ_PROBE = """
import asyncio, json, sys, time
from arq.connections import ArqRedis
from app.tasks.pool import create_queue

batches, calls = int(sys.argv[1]), int(sys.argv[2])

async def main():
    ours = create_queue()
    stock = ArqRedis(
        connection_pool=ours.connection_pool,
        job_serializer=ours.job_serializer,
        job_deserializer=ours.job_deserializer,
    )

    async def per_call(queue, together=1):
        await queue.enqueue_job("process_data", data_id=1, values=[1.0])
        figures = []
        for _ in range(batches):
            start = time.perf_counter()
            for _ in range(calls // together):
                await asyncio.gather(*(
                    queue.enqueue_job("process_data", data_id=1, values=[1.0])
                    for _ in range(together)
                ))
            figures.append((time.perf_counter() - start) / (calls // together * together) * 1e6)
        return figures

    out = {
        "arq's enqueue_job (3 round trips)": await per_call(stock),
        "generated QueueClient.enqueue_job (1 Lua call)": await per_call(ours),
        "arq's enqueue_job, 32 at a time (per job)": await per_call(stock, 32),
        "generated QueueClient.enqueue_job, 32 at a time (per job)": await per_call(ours, 32),
    }
    await ours.aclose(close_connection_pool=True)
    print(json.dumps(out))

asyncio.run(main())
"""

PROBES = {
    "celery": CELERY_PROBE + CELERY_FAST_PROBE + CELERY_STOCK_PROBE,
    "arq": ARQ_PROBE,
}


def probe(runner: str, batches: int, calls: int, workdir: Path) -> dict[str, list[float]]:
    python, project = scaffold_runner(runner, workdir)
    with private_redis(project) as (_port, env):
        result = subprocess.run(
            [str(python), "-c", PROBES[runner], str(batches), str(calls)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise SystemExit(f"{runner} probe failed:\n{result.stderr}")
        figures: dict[str, list[float]] = json.loads(result.stdout.splitlines()[-1])
        return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--runner", choices=sorted(PROBES), action="append")
    args = parser.parse_args()
    print(
        f"\n### One call at a time, microseconds per call: median of {args.batches} "
        f"batches of {args.calls} (min-max)\n"
    )
    print("| runner | call | us per call |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for runner in args.runner or sorted(PROBES):
            for label, figures in probe(runner, args.batches, args.calls, Path(tmp)).items():
                figures.sort()
                median = figures[len(figures) // 2]
                print(f"| {runner} | {label} | {median:.0f} ({figures[0]:.0f}-{figures[-1]:.0f}) |")


if __name__ == "__main__":
    main()

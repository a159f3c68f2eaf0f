"""Each KEDA trigger the k8s manifests carry, evaluated against a real broker.

Per runner and broker: a project is scaffolded, its manifests rendered, and the keys,
stream, group or queue each trigger names are read FROM the rendered ScaledObject. With
no worker running, tasks are queued by the generated code's own enqueue functions
(celery's `apply_async`, priorities included, arq's `enqueue_job` on the generated
WorkerSettings' Redis, taskiq's `kiq` on the generated broker) and through the generated
HTTP API served by uvicorn (celery's fast publish path); the trigger, evaluated with the
queries KEDA's scaler sends, must read how many were queued. Then the worker the
manifest's Deployment runs drains them and the trigger reads 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from bgtasks_gen.addtask import load_project
from bgtasks_gen.k8s import k8s_files
from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    missing,
    port_open,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

QUEUED = 7  # tasks queued by the enqueue functions with the workers stopped
API_QUEUED = 3  # and through the generated API
API_ROUTE = {
    "celery": ("/tasks/process-order", lambda i: {"order_id": i + 1}),
    "arq": ("/tasks/process-data", lambda i: {"data_id": i + 1, "values": [1.0]}),
    "taskiq": ("/tasks/process-data", lambda i: {"data_id": i + 1, "values": [1.0]}),
}
PRIORITY_QUEUED = 2  # of them, celery on Redis: sent with a priority (a suffixed list)

# What KEDA's `redis` scaler evaluates on the trigger's key: the command that counts
# the key's type (a list's LLEN, a sorted set's ZCARD), LLEN for a missing key.
KEDA_REDIS_COUNT = """
local kind = redis.call('TYPE', KEYS[1]).ok
local count = {list = 'LLEN', zset = 'ZCARD', set = 'SCARD', hash = 'HLEN', none = 'LLEN'}
return redis.call(count[kind], KEYS[1])
"""

ENQUEUE = {
    "celery": """
from app.tasks.tasks import process_order
for i in range({plain}):
    process_order.apply_async(args=[i])
for i in range({priority}):
    process_order.apply_async(args=[100 + i], priority=5)
""",
    "arq": """
import asyncio
from arq import create_pool
from app.tasks.arq_worker import WorkerSettings
from app.tasks.serialization import serialize

async def main():
    pool = await create_pool(WorkerSettings.redis_settings, job_serializer=serialize)
    for i in range({plain}):
        await pool.enqueue_job("process_data", i, [1.0, 2.0])
    await pool.aclose()

asyncio.run(main())
""",
    "taskiq": """
import asyncio
from app.tasks.taskiq_app import broker
from app.tasks.taskiq_tasks import process_data

async def main():
    await broker.startup()
    for i in range({plain}):
        await process_data.kiq(i, [1.0, 2.0])
    await broker.shutdown()

asyncio.run(main())
""",
}

# KEDA's rabbitmq scaler over AMQP: a passive declare of the queue, its message count
RABBITMQ_COUNT = """
import asyncio, sys, aio_pika

async def main():
    connection = await aio_pika.connect(sys.argv[1], timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(sys.argv[2], passive=True)
        print(queue.declaration_result.message_count)

asyncio.run(main())
"""


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}:\n{result.stderr}"
    return result.stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl is not installed")
    name = f"bgtasks-k8s-{uuid.uuid4().hex[:8]}"
    try:
        rabbitmqctl("add_vhost", name)
    except AssertionError as exc:
        missing(f"rabbitmqctl cannot manage the local RabbitMQ: {exc}")
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def manifest(files: dict[str, str], name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(files[f"deploy/k8s/{name}"])
    return loaded


def keda_value(trigger: dict[str, Any], redis_url: str, amqp_url: str, python: Path) -> int:
    """The trigger's metric, queried as KEDA's scaler queries it."""
    meta = trigger["metadata"]
    if trigger["type"] == "rabbitmq":
        out = subprocess.run(
            [str(python), "-c", RABBITMQ_COUNT, amqp_url, meta["queueName"]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())
    client = redis.Redis.from_url(redis_url, db=int(meta.get("databaseIndex", 0)))
    try:
        if trigger["type"] == "redis":
            return int(client.eval(KEDA_REDIS_COUNT, 1, meta["listName"]))  # type: ignore[arg-type]
        assert trigger["type"] == "redis-streams" and "lagCount" in meta
        major = int(str(client.info("server")["redis_version"]).split(".")[0])
        assert major >= 7, "the lag of a consumer group needs Redis 7+"
        if not client.exists(meta["stream"]):
            return 0
        for group in client.xinfo_groups(meta["stream"]):
            if group["name"].decode() == meta["consumerGroup"]:
                return int(group["lag"])
        return int(client.xlen(meta["stream"]))
    finally:
        client.close()


COMBOS = [
    ("celery", "redis"),
    ("celery", "rabbitmq"),
    ("arq", "redis"),
    ("taskiq", "redis"),
    ("taskiq", "rabbitmq"),
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_trigger_reads_the_queued_tasks_then_zero(
    combo: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    runner, broker = combo
    python = runner_python(runner)
    amqp_python = runner_python("taskiq")  # aio-pika, for the passive declare
    vhost_name = request.getfixturevalue("vhost") if broker == "rabbitmq" else ""
    project = scaffold("layered", tmp_path, "--runner", runner, "--broker", broker)
    files = k8s_files(load_project(project))
    triggers = manifest(files, "worker-scaledobject.yaml")["spec"]["triggers"]
    worker = manifest(files, "worker-deployment.yaml")["spec"]["template"]["spec"]
    command = worker["containers"][0]["command"]
    extra_env = {e["name"]: e["value"] for e in worker["containers"][0].get("env", [])}
    config = manifest(files, "configmap.yaml")["data"]
    secret_names = set(manifest(files, "secret.yaml")["stringData"])
    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server(tmp_path) as redis_url:
        amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost_name}"
        # the settings by the names the manifests give them, pointed at these brokers
        env = {**config, "PYTHONPATH": str(project), "BGTASKS_API_TOKEN": API_TOKEN}
        for name in secret_names:
            if name.endswith(("_URL", "_BACKEND")):
                env[name] = f"{redis_url}/0"
        broker_env = next(n for n in secret_names if "BROKER" in n or n == "REDIS_URL")
        if broker == "rabbitmq":
            broker_env = next(n for n in secret_names if "BROKER" in n)
            env[broker_env] = amqp_url
        script = ENQUEUE[runner].format(
            plain=QUEUED - (PRIORITY_QUEUED if (runner, broker) == ("celery", "redis") else 0),
            priority=PRIORITY_QUEUED if (runner, broker) == ("celery", "redis") else 0,
        )
        full_env = {**os.environ, **env}
        result = subprocess.run(
            [str(python), "-c", script],
            cwd=project,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        path, body = API_ROUTE[runner]
        server, base = serve_app(python, project, "app.main:app", logs / "web.log", env)
        with running(server):
            for i in range(API_QUEUED):
                answer = httpx.post(f"{base}{path}", json=body(i), headers=AUTH, timeout=10)
                assert answer.status_code == 202, answer.text

        def total() -> int:
            return sum(keda_value(t, redis_url, amqp_url, amqp_python) for t in triggers)

        values = [keda_value(t, redis_url, amqp_url, amqp_python) for t in triggers]
        assert sum(values) == QUEUED + API_QUEUED, (triggers, values)
        if (runner, broker) == ("celery", "redis"):
            # priority 5 is kombu's step 3: its own list, which a trigger reads too
            by_key = {t["metadata"]["listName"]: v for t, v in zip(triggers, values, strict=True)}
            assert by_key == {
                "celery": QUEUED - PRIORITY_QUEUED + API_QUEUED,
                "celery\x06\x163": PRIORITY_QUEUED,
                "celery\x06\x166": 0,
                "celery\x06\x169": 0,
            }

        # the worker as the Deployment runs it, from the runner's environment
        bin_dir = str(python.parent)
        worker_env = {**env, **extra_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        proc = start_process(command, project, logs / "worker.log", worker_env)
        with running(proc):
            wait_until(
                lambda: proc.alive() and total() == 0,
                90,
                f"the trigger reading 0 once a worker drained the queue:\n{proc.log()}",
                interval=0.5,
            )
            assert proc.alive(), proc.log()
        summary = {"runner": runner, "broker": broker, "read": values}
        print(json.dumps(summary))

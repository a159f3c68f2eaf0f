"""The scaffolded app under load, per queue runner, against the seed's own endpoints.

For each runner: the `layered` example scaffolded into a temporary folder, served by
uvicorn (one worker, from the runner's own environment under .venvs/) against a private
redis-server, no worker consuming. A load generator keeps 32 requests in flight for a
fixed time against each endpoint of the same app, in turns (so drift on a shared
machine hits them all alike):

- no-op endpoints (`def` and `async def`): the ceiling, same framework, no queue;
- the seed document's endpoints, added to the same app as the seed writes them: for
  celery an `async def` calling `process_order.delay()` on the event loop, for arq the
  `send-email` route whose dependency creates an arq pool per request;
- the generated queue endpoint.

taskiq has no seed endpoint: its queue endpoint is compared with its no-op, and with
arq's queue endpoint measured in the same turns (every runner's app is served at once,
each from its own environment against its own redis-server, and the turns go through
all of their endpoints).

Printed per endpoint: requests per second, p50/p99 latency, the server's CPU time per
request (user + system time of the uvicorn process over the requests it answered: on a
shared machine it moves much less than req/s, which also depends on what else gets the
cores), the ratio to each no-op and to the seed endpoint (arq's queue endpoint for
taskiq), Redis `connected_clients` before and after, and how many messages the queue
holds against how many 2xx answers the endpoint gave.

Then, per runner, the broker made unusable: pointed at a TCP listener that accepts and
never answers, and at a closed port. While 32 requests hit `/health` another 8 keep
hitting the queue endpoint: `/health` p99 says whether the event loop stayed free, and
the queue endpoint's answers (503, and how long they took) whether its wait is bounded.
With RabbitMQ on 127.0.0.1:5672, celery's queue endpoint is also measured with
`--broker rabbitmq` (on a queue of its own that RabbitMQ deletes once unused).

The load comes from wrk when it is installed (`apt-get install wrk`: written in C, it
leaves the CPU to the server), else from an asyncio client in Python, which on a 2-core
machine is itself the bottleneck (the ratio to the ceiling then says little).

    bash .ci/setup-venvs          # the runner environments, once
    apt-get install -y wrk        # optional, recommended
    .venv/bin/python bench/load.py [--seconds 5] [--concurrency 32] [--runner arq]
        [--runner taskiq] [--no-outage] [--no-rabbitmq]

The outage cases run for arq and celery only.

`--with otel,metrics` adds one variant per runner with both features on, its queue
endpoint measured against the app as generated. Its spans are exported as a deployment
would export them (OTEL_TRACES_EXPORTER=otlp, OTLP over HTTP, the SDK's default batching)
to a receiver the bench starts in a process of its own, which answers 200 to every
POST /v1/traces and counts the spans it got: the export's cost is in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import free_port, private_redis, scaffold_runner, wait_port

REPO = Path(__file__).resolve().parents[1]
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "no-op", "seed" or "bgtasks"
    label: str
    path: str
    body: object = None
    counted: bool = False  # each 2xx leaves a message in the Redis list "celery"


ENDPOINTS = {
    "celery": [
        Endpoint("no-op", "no-op `def`", "/bench/noop-sync"),
        Endpoint("no-op", "no-op `async def`", "/bench/noop-async"),
        Endpoint(
            "seed",
            "seed: `async def` + `process_order.delay()`",
            "/bench/seed/process-order/7",
            counted=True,
        ),
        Endpoint(
            "bgtasks",
            "bgtasks `POST /tasks/process-order`",
            "/tasks/process-order",
            {"order_id": 7},
            counted=True,
        ),
    ],
    "arq": [
        Endpoint("no-op", "no-op `async def`", "/bench/noop-async"),
        Endpoint(
            "seed",
            "seed: pool-per-request `send-email`",
            "/bench/seed/send-email?to=ada%40example.com&subject=Hi&body=Hello",
        ),
        Endpoint(
            "bgtasks",
            "bgtasks `POST /tasks/process-data`",
            "/tasks/process-data",
            {"data_id": 7, "values": [1.0, 2.0]},
        ),
    ],
}
ENDPOINTS["taskiq"] = [
    Endpoint("no-op", "no-op `async def`", "/bench/noop-async"),
    Endpoint(
        "bgtasks",
        "bgtasks `POST /tasks/process-data`",
        "/tasks/process-data",
        {"data_id": 7, "values": [1.0, 2.0]},
    ),
]
QUEUE_ENDPOINT = {runner: endpoints[-1] for runner, endpoints in ENDPOINTS.items()}
# the seed endpoints, as the seed document writes them (it has none for taskiq)
SEEDS: dict[str, str] = {}

NOOP_MODULE = '''"""The benchmark's app: the scaffolded app plus no-op and seed endpoints."""

from app.main import app


@app.post("/bench/noop-sync", status_code=202)
def noop_sync() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/bench/noop-async", status_code=202)
async def noop_async() -> dict[str, str]:
    return {"status": "ok"}
'''

# The seed document's celery route, as it writes it: a blocking publish on the loop.
CELERY_SEED = '''
from app.tasks.tasks import process_order as process_order_task


@app.post("/bench/seed/process-order/{order_id}")
async def queue_process_order(order_id: int):
    """Queue order processing task."""
    task = process_order_task.delay(order_id=order_id)

    return {
        "task_id": task.id,
        "status": "queued",
    }
'''

# RabbitMQ: a queue of the bench's own, deleted by RabbitMQ a minute after last use.
CELERY_RABBIT_QUEUE = """
from kombu import Queue

from app.tasks.celery_app import celery_app

celery_app.conf.task_default_queue = "{queue}"
celery_app.conf.task_queues = [
    Queue("{queue}", routing_key="{queue}", queue_arguments={{"x-expires": 60000}})
]
"""

# The seed document's arq dependency and route, as it writes them: a pool per request.
ARQ_SEED = '''
from typing import Annotated

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from fastapi import Depends

from app.core.config import settings


async def get_arq_pool():
    """Get ARQ Redis pool."""
    return await create_pool(
        RedisSettings.from_dsn(settings.REDIS_URL)
    )


async def get_task_queue() -> ArqRedis:
    """Get ARQ task queue dependency."""
    return await get_arq_pool()


TaskQueue = Annotated[ArqRedis, Depends(get_task_queue)]


@app.post("/bench/seed/send-email")
async def queue_email(
    to: str,
    subject: str,
    body: str,
    queue: TaskQueue,
):
    """Queue email with ARQ."""
    job = await queue.enqueue_job(
        "send_email_async",
        to=to,
        subject=subject,
        body=body,
    )

    return {
        "job_id": job.job_id,
        "status": "queued",
    }
'''


SEEDS.update(celery=CELERY_SEED, arq=ARQ_SEED)


# The OTLP/HTTP receiver of the otel variants, run in a runner environment (it has the
# OpenTelemetry protobuf classes to count spans with); GET /count answers the totals.
OTLP_RECEIVER = """
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

totals = {"posts": 0, "spans": 0}


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            totals["posts"] += 1
            totals["spans"] += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
        self.answer(b"")

    def do_GET(self):
        self.answer(json.dumps(totals).encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
"""
EXPORTER_NOTE = "OTLP/HTTP export to a local receiver"


@dataclass(frozen=True)
class Receiver:
    endpoint: str  # what OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set to
    port: int

    def totals(self) -> dict[str, int]:
        answer: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.port}/count").json()
        return answer


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on a free port, in a process of its own."""
    port = free_port()
    python = REPO / ".venvs" / "celery" / "bin" / "python"
    receiver = subprocess.Popen(
        [str(python), "-c", OTLP_RECEIVER, str(port)], start_new_session=True
    )
    try:
        wait_port(port)
        yield Receiver(f"http://127.0.0.1:{port}/v1/traces", port)
    finally:
        os.killpg(receiver.pid, signal.SIGTERM)
        receiver.wait(timeout=20)


def otel_environment(receiver: Receiver) -> dict[str, str]:
    """The OTEL_* variables of a deployment exporting over OTLP/HTTP (SDK defaults for
    batching, sampling and timeouts)."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
    }


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()


def connected_clients(port: int) -> int:
    out = redis_cli(port, "info", "clients")
    line = next(x for x in out.splitlines() if x.startswith("connected_clients:"))
    return int(line.split(":")[1]) - 1  # redis-cli itself is one of them


WRK_SCRIPT = """
wrk.method = os.getenv("BENCH_METHOD")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
if body ~= "" then wrk.body = body end
"""
TOKEN = "bench-" + uuid.uuid4().hex


@dataclass
class Figures:
    rate: float
    p50: float
    p99: float
    answered: int  # requests answered 2xx
    cpu_us: float = 0.0  # the server's CPU time per answered request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _milliseconds(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def wrk(url: str, body: object, seconds: float, concurrency: int, method: str) -> Figures:
    """Requests per second, p50/p99 ms and answers counted by wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {
        **os.environ,
        "BENCH_BODY": json.dumps(body) if body is not None else "",
        "BENCH_METHOD": method,
        "BENCH_TOKEN": TOKEN,
    }
    result = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency"]
        + ["-s", script.name, url],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    )
    os.unlink(script.name)
    out = result.stdout
    if result.returncode or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}{result.stderr}")
    lines = out.splitlines()
    rate = float(next(x for x in lines if x.startswith("Requests/sec:")).split()[1])
    answered = int(next(x for x in lines if " requests in " in x).split()[0])
    percentiles = {
        parts[0]: _milliseconds(parts[1])
        for parts in (line.split() for line in lines)
        if len(parts) == 2 and parts[0] in ("50%", "99%")
    }
    return Figures(rate, percentiles["50%"], percentiles["99%"], answered)


def measure(
    url: str, body: object, seconds: float, concurrency: int, method: str = "POST"
) -> Figures:
    if shutil.which("wrk"):
        return wrk(url, body, seconds, concurrency, method)
    latencies = asyncio.run(hammer(url, body, seconds, concurrency, method))
    return Figures(
        len(latencies) / seconds,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
        len(latencies),
    )


async def hammer(
    url: str, body: object, seconds: float, concurrency: int, method: str
) -> list[float]:
    """Keep `concurrency` requests in flight for `seconds`; return each latency (s)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def one_connection() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await client.request(method, url, json=body)
                if response.status_code >= 300:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    if errors:
        raise SystemExit(f"{errors} requests to {url} failed")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def prepare(runner: str, workdir: Path, *init_args: str) -> tuple[Path, Path]:
    python, project = scaffold_runner(runner, workdir, *init_args)
    (project / "bench_app.py").write_text(NOOP_MODULE + SEEDS.get(runner, ""))
    return python, project


@dataclass(frozen=True)
class Server:
    base: str  # its URL
    pid: int


@contextlib.contextmanager
def serve(python: Path, project: Path, env: dict[str, str]) -> Iterator[Server]:
    """uvicorn (one worker) serving bench_app:app."""
    web_port = free_port()
    # the server's log (a traceback per refused publish in the outage cases) stays out
    # of the table
    log = (project / f"uvicorn-{web_port}.log").open("wb")
    web = subprocess.Popen(
        [str(python), "-m", "uvicorn", "bench_app:app", "--port", str(web_port)]
        + ["--log-level", "warning", "--no-access-log"],
        cwd=project,
        env={**env, "BGTASKS_API_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(web_port, timeout=60)
        yield Server(f"http://127.0.0.1:{web_port}", web.pid)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=20)
        log.close()


@dataclass
class App:
    runner: str
    server: Server
    redis_port: int
    endpoints: list[Endpoint]
    clients_before: int = 0
    clients_after: int = 0
    label: str = ""  # a variant's name in the table (e.g. "arq --without dashboard")
    receiver: Receiver | None = None  # where its spans go (an otel variant)

    @property
    def name(self) -> str:
        return self.label or self.runner


def bench_runners(
    runners: list[str],
    seconds: float,
    concurrency: int,
    repeats: int,
    workdir: Path,
    without: list[str] | None = None,
    with_: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Every runner's app served at once; the turns go through all their endpoints. Each
    feature in `without` (`with_`: a name, or names joined by commas for one variant with
    all of them) adds, per runner, the same app scaffolded without (with) it, measured on
    the queue endpoints in the same turns: a before/after in one run. Returns the table's
    rows and the notes on the otel variants' exports."""
    with contextlib.ExitStack() as stack:
        apps = []
        variants: list[tuple[str, tuple[str, ...], str]] = [(r, (), "") for r in runners]
        if without or with_:
            # the baseline of the variants: as generated, served alone (the main app
            # also serves the seed's endpoints, whose clients keep threads of their own)
            variants += [(r, (), f"{r} as generated") for r in runners]
        variants += [(r, ("--without", f), "") for f in without or () for r in runners]
        variants += [(r, ("--with", f), "") for f in with_ or () for r in runners]
        for runner, init_args, named in variants:
            label = named or (" ".join((runner, *init_args)) if init_args else "")
            folder = workdir / (label.replace(" ", "_") or runner)
            folder.mkdir()
            python, project = prepare(runner, folder, *init_args)
            redis_port, env = stack.enter_context(private_redis(project))
            receiver = None
            if "--with" in init_args and "otel" in init_args[-1].split(","):
                receiver = stack.enter_context(otlp_receiver())
                env = {**env, **otel_environment(receiver)}
                label = f"{label} ({EXPORTER_NOTE})"
            server = stack.enter_context(serve(python, project, env))
            endpoints = ENDPOINTS[runner]
            if label:
                endpoints = [e for e in endpoints if e.kind == "bgtasks"]
            apps.append(App(runner, server, redis_port, endpoints, label=label, receiver=receiver))
        # warm up every endpoint until each threadpool thread has its connections
        for app in apps:
            for endpoint in app.endpoints:
                url = app.server.base + endpoint.path
                measure(url, endpoint.body, min(seconds, 3), concurrency)
            app.clients_before = connected_clients(app.redis_port)
        runs: dict[tuple[str, str], list[Figures]] = {
            (app.name, e.label): [] for app in apps for e in app.endpoints
        }
        queued: dict[tuple[str, str], tuple[int, int]] = {}
        for _ in range(repeats):
            for app in apps:
                for endpoint in app.endpoints:
                    key = (app.name, endpoint.label)
                    length = int(redis_cli(app.redis_port, "llen", "celery") or 0)
                    cpu = cpu_seconds(app.server.pid)
                    url = app.server.base + endpoint.path
                    result = measure(url, endpoint.body, seconds, concurrency)
                    result.cpu_us = (cpu_seconds(app.server.pid) - cpu) / result.answered * 1e6
                    runs[key].append(result)
                    added = int(redis_cli(app.redis_port, "llen", "celery") or 0) - length
                    old = queued.get(key, (0, 0))
                    queued[key] = (old[0] + added, old[1] + result.answered)
        for app in apps:
            app.clients_after = connected_clients(app.redis_port)
        notes = []
        if any(app.receiver for app in apps):
            time.sleep(6)  # the SDK's batch processor exports every 5 s
        for app in apps:
            if app.receiver is None:
                continue
            totals = app.receiver.totals()
            answered = sum(f.answered for e in app.endpoints for f in runs[(app.name, e.label)])
            notes.append(
                f"{app.name}: OTEL_TRACES_EXPORTER=otlp to {app.receiver.endpoint}; "
                f"{totals['spans']} spans received in {totals['posts']} POSTs, for "
                f"{answered} measured requests (warm-up included in the spans)"
            )

    def ratio(one: tuple[str, str], other: tuple[str, str]) -> str:
        pairs = zip(runs[one], runs[other], strict=True)
        return f"{statistics.median(a.rate / b.rate for a, b in pairs):.2f}"

    rows = []
    for app in apps:
        noops = [(app.name, e.label) for e in app.endpoints if e.kind == "no-op"]
        seeds = [(app.name, e.label) for e in app.endpoints if e.kind == "seed"]
        if app.name == "taskiq" and "arq" in runners:
            seeds = [("arq", QUEUE_ENDPOINT["arq"].label)]
        if app.label:  # a variant: against the baseline served the same way
            seeds = [(f"{app.runner} as generated", QUEUE_ENDPOINT[app.runner].label)]
        for endpoint in app.endpoints:
            key = (app.name, endpoint.label)
            figures = runs[key]
            rates = [f.rate for f in figures]
            messages = ""
            if endpoint.counted:
                added, answered = queued[key]
                messages = f"{added} / {answered}"
            versus = ratio(key, seeds[0]) if seeds else ""
            if app.label.endswith("as generated"):
                versus = ""
            elif app.label:
                versus = f"{versus} (vs as generated)"
            elif seeds and seeds[0][0] != app.runner:  # taskiq, against arq
                versus = f"{versus} (arq's queue endpoint)" if endpoint.kind == "bgtasks" else ""
            rows.append(
                f"| {app.name} | {endpoint.label} | {statistics.median(rates):.0f} "
                f"({min(rates):.0f}-{max(rates):.0f}) "
                f"| {statistics.median(f.p50 for f in figures):.1f} "
                f"| {statistics.median(f.p99 for f in figures):.1f} "
                f"| {statistics.median(f.cpu_us for f in figures):.0f} "
                f"| {' / '.join(ratio(key, noop) for noop in noops)} "
                f"| {versus} | {app.clients_before} -> {app.clients_after} | {messages} |"
            )
    return rows, notes


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A TCP listener that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def hit_queue(url: str, body: object, stop: threading.Event, out: list[tuple[int, float]]) -> None:
    """Keep sending queue requests until `stop`; record (status, seconds) of each."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(timeout=60, headers=headers) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = client.post(url, json=body).status_code
            except httpx.HTTPError:
                status = 0
            out.append((status, time.monotonic() - started))


# the setting that points each runner's web app at its broker
OUTAGE_KEY = {"celery": "CELERY_BROKER_URL", "arq": "REDIS_URL"}


def bench_outage(runner: str, seconds: float, concurrency: int, workdir: Path) -> list[str]:
    python, project = prepare(runner, workdir)
    endpoint = QUEUE_ENDPOINT[runner]
    rows = []
    with private_redis(project) as (_redis_port, env):
        for case in ("blackhole", "closed port"):
            with contextlib.ExitStack() as stack:
                port = stack.enter_context(blackhole()) if case == "blackhole" else free_port()
                dead = f"redis://127.0.0.1:{port}/0"
                key = OUTAGE_KEY[runner]
                base = stack.enter_context(serve(python, project, {**env, key: dead})).base
                stop = threading.Event()
                answers: list[tuple[int, float]] = []
                threads = [
                    threading.Thread(
                        target=hit_queue, args=(base + endpoint.path, endpoint.body, stop, answers)
                    )
                    for _ in range(8)
                ]
                for thread in threads:
                    thread.start()
                time.sleep(0.5)  # the queue requests are now stuck on the broker
                try:
                    health = measure(base + "/health", None, seconds, concurrency, method="GET")
                finally:
                    stop.set()
                    for thread in threads:
                        thread.join(90)
            statuses = sorted({status for status, _ in answers})
            times = [t for _, t in answers]
            rows.append(
                f"| {runner} | {case} | {health.rate:.0f} | {health.p50:.1f} | {health.p99:.1f} "
                f"| {len(answers)} answers, status {statuses} "
                f"| {statistics.median(times):.2f} / {max(times):.2f} |"
            )
    return rows


def bench_rabbitmq(seconds: float, concurrency: int, repeats: int, workdir: Path) -> list[str]:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), 1):
        python, project = prepare("celery", workdir / "rabbitmq", "--broker", "rabbitmq")
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        (project / "bench_app.py").write_text(
            CELERY_RABBIT_QUEUE.format(queue=queue) + NOOP_MODULE + CELERY_SEED
        )
        with private_redis(project) as (_port, env):
            env = {**env, "CELERY_BROKER_URL": RABBITMQ_URL}
            with serve(python, project, env) as server:
                base = server.base
                endpoint = QUEUE_ENDPOINT["celery"]
                measure(base + endpoint.path, None, min(seconds, 3), concurrency)
                figures = []
                for _ in range(repeats):
                    cpu = cpu_seconds(server.pid)
                    figures.append(measure(base + endpoint.path, None, seconds, concurrency))
                    spent = cpu_seconds(server.pid) - cpu
                    figures[-1].cpu_us = spent / figures[-1].answered * 1e6
        rates = [f.rate for f in figures]
        return [
            f"| celery, RabbitMQ broker | {endpoint.label} | {statistics.median(rates):.0f} "
            f"({min(rates):.0f}-{max(rates):.0f}) "
            f"| {statistics.median(f.p50 for f in figures):.1f} "
            f"| {statistics.median(f.p99 for f in figures):.1f} "
            f"| {statistics.median(f.cpu_us for f in figures):.0f} | | | | all 2xx |"
        ]
    return [
        "| celery, RabbitMQ broker | not reachable on 127.0.0.1:5672: skipped | | | | | | | | |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runner", choices=sorted(ENDPOINTS), action="append")
    parser.add_argument("--no-outage", action="store_true", help="skip the broker outages")
    parser.add_argument("--no-rabbitmq", action="store_true", help="skip the RabbitMQ row")
    parser.add_argument(
        "--with",
        dest="with_",
        action="append",
        metavar="FEATURE",
        help="also measure each runner's queue endpoints scaffolded with FEATURE "
        "(e.g. metrics; otel,metrics for one variant with both, exporting over OTLP to a "
        "local receiver), in the same turns",
    )
    parser.add_argument(
        "--without",
        action="append",
        metavar="FEATURE",
        help="also measure each runner's queue endpoints scaffolded without FEATURE "
        "(e.g. dashboard), in the same turns",
    )
    args = parser.parse_args()
    runners = args.runner or sorted(ENDPOINTS)
    outages: list[str] = []
    rabbit: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = bench_runners(
            runners,
            args.seconds,
            args.concurrency,
            args.runs,
            Path(tmp),
            args.without,
            args.with_,
        )
        for runner in runners:
            if not args.no_outage and runner in OUTAGE_KEY:
                outage_dir = Path(tmp) / f"{runner}-outage"
                outage_dir.mkdir()
                outages += bench_outage(runner, args.seconds, args.concurrency, outage_dir)
        if "celery" in runners and not args.no_rabbitmq:
            rabbit = bench_rabbitmq(args.seconds, args.concurrency, args.runs, Path(tmp))
    client = "wrk" if shutil.which("wrk") else "an asyncio client (install wrk for better figures)"
    print(
        f"\n### {args.concurrency} requests in flight from {client}, {args.seconds:.0f} s per "
        f"endpoint, median of {args.runs} runs (min-max)\n"
    )
    print(
        "| runner | endpoint | req/s | p50 ms | p99 ms | server CPU us/request "
        "| vs no-op (celery: def / async def) | vs seed | Redis clients before -> after "
        "| messages queued / 2xx answers |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows + rabbit:
        print(row)
    if notes:
        print("\notel variants, spans exported with the SDK's default batching:")
        for note in notes:
            print(f"- {note}")
    if outages:
        print(
            f"\n### Broker unusable: /health under {args.concurrency} requests in flight, "
            "8 more on the queue endpoint\n"
        )
        print(
            "| runner | broker | /health req/s | /health p50 ms | /health p99 ms "
            "| queue endpoint | its answer s (median / max) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in outages:
            print(row)
    print("\nthe client shares the 2 cores with the server: compare ratios, not absolute figures")


if __name__ == "__main__":
    main()

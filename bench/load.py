"""The scaffolded app under load, per queue runner.

For each runner: the `layered` example scaffolded into a temporary folder, served by
uvicorn (one worker, from the runner's own environment under .venvs/) against a private
redis-server; a load generator keeps 32 requests in flight for a fixed time against
the queue endpoint and, in the same run, against a no-op endpoint added to the same app
(the ceiling: same framework, same middleware, no queue). Prints requests per second,
p50/p99 latency, the ratio to the ceiling, and Redis `connected_clients` before and after.

The load comes from wrk when it is installed (`apt-get install wrk`: written in C, it
leaves the CPU to the server), else from an asyncio client in Python, which on a 2-core
machine is itself the bottleneck (the ratio to the ceiling then says little).

    bash .ci/setup-venvs          # the runner environments, once
    apt-get install -y wrk        # optional, recommended
    .venv/bin/python bench/load.py [--seconds 5] [--concurrency 32] [--runner arq]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _common import free_port, private_redis, scaffold_runner, wait_port

REPO = Path(__file__).resolve().parents[1]

# per runner: the queue endpoint (method, path, JSON body) and the style of its handler
TARGETS = {
    "celery": ("/tasks/process-order/7", None, "def"),
    "arq": ("/arq-tasks/process-data", {"data_id": 7, "values": [1.0, 2.0]}, "async def"),
}

NOOP_MODULE = '''"""The benchmark's ceiling: the scaffolded app plus no-op endpoints."""

from {app_module} import {app_name} as app


@app.post("/bench/noop-sync", status_code=202)
def noop_sync() -> dict[str, str]:
    return {{"status": "ok"}}


@app.post("/bench/noop-async", status_code=202)
async def noop_async() -> dict[str, str]:
    return {{"status": "ok"}}
'''


def connected_clients(port: int) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "clients"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("connected_clients:"))
    return int(line.split(":")[1]) - 1  # redis-cli itself is one of them


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
"""


def _milliseconds(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def wrk(url: str, body: object, seconds: float, concurrency: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms) measured by wrk."""
    import json

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": json.dumps(body) if body is not None else ""}
    result = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{concurrency}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    )
    os.unlink(script.name)
    out = result.stdout
    if result.returncode or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}{result.stderr}")
    rate = float(next(x for x in out.splitlines() if x.startswith("Requests/sec:")).split()[1])
    percentiles = {
        parts[0]: _milliseconds(parts[1])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 2 and parts[0] in ("50%", "99%")
    }
    return rate, percentiles["50%"], percentiles["99%"]


def measure(url: str, body: object, seconds: float, concurrency: int) -> tuple[float, float, float]:
    if shutil.which("wrk"):
        return wrk(url, body, seconds, concurrency)
    latencies = asyncio.run(hammer(url, body, seconds, concurrency))
    return (
        len(latencies) / seconds,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


async def hammer(url: str, body: object, seconds: float, concurrency: int) -> list[float]:
    """Keep `concurrency` requests in flight for `seconds`; return each latency (s)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one_connection() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await client.post(url, json=body)
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


def bench_runner(
    runner: str, seconds: float, concurrency: int, repeats: int, workdir: Path
) -> list[str]:
    python, project = scaffold_runner(runner, workdir)
    (project / "bench_app.py").write_text(NOOP_MODULE.format(app_module="app.main", app_name="app"))
    with private_redis(project) as (redis_port, env):
        return _measure_app(runner, python, project, redis_port, env, seconds, concurrency, repeats)


def _measure_app(
    runner: str,
    python: Path,
    project: Path,
    redis_port: int,
    env: dict[str, str],
    seconds: float,
    concurrency: int,
    repeats: int,
) -> list[str]:
    web_port = free_port()
    web = subprocess.Popen(
        [
            str(python),
            "-m",
            "uvicorn",
            "bench_app:app",
            "--port",
            str(web_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=project,
        env=env,
        start_new_session=True,
    )
    rows = []
    try:
        wait_port(web_port)
        base = f"http://127.0.0.1:{web_port}"
        path, body, style = TARGETS[runner]
        noop = "/bench/noop-sync" if style == "def" else "/bench/noop-async"
        # warm up both until every threadpool thread has its connections
        measure(base + noop, None, seconds, concurrency)
        measure(base + path, body, seconds, concurrency)
        before = connected_clients(redis_port)
        runs: dict[str, list[tuple[float, float, float]]] = {"no-op": [], "queue": []}
        ratios = []
        for _ in range(repeats):  # alternate, so drift on a shared machine hits both
            for label, url, payload in (("no-op", base + noop, None), ("queue", base + path, body)):
                runs[label].append(measure(url, payload, seconds, concurrency))
            ratios.append(runs["queue"][-1][0] / runs["no-op"][-1][0])
        after = connected_clients(redis_port)
        for label, endpoint in (("no-op", f"no-op {style}"), ("queue", f"queue {path}")):
            rates = [r[0] for r in runs[label]]
            p50 = statistics.median(r[1] for r in runs[label])
            p99 = statistics.median(r[2] for r in runs[label])
            ratio = statistics.median(ratios) if label == "queue" else 1.0
            rows.append(
                f"| {runner} | {endpoint} | {statistics.median(rates):.0f} "
                f"({min(rates):.0f}-{max(rates):.0f}) | {p50:.1f} | {p99:.1f} | {ratio:.2f} | "
                f"{before} -> {after} |"
            )
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=20)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runner", choices=sorted(TARGETS), action="append")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runner in args.runner or sorted(TARGETS):
            rows += bench_runner(runner, args.seconds, args.concurrency, args.runs, Path(tmp))
    client = "wrk" if shutil.which("wrk") else "an asyncio client (install wrk for better figures)"
    print(
        f"\n### {args.concurrency} requests in flight from {client}, {args.seconds:.0f} s per "
        f"endpoint, median of {args.runs} runs (min-max)\n"
    )
    print(
        "| runner | endpoint | req/s | p50 ms | p99 ms | vs no-op | Redis clients before -> after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print("\nthe client shares the 2 cores with the server: compare ratios, not absolute figures")


if __name__ == "__main__":
    main()

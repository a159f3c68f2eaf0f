"""Scale-out per queue runner: two web processes, two workers, one scheduler, one Redis.

The scaffolded `layered` example grows two tasks with `bgtasks add-task`: `count_hit`
(with a route) and `tick` (every 2 s, no route). Their generated bodies are edited here to
count each run in Redis (HINCRBY of a hash field per task id), so "exactly once" is read
from Redis, not from logs. 1,000 tasks go through both web processes in turn, 32 requests
at a time; each must run once, the broker must hold nothing left to redeliver, and a
sample of statuses must read the same from either web process.

Schedules: celery runs one `celery beat`; arq has no separate scheduler, each worker
enqueues its cron jobs under a job id that names the slot (`cron:tick:<ms>`), so the
second worker's enqueue of a slot is refused while the first one's job or result exists.
Each fire must run exactly once, and fires must come one per 2 s period.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    Proc,
    add_task,
    missing,
    redis_server,
    runner_python,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

TASKS = 1000
CONCURRENCY = 32
PERIOD = 2  # seconds between two fires of `tick`
SAMPLE = 20
API_TOKEN = "scale-out-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
RUNS_KEY = "e2e:runs"
TICKS_KEY = "e2e:ticks"

# where the counting line goes in each generated body (after its first log line)
COUNTING = {
    "celery": (
        "app/tasks/tasks.py",
        '    logger.info("{name}: attempt %d", self.request.retries + 1)\n',
        "    registry.client().hincrby({key!r}, self.request.id, 1)\n",
    ),
    "arq": (
        "app/tasks/arq_tasks.py",
        '    logger.info("{name}: try %d", ctx["job_try"])\n',
        '    await ctx["redis"].hincrby({key!r}, ctx["job_id"], 1)\n',
    ),
}
# every runner's router answers the same surface, under the same prefix
ROUTE = "/tasks"
BEAT_SEND = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
    r"Scheduler: Sending due task tick \(app\.tasks\.tasks\.tick\)",
    re.MULTILINE,
)


def count_runs(project: Path, runner: str, name: str, key: str) -> None:
    """Make the added task `name` count each of its runs in Redis under `key`."""
    rel, anchor, line = COUNTING[runner]
    path = project / rel
    text = path.read_text()
    anchor = anchor.format(name=name)
    assert text.count(anchor) == 1, f"{anchor!r} not once in {rel}"
    path.write_text(text.replace(anchor, anchor + line.format(key=key)))


def redis_cli(url: str, *args: str) -> list[str]:
    result = subprocess.run(
        ["redis-cli", "-u", url, "--raw", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return result.stdout.splitlines()


def counts(url: str, key: str) -> dict[str, int]:
    flat = redis_cli(url, "HGETALL", key)
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}


def hlen(url: str, key: str) -> int:
    return int(redis_cli(url, "HLEN", key)[0])


async def queue_all(bases: list[str], path: str) -> list[str]:
    """POST TASKS tasks, alternating between the web processes, CONCURRENCY at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=30, headers=HEADERS, limits=limits) as client:

        async def one(n: int) -> str:
            async with limit:
                url = f"{bases[n % len(bases)]}{path}"
                response = await client.post(url, json={"n": n})
            assert response.status_code == 202, (url, response.status_code, response.text)
            return str(response.json()["task_id"])

        return list(await asyncio.gather(*(one(n) for n in range(TASKS))))


def status(base: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}{ROUTE}/status/{task_id}", headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class Processes:
    """Starts the runner's processes; every one of them is stopped on exit."""

    def __init__(self, stack: ExitStack, python: Path, project: Path, logs: Path) -> None:
        self.stack, self.python, self.project, self.logs = stack, python, project, logs
        self.starting: list[tuple[str, Proc, str]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], ready: str) -> Proc:
        """Start `cmd`; wait_ready() waits for `ready` in its log (they start in parallel)."""
        proc = start_process(cmd, self.project, self.logs / f"{name}.log", env)
        self.stack.callback(proc.stop)
        self.starting.append((name, proc, ready))
        return proc

    def wait_ready(self) -> None:
        for name, proc, ready in self.starting:

            def up(proc: Proc = proc, name: str = name, ready: str = ready) -> bool:
                if not proc.alive():
                    pytest.fail(f"{name} exited:\n{proc.log()}")
                return ready in proc.log()

            wait_until(up, 30, f"{name} ready")
        self.starting.clear()

    def web(self, name: str, env: dict[str, str]) -> str:
        proc, base = serve_app(
            self.python, self.project, "app.main:app", self.logs / f"{name}.log", env
        )
        self.stack.callback(proc.stop)
        return base


def start_celery(procs: Processes, env: dict[str, str]) -> tuple[list[Proc], Proc]:
    celery = [str(procs.python), "-m", "celery", "-A", "app.tasks.celery_app"]
    workers = [
        procs.start(
            f"worker-{i}",
            [
                *celery,
                "worker",
                *("-P", "prefork", "-c", "2", "--loglevel=info"),
                *("-n", f"scale-{i}-{uuid.uuid4().hex[:6]}@%h"),
                "--without-mingle",
                "--without-gossip",
            ],
            env,
            " ready.",
        )
        for i in (1, 2)
    ]
    beat = procs.start(
        "beat",
        [*celery, "beat", "--loglevel=info", "--schedule", str(procs.logs / "beat-schedule")],
        env,
        "took the beat lock",
    )
    return workers, beat


def start_arq(procs: Processes, env: dict[str, str]) -> list[Proc]:
    arq = [str(procs.python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"]
    return [procs.start(f"worker-{i}", arq, env, "Starting worker") for i in (1, 2)]


def beat_sends(log: str) -> list[float]:
    """When beat sent `tick`, from its log lines (seconds since the epoch)."""
    return [
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for stamp in BEAT_SEND.findall(log)
    ]


def check_celery_ticks(beat: Proc, results_url: str) -> int:
    """Stop beat, then: each send ran once, and sends came one per period."""
    beat.stop()
    sends = beat_sends(beat.log())
    assert len(sends) >= 3, beat.log()
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    # one fire per period: no period without one, none with two
    assert all(PERIOD * 0.5 < gap < PERIOD * 1.5 for gap in gaps), gaps
    wait_until(
        lambda: hlen(results_url, TICKS_KEY) >= len(sends),
        30,
        f"the {len(sends)} ticks beat sent to run",
    )
    time.sleep(0.5)  # a duplicate would show up in this time
    ticks = counts(results_url, TICKS_KEY)
    assert len(ticks) == len(sends), (len(ticks), len(sends))
    assert set(ticks.values()) == {1}, ticks
    return len(sends)


def check_arq_ticks(url: str) -> int:
    """Each cron slot ran once, and slots came one per period, with none skipped."""
    # a slot after the burst has run: every earlier one has been taken by then
    now_ms = time.time() * 1000
    wait_until(
        lambda: any(int(j.rsplit(":", 1)[1]) > now_ms for j in counts(url, TICKS_KEY)),
        PERIOD * 3,
        "a cron slot after the burst to run",
    )
    time.sleep(0.5)  # a duplicate would show up in this time
    ticks = counts(url, TICKS_KEY)
    assert set(ticks.values()) == {1}, ticks
    slots = sorted(int(job_id.rsplit(":", 1)[1]) for job_id in ticks)
    assert all(job_id.startswith("cron:tick:") for job_id in ticks), ticks
    assert len(slots) >= 3, slots
    # slot ids are exact: consecutive slots are one period apart, none missing or doubled
    assert {b - a for a, b in zip(slots, slots[1:], strict=False)} == {PERIOD * 1000}, slots
    return len(slots)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if shutil.which("redis-cli") is None:
        missing("redis-cli is not installed")
    with redis_server(tmp_path) as url:
        yield url


@pytest.mark.parametrize("runner", ["celery", "arq"])
def test_two_web_two_workers_one_scheduler(runner: str, tmp_path: Path, redis_url: str) -> None:
    python = runner_python(runner)
    project = scaffold("layered", tmp_path, "--runner", runner)
    add_task(project, "count_hit", "--arg", "n:int")
    add_task(project, "tick", "--every", str(PERIOD), "--no-route")
    count_runs(project, runner, "count_hit", RUNS_KEY)
    count_runs(project, runner, "tick", TICKS_KEY)
    logs = tmp_path / "logs"
    logs.mkdir()
    broker_url = f"{redis_url}/0"
    if runner == "celery":
        results_url = f"{redis_url}/1"
        env = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": results_url}
    else:
        results_url = broker_url
        env = {"REDIS_URL": broker_url, "PYTHONPATH": str(project)}
    env["BGTASKS_API_TOKEN"] = API_TOKEN

    with ExitStack() as stack:
        procs = Processes(stack, python, project, logs)
        beat = None
        if runner == "celery":
            workers, beat = start_celery(procs, env)
        else:
            workers = start_arq(procs, env)
        bases = [procs.web("web-1", env), procs.web("web-2", env)]
        procs.wait_ready()

        started = time.monotonic()
        ids = asyncio.run(queue_all(bases, f"{ROUTE}/count-hit"))
        queued_s = time.monotonic() - started
        assert len(set(ids)) == TASKS

        def all_ran() -> bool:
            for worker in workers:
                if not worker.alive():
                    pytest.fail(f"a worker exited:\n{worker.log()[-3000:]}")
            return hlen(results_url, RUNS_KEY) >= TASKS

        wait_until(all_ran, 90, f"{TASKS} tasks to run", interval=0.25)
        drained_s = time.monotonic() - started

        # nothing left that the broker could hand out again
        if runner == "celery":
            # (a tick passes through both in milliseconds, every PERIOD)
            wait_until(
                lambda: redis_cli(broker_url, "EXISTS", "unacked", "celery") == ["0"],
                15,
                "every message acknowledged and the queue empty",
            )
        else:

            def settled() -> bool:
                # Tasks only: arq keeps a cron job's in-progress key for a while after
                # it ran (another guard against a second run of its slot), and enqueues
                # the next slot's job ahead of time.
                keys = redis_cli(broker_url, "KEYS", "arq:in-progress:*")
                queued = redis_cli(broker_url, "ZRANGE", "arq:queue", "0", "-1")
                return not [j for j in keys + queued if j and "cron:tick:" not in j]

            wait_until(settled, 15, "no task left queued or in progress")
        runs = counts(results_url, RUNS_KEY)
        assert set(runs) == set(ids), "runs of ids never issued, or issued ids never run"
        twice = {task_id: n for task_id, n in runs.items() if n != 1}
        assert not twice, f"{len(twice)} tasks ran more than once: {list(twice.items())[:5]}"
        assert sum(runs.values()) == TASKS

        # either web process reads the same status for the same task
        for task_id in ids[:: TASKS // SAMPLE]:
            first, second = (status(base, task_id) for base in bases)
            assert first == second, (first, second)
            assert (first["status"], first["success"]) == ("complete", True), first
            assert isinstance(first["result"], dict) and "n" in first["result"], first

        if beat is not None:
            fires = check_celery_ticks(beat, results_url)
        else:
            fires = check_arq_ticks(results_url)
        for worker in workers:
            assert "Traceback" not in worker.log(), worker.log()[-3000:]
    print(
        f"\n{runner}: {TASKS} queued through 2 web processes in {queued_s:.1f}s, "
        f"all run by {drained_s:.1f}s; {fires} scheduled fires, each run once"
    )

"""`init --runner taskiq` under pressure: a full queue, two schedulers, a slow mail server.

Each test starts its own private redis-server, uvicorn serving the scaffolded `layered`
example and the `taskiq` processes it needs (from .venvs/taskiq); the SMTP sinks are
aiosmtpd servers in this process. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.harness import (
    Proc,
    add_task,
    free_port,
    redis_server,
    runner_python,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

TOKEN = "e2e-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
BROKER = "app.tasks.taskiq_app:broker"
SCHEDULER = "app.tasks.taskiq_app:scheduler"
TASKS = "app.tasks.taskiq_tasks"
STREAM = "bgtasks:taskiq"
MAX_QUEUED = 20
SLOW_REPLY = 12.0  # seconds the slow sink takes to answer the end of a message
LANES_KEY = "e2e:lanes"

# `lane` ticks every 2 s from two schedule entries that differ only in their argument;
# each run appends its time to a Redis list per lane
LANE_SCHEDULE = (
    'schedule=[{"interval": 2, "kwargs": {"lane": 1}}, {"interval": 2, "kwargs": {"lane": 2}}]'
)
LANE_BODY = (
    "    async with redis_client() as redis:\n"
    f'        await redis.rpush(f"{LANES_KEY}:{{lane}}", time.time())\n'
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("taskiq-delivery")
    project = scaffold("layered", root, "--runner", "taskiq")
    add_task(project, "lane", "--arg", "lane:int", "--no-route")
    tasks = project / "app/tasks/taskiq_tasks.py"
    source = tasks.read_text()
    name = '    task_name="lane",\n'
    assert name in source, source[-1500:]
    source = source.replace(name, f"{name}    {LANE_SCHEDULE},\n")
    log_line = '    logger.info("lane task %s", control.task_id)\n'
    assert log_line in source, source[-1500:]
    tasks.write_text(source.replace(log_line, log_line + LANE_BODY))
    return project


class Stack:
    """Redis, uvicorn and any taskiq processes, for one test."""

    def __init__(self, project: Path, logs: Path, redis_url: str, env: dict[str, str]):
        self.python = runner_python("taskiq")
        self.project = project
        self.logs = logs
        self.redis = redis.Redis.from_url(redis_url)
        self.env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": f"{redis_url}/0",
            "BGTASKS_API_TOKEN": TOKEN,
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "shop@example.com",
            "PYTHONPATH": str(project),
            **env,
        }
        self.procs: list[Proc] = []
        self.base = ""

    def serve(self) -> None:
        api, self.base = serve_app(
            self.python, self.project, "app.main:app", self.logs / "uvicorn.log", self.env
        )
        self.procs.append(api)

    def start(self, name: str, *argv: str) -> Proc:
        taskiq = str(self.python.parent / "taskiq")
        proc = start_process(
            [taskiq, *argv], cwd=self.project, log_path=self.logs / f"{name}.log", env=self.env
        )
        self.procs.append(proc)
        ready = "Listening started" if argv[0] == "worker" else "Startup completed"
        wait_until(lambda: ready in proc.log() or not proc.alive(), 30, f"taskiq {name}")
        assert proc.alive(), proc.log()
        return proc

    def worker(self, name: str = "worker") -> Proc:
        return self.start(name, "worker", BROKER, TASKS, "--workers", "1")

    def scheduler(self, name: str) -> Proc:
        return self.start(name, "scheduler", SCHEDULER, TASKS, "--update-interval", "1")

    def post(self, path: str, payload: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/tasks{path}", json=payload, headers=HEADERS, timeout=30)

    def status(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/tasks/status/{task_id}", headers=HEADERS, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_complete(self, task_id: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.status(task_id)
            return body if body["status"] == "complete" else None

        logs = "\n".join(proc.log()[-3000:] for proc in self.procs[1:])
        result: dict[str, Any] = wait_until(done, timeout, f"task {task_id} complete\n{logs}")
        return result


@contextlib.contextmanager
def stack(project: Path, tmp_path: Path, **env: str) -> Iterator[Stack]:
    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server(tmp_path) as redis_url:
        built = Stack(project, logs, redis_url, env)
        try:
            yield built
        finally:
            for proc in reversed(built.procs):
                proc.stop()
            built.redis.close()


def test_a_full_queue_refuses_new_tasks_and_loses_none(project: Path, tmp_path: Path) -> None:
    """No worker: 30 tasks for room for 20. Twenty are queued (202), ten refused (503)
    with nothing written; a worker then runs all twenty, none lost, and trims what it
    acknowledged."""
    with stack(project, tmp_path, TASKIQ_MAX_QUEUED=str(MAX_QUEUED)) as s:
        s.serve()
        with ThreadPoolExecutor(10) as pool:
            answers = list(
                pool.map(
                    lambda n: s.post("/process-data", {"data_id": n, "values": [n]}),
                    range(1, 31),
                )
            )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202] * MAX_QUEUED + [503] * 10, [a.text for a in answers]
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["detail"] == f"queue full: {MAX_QUEUED} tasks waiting"
        # nothing of a refused task was written: 20 messages, 20 status records
        assert s.redis.xlen(STREAM) == MAX_QUEUED
        assert len(list(s.redis.scan_iter("bgtasks:taskiq:task:*"))) == MAX_QUEUED
        queued = {
            answer.json()["task_id"]: n
            for n, answer in enumerate(answers, start=1)
            if answer.status_code == 202
        }

        s.worker()
        for task_id, n in queued.items():
            body = s.wait_complete(task_id, 30)
            assert body["success"] is True, body
            assert body["result"]["data_id"] == n and body["result"]["total"] == n

        # acknowledged entries are trimmed by the worker (every 10 s), and the group's
        # lag is still known afterwards, so the queue has room again
        wait_until(lambda: s.redis.xlen(STREAM) <= 1, 30, "acknowledged entries trimmed")
        (group,) = s.redis.xinfo_groups(STREAM)
        assert group["lag"] == 0 and group["pending"] == 0, group
        again = s.post("/process-data", {"data_id": 99, "values": [1]})
        assert again.status_code == 202, again.text
        assert s.wait_complete(again.json()["task_id"], 30)["success"] is True


def _lane_runs(s: Stack, lane: int) -> list[float]:
    return [float(value) for value in s.redis.lrange(f"{LANES_KEY}:{lane}", 0, -1)]


def test_two_schedulers_send_each_slot_once_across_a_failover(
    project: Path, tmp_path: Path
) -> None:
    """Two schedulers; the one that just sent a firing is SIGKILLed. Each of the two
    schedule entries (same task, same interval, another argument) runs once per 2 s
    slot before and after: never twice in a slot, never skipped for the other entry."""
    with stack(project, tmp_path) as s:
        s.worker()
        first = s.scheduler("scheduler-1")
        time.sleep(1.5)  # another phase within the slot than the first one
        s.scheduler("scheduler-2")
        started = time.time()

        def just_sent() -> bool:
            # a send that was not cancelled (cancelled: the other one had claimed it)
            time.sleep(0.3)
            log = first.log()
            sent = log.count("Sending task lane") - log.count("has been cancelled")
            return sent > baseline

        time.sleep(6)
        log = first.log()
        baseline = log.count("Sending task lane") - log.count("has been cancelled")
        wait_until(just_sent, 20, f"scheduler-1 sending a firing\n{first.log()[-2000:]}")
        os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait(timeout=10)
        time.sleep(10)
        ended = time.time()

        for lane in (1, 2):
            runs = [t for t in _lane_runs(s, lane) if started <= t <= ended]
            slots = [int(t // 2) for t in runs]
            assert len(slots) == len(set(slots)), (lane, runs)  # never twice in a slot
            gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
            assert all(gap > 0.9 for gap in gaps), (lane, gaps)
            # one run per 2 s slot, give or take the slots at both ends and the handover
            expected = (ended - started) / 2
            assert expected - 3 <= len(runs) <= expected + 1, (lane, len(runs), expected)


class MailSink:
    """An SMTP server that keeps every message, then answers its end after `delay`
    seconds, or drops the connection without answering (subject "drop")."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.original_content)
        self.messages.append(message)
        if message["Subject"] == "drop":
            server.transport.close()
            return "250 OK"
        await asyncio.sleep(self.delay)
        return "250 OK"


@contextlib.contextmanager
def mail_sink(delay: float) -> Iterator[tuple[MailSink, int]]:
    from aiosmtpd.controller import Controller

    sink, port = MailSink(delay), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def test_a_slow_mail_server_gets_one_copy(project: Path, tmp_path: Path) -> None:
    """The server takes 12 s to answer the end of the message (the SMTP timeout is
    10 s): the task waits for it and sends one copy; a server that drops the connection
    after receiving the message is not sent it again either."""
    with (
        mail_sink(SLOW_REPLY) as (sink, port),
        stack(
            project,
            tmp_path,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(port),
            SMTP_TIMEOUT="10",
            TASKIQ_TASK_TIMEOUT="60",
        ) as s,
    ):
        s.serve()
        s.worker()
        s.scheduler("scheduler")  # sends the retries, if any were scheduled
        payload = {"to": "ada@example.com", "subject": "slow", "body": "Hello"}
        response = s.post("/send-email", payload)
        assert response.status_code == 202, response.text
        body = s.wait_complete(response.json()["task_id"], SLOW_REPLY + 20)
        assert body["success"] is True and body["tries"] == 1, body
        assert [m["Subject"] for m in sink.messages] == ["slow"]

        dropped = s.post("/send-email", {**payload, "subject": "drop"})
        assert dropped.status_code == 202, dropped.text
        body = s.wait_complete(dropped.json()["task_id"], 30)
        assert body["success"] is False and body["error"] == "unconfirmed", body
        assert body["tries"] == 1, body
        time.sleep(2)
        assert [m["Subject"] for m in sink.messages] == ["slow", "drop"]

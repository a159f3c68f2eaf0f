"""The generated arq stack against what operators and attackers do to it.

A private redis-server this module stops and starts again on the same port, a real
`arq` worker subprocess and uvicorn (both from .venvs/arq) serving the scaffolded
`layered` example. Tests run in file order on one stack.

The scaffolded auth hook is filled in as its docstring asks (the caller's identity
from a header here), so two callers can be told apart over one loopback address.
"""

from __future__ import annotations

import json
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
    AUTH,
    Proc,
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

# the hook's identity, made a header of the test's choosing (behind the token check)
GENERATED_IDENTITY = "    return api_token_caller(request)  # no per-task policy as generated\n"
TEST_IDENTITY = (
    "    api_token_caller(request)\n"
    '    return "user:" + request.headers.get("X-Test-User", "anonymous")\n'
)
QUEUE = "arq:queue"  # arq's default queue name
ABORT_SET = "arq:abort"


@dataclass
class Stack:
    python: Path
    project: Path
    logs: Path
    redis: RestartableRedis
    env: dict[str, str]
    base: str
    worker: Proc

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.base}/tasks{path}", headers=headers, timeout=30, **kwargs)

    def status(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        # a job is its caller's: read it as the user who queued it
        headers = {**AUTH, "X-Test-User": user} if user else AUTH
        response = httpx.get(f"{self.base}/tasks/status/{job_id}", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_complete(self, job_id: str, timeout: float, user: str | None = None) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.status(job_id, user)
            return body if body["status"] == "complete" else None

        result: dict[str, Any] = wait_until(
            done, timeout, f"job {job_id} complete\n{self.worker.log()[-3000:]}"
        )
        return result

    def redis_cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.redis.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = runner_python("arq")
    root = tmp_path_factory.mktemp("arq-reliability")
    project = scaffold("layered", root, "--runner", "arq")
    routes = project / "app" / "api" / "v1" / "routes" / "arq_tasks.py"
    source = routes.read_text()
    assert GENERATED_IDENTITY in source
    routes.write_text(source.replace(GENERATED_IDENTITY, TEST_IDENTITY))
    logs = root / "logs"
    logs.mkdir()
    data = root / "redis-data"
    data.mkdir()
    with restartable_redis(data) as redis:
        env = {
            "REDIS_URL": f"{redis.url}/0",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": "1",
            "EMAIL_FROM": "shop@example.com",
            "ARQ_JOB_TIMEOUT": "30",  # a job may wait out a whole outage
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        worker = start_process(
            [str(python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"],
            cwd=project,
            log_path=logs / "worker.log",
            env=env,
        )
        with running(api, worker):
            wait_until(lambda: "Starting worker" in worker.log(), 20, "arq worker starting")
            yield Stack(python, project, logs, redis, env, base, worker)


def _process(stack: Stack, data_id: int, **kwargs: Any) -> httpx.Response:
    return stack.post("/process-data", json={"data_id": data_id, "values": [data_id]}, **kwargs)


def test_same_idempotency_key_from_two_callers_is_two_jobs(stack: Stack) -> None:
    key = uuid.uuid4().hex
    alice = _process(stack, 1, headers={"Idempotency-Key": key, "X-Test-User": "alice"})
    bob = _process(stack, 2, headers={"Idempotency-Key": key, "X-Test-User": "bob"})
    assert alice.status_code == bob.status_code == 202, (alice.text, bob.text)
    assert alice.json()["duplicate"] is bob.json()["duplicate"] is False
    alice_id, bob_id = alice.json()["task_id"], bob.json()["task_id"]
    assert alice_id != bob_id
    # the job id is a keyed hash, not the key
    for job_id in (alice_id, bob_id):
        assert key not in job_id and job_id != f"process_data:{key}"
    assert stack.wait_complete(alice_id, 20, "alice")["result"]["data_id"] == 1
    assert stack.wait_complete(bob_id, 20, "bob")["result"]["data_id"] == 2
    # the same caller again is still deduplicated
    again = _process(stack, 1, headers={"Idempotency-Key": key, "X-Test-User": "alice"})
    assert again.status_code == 200 and again.json()["task_id"] == alice_id
    assert again.json()["duplicate"] is True


def _job_record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "t": None,
        "f": "process_data",
        "a": [],
        "k": {"data_id": 1, "values": [1.0]},
        "et": int(time.time() * 1000),
    }
    record.update(fields)
    return record


POISON: dict[str, bytes] = {
    "not-json": b"\x80\x04not json at all",
    "missing-key": json.dumps({"f": "process_data", "a": [], "k": {}}).encode(),
    "unknown-function": json.dumps(_job_record(f="no_such_function")).encode(),
    "function-not-a-string": json.dumps(_job_record(f=["process_data"])).encode(),
    "args-not-a-list": json.dumps(_job_record(a={"data_id": 1})).encode(),
    "kwargs-not-an-object": json.dumps(_job_record(k=[1, 2])).encode(),
    "try-not-a-number": json.dumps(_job_record(t="1")).encode(),
    "enqueue-time-not-a-number": json.dumps(_job_record(et="yesterday")).encode(),
}


@pytest.mark.parametrize("kind", sorted(POISON))
def test_poison_record_is_dropped_and_the_worker_keeps_serving(stack: Stack, kind: str) -> None:
    job_id = f"poison-{kind}-{uuid.uuid4().hex[:8]}"
    path = stack.logs / f"{job_id}.bin"
    path.write_bytes(POISON[kind])
    # redis-cli -x reads the value's bytes from stdin
    subprocess.run(
        ["redis-cli", "-p", str(stack.redis.port), "-x", "set", f"arq:job:{job_id}"],
        input=POISON[kind],
        capture_output=True,
        timeout=10,
        check=True,
    )
    stack.redis_cli("zadd", QUEUE, str(int(time.time() * 1000)), job_id)
    # the poisoned job is taken off the queue and recorded as failed...
    wait_until(
        lambda: stack.redis_cli("zscore", QUEUE, job_id) == "",
        20,
        f"poison record {kind} dropped\n{stack.worker.log()[-3000:]}",
    )
    assert stack.worker.alive(), stack.worker.log()[-3000:]
    assert stack.status(job_id)["success"] is False
    # ...and the next good job runs on the same worker
    good = _process(stack, 7)
    assert good.status_code == 202, good.text
    assert stack.wait_complete(good.json()["task_id"], 20)["success"] is True
    assert stack.worker.alive(), stack.worker.log()[-3000:]


def _worker_pid_and_log_size(stack: Stack) -> tuple[int, int]:
    return stack.worker.popen.pid, len(stack.worker.log())


def _good_job_completes_on_the_same_worker(stack: Stack, pid: int) -> None:
    good = _process(stack, 11)
    assert good.status_code == 202, good.text
    body = stack.wait_complete(good.json()["task_id"], 20)
    assert body["success"] is True, body
    assert stack.worker.alive() and stack.worker.popen.pid == pid, stack.worker.log()[-3000:]


# Queue entries arq's own loop cannot take: an id that is not UTF-8 (arq decodes every
# id it reads from the queue), and scores that are no time (arq converts them to int).
QUEUE_POISON: dict[str, tuple[bytes, str]] = {
    "id-not-utf8": (b"poison-\xff\xfe\x80-" + uuid.uuid4().hex.encode(), "now"),
    "score-minus-infinity": (f"poison-{uuid.uuid4().hex}".encode(), "-inf"),
    "score-zero": (f"poison-{uuid.uuid4().hex}".encode(), "0"),
}


@pytest.mark.parametrize("kind", sorted(QUEUE_POISON))
def test_poison_queue_entry_is_dropped_and_the_worker_keeps_serving(
    stack: Stack, kind: str
) -> None:
    member, score = QUEUE_POISON[kind]
    pid, log_start = _worker_pid_and_log_size(stack)
    if score == "now":
        score = str(int(time.time() * 1000))
    # a job record beside it, as a writer that queued it would leave
    for command in (
        [b"set", b"arq:job:" + member, b'{"f":"process_data"}'],
        [b"zadd", QUEUE.encode(), score.encode(), member],
    ):
        subprocess.run(
            [b"redis-cli", b"-p", str(stack.redis.port).encode(), *command],
            capture_output=True,
            timeout=10,
            check=True,
        )
    wait_until(
        lambda: stack.redis_cli("zcard", QUEUE) == "0",
        20,
        f"poison entry {kind} off the queue\n{stack.worker.log()[-3000:]}",
    )
    assert stack.worker.alive(), stack.worker.log()[-3000:]
    log = stack.worker.log()[log_start:]
    assert f"({len(member)} bytes)" in log, log
    assert stack.redis_cli("exists", "arq:job:" + member.decode(errors="replace")) == "0"
    raw_key = subprocess.run(
        [b"redis-cli", b"-p", str(stack.redis.port).encode(), b"exists", b"arq:job:" + member],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    assert raw_key == b"0"
    _good_job_completes_on_the_same_worker(stack, pid)


# Job records whose fields have the right types but values arq cannot use: it turns
# the enqueue time into a datetime before the job starts, outside any error handling.
RECORD_POISON: dict[str, dict[str, Any]] = {
    "enqueue-time-1e20": _job_record(et=10**20),
    "enqueue-time-negative": _job_record(et=-(10**20)),
    "try-1e30": _job_record(t=10**30),
}


@pytest.mark.parametrize("kind", sorted(RECORD_POISON))
def test_out_of_range_record_is_dropped_and_the_worker_keeps_serving(
    stack: Stack, kind: str
) -> None:
    pid, log_start = _worker_pid_and_log_size(stack)
    job_id = f"poison-{kind}-{uuid.uuid4().hex[:8]}"
    raw = json.dumps(RECORD_POISON[kind]).encode()
    subprocess.run(
        ["redis-cli", "-p", str(stack.redis.port), "-x", "set", f"arq:job:{job_id}"],
        input=raw,
        capture_output=True,
        timeout=10,
        check=True,
    )
    stack.redis_cli("zadd", QUEUE, str(int(time.time() * 1000)), job_id)
    wait_until(
        lambda: stack.redis_cli("zscore", QUEUE, job_id) == "" or not stack.worker.alive(),
        20,
        f"poison record {kind} dropped\n{stack.worker.log()[-3000:]}",
    )
    assert stack.worker.alive(), stack.worker.log()[-3000:]
    log = stack.worker.log()[log_start:]
    assert f"({len(raw)} bytes)" in log, log
    assert stack.status(job_id)["success"] is False
    _good_job_completes_on_the_same_worker(stack, pid)


@pytest.mark.parametrize("outage", [1.0, 5.0])
def test_worker_survives_a_redis_restart_and_every_accepted_job_completes(
    stack: Stack, outage: float
) -> None:
    accepted: list[str] = []
    for i in range(1, 21):
        response = stack.post("/long-running", json={"steps": 3 + i % 5})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["task_id"])
    time.sleep(0.3)  # some are running, the rest queued
    stack.redis.stop()
    down = stack.post("/long-running", json={"steps": 1})
    assert down.status_code == 503  # refused, not accepted: no job is owed
    time.sleep(outage)
    stack.redis.start()
    for i in range(5):
        response = stack.post("/process-data", json={"data_id": i + 1, "values": [i]})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["task_id"])
    for job_id in accepted:
        body = stack.wait_complete(job_id, 60)
        assert body["success"] is True, (job_id, body, stack.worker.log()[-3000:])
    assert stack.worker.alive(), stack.worker.log()[-3000:]
    assert "Redis unreachable" in stack.worker.log()


def test_cancel_that_lost_the_race_leaves_no_abort_request(stack: Stack) -> None:
    key = uuid.uuid4().hex
    response = _process(stack, 3, headers={"Idempotency-Key": key})
    job_id = response.json()["task_id"]
    stack.wait_complete(job_id, 20)
    # what an abort sent while the job was finishing leaves behind
    stack.redis_cli("zadd", ABORT_SET, str(int(time.time() * 1000)), job_id)
    answer = stack.post(f"/cancel/{job_id}", params={"wait": 0})
    assert answer.status_code == 409, answer.text  # finished first: nothing to cancel
    assert answer.json() == {"task_id": job_id, "cancelled": False, "status": "complete"}
    assert stack.redis_cli("zscore", ABORT_SET, job_id) == ""
    # so once the result is gone, the same key runs a new job instead of dropping it
    stack.redis_cli("del", f"arq:result:{job_id}")
    rerun = _process(stack, 3, headers={"Idempotency-Key": key})
    assert rerun.status_code == 202 and rerun.json()["task_id"] == job_id
    body = stack.wait_complete(job_id, 20)
    assert body["success"] is True and body["error"] is None


@pytest.mark.parametrize("raw", ["1e400", "-1e400", "NaN", "Infinity"])
def test_non_finite_numbers_are_422_in_every_body(stack: Stack, raw: str) -> None:
    bodies = {
        "/process-data": '{"data_id": 1, "values": [' + raw + "]}",
        "/process-data#id": '{"data_id": ' + raw + ', "values": [1]}',
        "/long-running": '{"steps": ' + raw + "}",
        "/send-email": '{"to": "a@example.com", "subject": ' + raw + ', "body": "b"}',
    }
    for path, body in bodies.items():
        response = stack.post(
            path.split("#")[0], content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (path, raw, response.text)
    cancel = stack.post(f"/cancel/{uuid.uuid4().hex}", params={"wait": raw})
    assert cancel.status_code == 422, cancel.text

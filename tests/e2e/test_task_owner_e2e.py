"""A task is private to the caller who queued it, over HTTP against real processes.

For arq and taskiq: a private redis-server, the runner's real worker (and taskiq's
scheduler) and uvicorn from `.venvs/<runner>`, serving the scaffolded `layered` example
with one added task. The scaffold's access hook is edited as a project would edit it:
two tokens, two users. Alice queues; Bob, admitted too, gets 404 on status and cancel
(and his cancel leaves no trace in Redis); Alice reads and cancels. A task queued by
the scheduler has no owner and stays readable by both.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    Proc,
    add_task,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

ALICE = f"alice-{secrets.token_hex(8)}"
BOB = f"bob-{secrets.token_hex(8)}"
JSON = {"content-type": "application/json"}
# where each runner's scaffold defines the access hook
HOOK_FILE = {"arq": "app/api/v1/routes/arq_tasks.py", "taskiq": "app/tasks/auth.py"}
AS_GENERATED = "    return api_token_caller(request)  # no per-task policy as generated\n"
PER_USER = f"""    # one identity per user: the tokens of the end-to-end test's two users
    users = {{"{ALICE}": "user:alice", "{BOB}": "user:bob"}}
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    user = users.get(presented.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(status_code=401, detail="Unknown user")
    return user
"""


# what other code of the project does to queue a job: arq's pool, no owner given
ENQUEUE = """
import asyncio, json, sys
from arq.connections import RedisSettings, create_pool
from app.tasks.serialization import deserialize, serialize

async def main() -> None:
    settings = RedisSettings.from_dsn(sys.argv[1])
    pool = await create_pool(settings, job_serializer=serialize, job_deserializer=deserialize)
    job = await pool.enqueue_job(sys.argv[2], **json.loads(sys.argv[3]))
    await pool.aclose()
    print(job.job_id)

asyncio.run(main())
"""


@dataclass
class Stack:
    runner: str
    base: str
    redis_url: str
    logs: Path
    python: Path
    project: Path

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}", **JSON}
        return httpx.request(
            method, f"{self.base}/tasks{path}", headers=headers, timeout=30, **kwargs
        )

    def wait_status(self, token: str, task_id: str, want: set[str]) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            response = self.call(token, "GET", f"/status/{task_id}")
            body: dict[str, Any] = response.json()
            return body if response.status_code == 200 and body["status"] in want else None

        found: dict[str, Any] = wait_until(
            reached, 30, f"{self.runner} task {task_id} {want}\n{self.worker_log()}"
        )
        return found

    def worker_log(self) -> str:
        path = self.logs / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def enqueue_with_arq(self, function: str, **kwargs: Any) -> str:
        """Queue a job as code outside the API would, with arq's own pool; its id."""
        done = subprocess.run(
            [str(self.python), "-c", ENQUEUE, f"{self.redis_url}/0", function, json.dumps(kwargs)],
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def redis(self, *args: str) -> str:
        port = self.redis_url.rsplit(":", 1)[1]
        done = subprocess.run(
            ["redis-cli", "-p", port, "--raw", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()


def _start(cmd: list[str], project: Path, log: Path, env: dict[str, str], ready: str) -> Proc:
    proc = start_process(cmd, cwd=project, log_path=log, env=env)
    wait_until(lambda: ready in proc.log() or not proc.alive(), 30, f"{cmd[0]} starting")
    assert proc.alive(), proc.log()
    return proc


@pytest.fixture(scope="module", params=["arq", "taskiq"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    runner: str = request.param
    python = runner_python(runner)
    root = tmp_path_factory.mktemp(f"owner-{runner}")
    project = scaffold("layered", root, "--runner", runner)
    add_task(project, "resize_image", "--arg", "image_id:int")
    add_task(project, "heartbeat", "--every", "2", "--no-route")
    hook = project / HOOK_FILE[runner]
    text = hook.read_text()
    assert text.count(AS_GENERATED) == 1, "the generated hook changed: update this test"
    hook.write_text(text.replace(AS_GENERATED, PER_USER))
    logs = root / "logs"
    logs.mkdir()
    bin_dir = python.parent
    with redis_server(root) as redis_url:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": f"{redis_url}/0",
            "ARQ_JOB_TIMEOUT": "30",
            "TASKIQ_TASK_TIMEOUT": "30",
            "PYTHONPATH": str(project),
        }
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        with running(api):
            if runner == "arq":
                command = [str(bin_dir / "arq"), "app.tasks.arq_worker.WorkerSettings"]
                worker = _start(command, project, logs / "worker.log", env, "Starting worker")
                with running(worker):
                    yield Stack(runner, base, redis_url, logs, python, project)
                return
            broker, tasks = "app.tasks.taskiq_app:broker", "app.tasks.taskiq_tasks"
            command = [str(bin_dir / "taskiq"), "worker", broker, tasks, "--workers", "1"]
            worker = _start(command, project, logs / "worker.log", env, "Listening started")
            with running(worker):
                # the scheduler sends the heartbeat: a task nobody queued through the API
                command = [
                    str(bin_dir / "taskiq"),
                    "scheduler",
                    "app.tasks.taskiq_app:scheduler",
                    tasks,
                    "--update-interval",
                    "1",
                ]
                log = logs / "scheduler.log"
                with running(_start(command, project, log, env, "Startup completed")):
                    yield Stack(runner, base, redis_url, logs, python, project)


def test_only_the_caller_who_queued_a_task_reads_and_cancels_it(stack: Stack) -> None:
    queued = stack.call(ALICE, "POST", "/long-running", json={"steps": 200})  # 20 s
    assert queued.status_code == 202, queued.text
    task_id = queued.json()["task_id"]
    stack.wait_status(ALICE, task_id, {"in_progress"})

    status = stack.call(BOB, "GET", f"/status/{task_id}")
    cancel = stack.call(BOB, "POST", f"/cancel/{task_id}", params={"wait": 0})
    unknown = stack.call(BOB, "GET", f"/status/{secrets.token_hex(16)}")
    assert (status.status_code, cancel.status_code) == (404, 404), cancel.text
    # the answer of an id that does not exist: nothing tells Bob the task is there
    assert status.json() == unknown.json() == {"detail": "Unknown task id"}
    assert cancel.json() == status.json()
    # and Bob's cancel asked nothing of the worker
    if stack.runner == "arq":
        assert stack.redis("ZSCORE", "arq:abort", task_id) == ""
    else:
        assert stack.redis("HEXISTS", f"bgtasks:taskiq:task:{task_id}", "cancel") == "0"
    assert stack.call(ALICE, "GET", f"/status/{task_id}").json()["status"] == "in_progress"

    cancelled = stack.call(ALICE, "POST", f"/cancel/{task_id}", params={"wait": 10})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"task_id": task_id, "cancelled": True, "status": "complete"}
    final = stack.call(ALICE, "GET", f"/status/{task_id}").json()
    assert (final["status"], final["error"]) == ("complete", "cancelled")
    # finished, still Alice's
    assert stack.call(BOB, "GET", f"/status/{task_id}").status_code == 404


def test_the_owner_is_kept_as_long_as_the_status(stack: Stack) -> None:
    queued = stack.call(ALICE, "POST", "/process-data", json={"data_id": 1, "values": [2]})
    task_id = queued.json()["task_id"]
    if stack.runner == "arq":
        # a key of its own, written with the job; it outlives the job and its result
        owner_key = f"bgtasks:owner:{task_id}"
        assert stack.redis("GET", owner_key) == "user:alice"
        owner_ttl = int(stack.redis("PTTL", owner_key))
        job_ttl = int(stack.redis("PTTL", f"arq:job:{task_id}"))
        if job_ttl != -2:  # -2: a worker already ran it (arq deletes the job key then)
            assert owner_ttl > job_ttl > 0
        stack.wait_status(ALICE, task_id, {"complete"})
        result_ttl = int(stack.redis("PTTL", f"arq:result:{task_id}"))
        assert int(stack.redis("PTTL", owner_key)) > result_ttl > 0
    else:
        # a field of the task's status record: the same key, the same expiry
        stack.wait_status(ALICE, task_id, {"complete"})
        record = f"bgtasks:taskiq:task:{task_id}"
        assert stack.redis("HGET", record, "owner") == "user:alice"
        assert 0 < int(stack.redis("TTL", record)) <= 3600
    assert stack.call(BOB, "GET", f"/status/{task_id}").status_code == 404


def test_a_task_queued_through_an_added_route_is_its_callers(stack: Stack) -> None:
    queued = stack.call(ALICE, "POST", "/resize-image", json={"image_id": 9})
    assert queued.status_code == 202, queued.text
    task_id = queued.json()["task_id"]
    assert stack.wait_status(ALICE, task_id, {"complete"})["result"] == {"image_id": 9}
    assert stack.call(BOB, "GET", f"/status/{task_id}").status_code == 404
    assert stack.call(BOB, "POST", f"/cancel/{task_id}").status_code == 404


def test_a_task_queued_by_other_code_has_no_owner_and_is_everyones(stack: Stack) -> None:
    if stack.runner == "arq":
        # arq keeps no result of a cron job: a job the app's own code queues instead
        task_id = stack.enqueue_with_arq("process_data", data_id=3, values=[1.0])
    else:
        # the heartbeat the scheduler sends every 2 s
        def scheduled_id() -> str | None:
            for key in stack.redis("--scan", "--pattern", "bgtasks:taskiq:task:*").split():
                if stack.redis("HGET", key, "task") == "heartbeat":
                    return key.removeprefix("bgtasks:taskiq:task:")
            return None

        task_id = wait_until(scheduled_id, 20, f"a heartbeat run\n{stack.worker_log()}")
    body = stack.wait_status(ALICE, task_id, {"complete"})
    assert body["success"] is True
    response = stack.call(BOB, "GET", f"/status/{task_id}")
    assert response.status_code == 200, response.text
    assert response.json() == body

"""The generated apps' access control, mail and request handling under attack, for every
runner, over HTTP against real processes: uvicorn serving the scaffolded `layered`
example, the runner's worker (`celery worker`, `arq`) on a private redis-server, and an
aiosmtpd SMTP sink. What reaches the sink is parsed header by header.

The web process gets the API token through its environment (BGTASKS_API_TOKEN, see
harness.serve_app); calls that should pass send it (AUTH), the others leave it out.

Each runner's project also gets `add-task scale --arg factor:float --arg
"weights:list[float]"`, to check the routes add-task writes; the builtin one has its
notification job rewritten as an `async def`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    Proc,
    SmtpSink,
    add_task,
    redis_server,
    runner_python,
    running,
    scaffold,
    serve_app,
    smtp_sink,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

RUNNERS = ["builtin", "celery", "arq"]
JSON = {"content-type": "application/json"}
SENDER = "shop@example.com"


def _b_word(text: bytes) -> str:
    return f"=?utf-8?b?{base64.b64encode(text).decode()}?="


# RFC 2047 encoded words that decode to CR LF and then headers and a body of their own.
SUBJECT_PROBES = [
    "=?utf-8?q?Invoice=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0Aattacker_body?=",
    _b_word(b"Invoice\r\nBcc: victim@evil.example\r\n\r\nattacker body"),
]
# Valid addresses to an address parser (EmailStr): the encoded word is the local part.
RECIPIENT_PROBES = [
    "=?utf-8?q?ada=0D=0ABcc=3A_victim=40evil.example?=@example.com",
    _b_word(b"ada\r\nBcc: victim@evil.example") + "@example.com",
    "=?utf-8?q?victim=40evil.example?=@example.com",  # decodes to a second "@"
]
PROBES = [{"to": "ada@example.com", "subject": s, "body": "x"} for s in SUBJECT_PROBES] + [
    {"to": to, "subject": "Invoice", "body": "x"} for to in RECIPIENT_PROBES
]
# What a message written by the generated mailer carries, and nothing else.
EXPECTED_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}
FIVE_MB = 5 * 1024 * 1024
# Peak memory a refused 5 MB body may add to the web process. Measured: about 1.4 MB
# with the limit (the first kilobytes and the 413), about 24 MB without it.
MAX_GROWTH_KIB = 4 * 1024

ASYNC_JOB = """

# The e2e suite's stand-in for an async job: proves BackgroundTasks awaits it.
async def process_notification(user_id: int, message: str) -> None:
    import asyncio
    import os
    import pathlib

    await asyncio.sleep(0.01)
    pathlib.Path(os.environ["BGTASKS_E2E_MARKER"]).write_text(str(user_id))
"""

LOG_AT_INFO = """
import logging

logging.basicConfig(level=logging.INFO)
"""

# Queue the probes the way other code would, past the API's request model; prints
# whether each task failed.
CELERY_DIRECT = """
import json, sys
from app.tasks.tasks import send_email
queued = [send_email.apply_async(kwargs=p, ignore_result=False) for p in json.loads(sys.argv[1])]
for result in queued:
    result.get(timeout=60, propagate=False)
print(json.dumps([result.state == "FAILURE" for result in queued]))
"""
ARQ_DIRECT = """
import asyncio, json, sys
from arq.connections import RedisSettings, create_pool
from app.core.config import settings
from app.tasks.serialization import deserialize, serialize

async def main():
    pool = await create_pool(
        RedisSettings.from_dsn(settings.REDIS_URL),
        job_serializer=serialize,
        job_deserializer=deserialize,
    )
    jobs = [await pool.enqueue_job("send_email", **p) for p in json.loads(sys.argv[1])]
    failed = []
    for job in jobs:
        for _ in range(600):
            info = await job.result_info()
            if info is not None:
                break
            await asyncio.sleep(0.1)
        failed.append(info is not None and not info.success)
    await pool.aclose()
    print(json.dumps(failed))

asyncio.run(main())
"""


@dataclass
class Stack:
    runner: str
    python: Path
    project: Path
    env: dict[str, str]
    sink: SmtpSink
    api: Proc
    base: str
    worker: Proc | None
    marker: Path

    def path_of(self, suffix: str) -> str:
        """The full URL of the generated route whose path ends with `suffix`."""
        paths = httpx.get(f"{self.base}/openapi.json", timeout=10).json()["paths"]
        (path,) = [p for p in paths if p.endswith(suffix)]
        return f"{self.base}{path}"

    def post_email(self, **payload: str) -> httpx.Response:
        return httpx.post(self.path_of("/send-email"), json=payload, headers=AUTH, timeout=30)

    def delivered(self, subject: str) -> Message:
        """Wait for the message with this subject at the sink."""

        def arrived() -> Message | None:
            found = [m for m in self.sink.messages if m["Subject"] == subject]
            return found[0] if found else None

        logs = self.worker.log() if self.worker else self.api.log()
        message: Message = wait_until(arrived, 60, f"{subject!r} at the sink\n{logs[-3000:]}")
        return message

    def process_log(self) -> str:
        """The log of the process that sends the mail: the worker, or the web app."""
        return (self.worker or self.api).log()


def _vm_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _celery_worker(python: Path, project: Path, env: dict[str, str], logs: Path) -> Proc:
    proc = start_process(
        [
            str(python),
            "-m",
            "celery",
            "-A",
            "app.tasks.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "1",
            "--loglevel=info",
            "-n",
            f"security-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=project,
        log_path=logs / "worker.log",
        env=env,
    )
    wait_until(lambda: " ready." in proc.log() or not proc.alive(), 60, "celery worker ready")
    assert proc.alive(), proc.log()
    return proc


def _arq_worker(python: Path, project: Path, env: dict[str, str], logs: Path) -> Proc:
    proc = start_process(
        [str(python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"],
        cwd=project,
        log_path=logs / "worker.log",
        env=env,
    )
    wait_until(lambda: "Starting worker" in proc.log() or not proc.alive(), 60, "arq worker start")
    assert proc.alive(), proc.log()
    return proc


@pytest.fixture(scope="module", params=RUNNERS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    runner: str = request.param
    python = Path(sys.executable) if runner == "builtin" else runner_python(runner)
    root = tmp_path_factory.mktemp(f"security-{runner}")
    project = scaffold("layered", root, "--runner", runner)
    add_task(project, "scale", "--arg", "factor:float", "--arg", "weights:list[float]")
    if runner == "builtin":
        jobs = project / "app" / "tasks" / "notifications.py"
        jobs.write_text(jobs.read_text() + ASYNC_JOB)
        # uvicorn shows only its own loggers: let the app's INFO lines reach its log
        main = project / "app" / "main.py"
        main.write_text(main.read_text() + LOG_AT_INFO)
    logs = root / "logs"
    logs.mkdir()
    with ExitStack() as cleanup:
        sink = cleanup.enter_context(smtp_sink())
        env = {
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_USER": "",
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": SENDER,
            "PYTHONPATH": str(project),
            "BGTASKS_E2E_MARKER": str(root / "async-job-ran"),
        }
        worker = None
        if runner != "builtin":
            redis_url = cleanup.enter_context(redis_server(root))
            if runner == "celery":
                env["CELERY_BROKER_URL"] = f"{redis_url}/0"
                env["CELERY_RESULT_BACKEND"] = f"{redis_url}/1"
            else:
                env["REDIS_URL"] = f"{redis_url}/0"
                env["ARQ_JOB_TIMEOUT"] = "10"
        api, base = serve_app(python, project, "app.main:app", logs / "uvicorn.log", env)
        cleanup.callback(api.stop)
        if runner == "celery":
            worker = _celery_worker(python, project, env, logs)
        elif runner == "arq":
            worker = _arq_worker(python, project, env, logs)
        if worker is not None:
            cleanup.callback(worker.stop)
        yield Stack(runner, python, project, env, sink, api, base, worker, root / "async-job-ran")


def test_encoded_line_breaks_never_reach_the_smtp_server(stack: Stack) -> None:
    for probe in PROBES:
        response = stack.post_email(**probe)
        assert response.status_code == 422, (probe, response.text)
    if stack.runner != "builtin":
        # Queued by other code, past the request model: the mailer refuses them itself.
        script = CELERY_DIRECT if stack.runner == "celery" else ARQ_DIRECT
        result = subprocess.run(
            [str(stack.python), "-c", script, json.dumps(PROBES)],
            cwd=stack.project,
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) == [True] * len(PROBES)
    subject = f"Invoice {uuid.uuid4().hex[:8]}"
    response = stack.post_email(to="ada@example.com", subject=subject, body="Thanks!")
    assert response.status_code == 202, response.text
    stack.delivered(subject)
    for message in stack.sink.messages:
        assert set(message.keys()) == EXPECTED_HEADERS, message.keys()
        assert len(message.get_all("To") or []) == 1
        assert message["From"] == SENDER and message["To"] == "ada@example.com"
        assert message["Message-ID"].endswith("@example.com>")
        raw = message.as_string()
        assert "evil.example" not in raw and "attacker" not in raw, raw
        assert str(message.get_payload()).strip() == "Thanks!"


def test_large_bodies_are_refused_without_growing_the_web_process(stack: Stack) -> None:
    url = stack.path_of("/send-email")
    head = b'{"to": "ada@example.com", "subject": "big", "body": "'
    oversized = head + b"x" * (FIVE_MB - len(head) - 2) + b'"}'

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(oversized), 64 * 1024):
            yield oversized[start : start + 64 * 1024]

    pid = stack.api.popen.pid
    with httpx.Client(timeout=60, headers=AUTH) as client:
        # warm up: the first 413 and the first accepted email load what they need
        assert client.post(url, content=oversized[:300_000], headers=JSON).status_code == 413
        warm_up = {"to": "ada@example.com", "subject": "warm up", "body": "x"}
        assert client.post(url, json=warm_up).status_code == 202
        before = {field: _vm_kib(pid, field) for field in ("VmRSS", "VmHWM")}
        for _ in range(3):
            # with a Content-Length (refused before reading) and chunked (while reading)
            assert client.post(url, content=oversized, headers=JSON).status_code == 413
            assert client.post(url, content=chunked(), headers=JSON).status_code == 413
        after = {field: _vm_kib(pid, field) for field in ("VmRSS", "VmHWM")}
        growth = {field: after[field] - before[field] for field in before}
        assert all(kib <= MAX_GROWTH_KIB for kib in growth.values()), (before, after)
        # the same connection still serves ordinary requests
        small = {"to": "ada@example.com", "subject": "still up", "body": "x"}
        assert client.post(url, json=small).status_code == 202
    stack.delivered("still up")


def test_non_finite_numbers_are_refused_with_422(stack: Stack) -> None:
    scale = stack.path_of("/scale")  # the route add-task wrote
    email = stack.path_of("/send-email")
    for raw in ("1e400", "NaN", "-Infinity"):
        bodies = [
            (scale, '{"factor": ' + raw + ', "weights": [1.5]}'),
            (scale, '{"factor": 1.5, "weights": [2, ' + raw + "]}"),
            (email, '{"to": "ada@example.com", "subject": ' + raw + ', "body": "x"}'),
        ]
        for url, body in bodies:
            response = httpx.post(url, content=body, headers=AUTH, timeout=10)
            assert response.status_code == 422, (url, body, response.text)
            assert all("input" not in error for error in response.json()["detail"])
    ok = httpx.post(scale, json={"factor": 1.5, "weights": [2.5]}, headers=AUTH, timeout=10)
    assert ok.status_code == 202, ok.text


def test_the_log_of_a_sent_email_holds_no_address_or_body(stack: Stack) -> None:
    token = uuid.uuid4().hex[:10]
    address, body = f"private.{token}@example.com", f"secret text {token}"
    subject = f"log check {token}"
    response = stack.post_email(to=address, subject=subject, body=body)
    assert response.status_code == 202, response.text
    assert stack.delivered(subject)["To"] == address
    queued = response.json()
    finished = {  # the worker's INFO line for this job's end
        "celery": f"send_email[{queued.get('task_id')}] succeeded",
        "arq": f"{queued.get('task_id')}:send_email \u25cf",
    }.get(stack.runner)
    if finished is not None:
        wait_until(lambda: finished in stack.process_log(), 30, f"{finished!r} logged")
    else:  # builtin: the web process logs the job (at INFO, see the fixture)
        wait_until(lambda: "email sent" in stack.process_log(), 30, "'email sent' logged")
    log = stack.process_log()
    assert address not in log and body not in log, log[-3000:]
    if stack.runner == "arq":
        assert "send_email(<arguments hidden>)" in log, log[-3000:]
    if stack.runner == "celery":
        assert "send_email[" in log and "received" in log, log[-3000:]


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
def test_builtin_runs_an_async_job(stack: Stack) -> None:
    response = httpx.post(
        stack.path_of("/process"),
        json={"user_id": 42, "message": "Order shipped"},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    wait_until(stack.marker.exists, 15, f"the async job to run\n{stack.api.log()[-3000:]}")
    assert stack.marker.read_text() == "42"


# The generated routes that read or stop one task, per runner (builtin has none).
QUEUE_ROUTES = [("GET", "/status/{task_id}"), ("POST", "/cancel/{task_id}")]
TASK_ROUTES = {"builtin": [], "celery": QUEUE_ROUTES, "arq": QUEUE_ROUTES}
REFUSED_AUTHORIZATIONS = [
    None,
    "Bearer not-the-token",
    f"Bearer {API_TOKEN[:-1]}",  # all but the last character
    f"Basic {API_TOKEN}",
    "Bearer",  # the scheme without a token
]


def _task_url(stack: Stack, template: str, task_id: str) -> str:
    return stack.path_of(template).replace(template.rsplit("/", 1)[1], task_id)


def _queued_id(response: httpx.Response) -> str:
    return str(response.json()["task_id"])


def test_requests_without_the_right_token_are_refused(stack: Stack) -> None:
    refused_subject = f"refused {uuid.uuid4().hex[:8]}"
    email = {"to": "ada@example.com", "subject": refused_subject, "body": "x"}
    unknown = uuid.uuid4().hex
    calls = [("POST", stack.path_of("/send-email"), email)] + [
        (method, _task_url(stack, template, unknown), None)
        for method, template in TASK_ROUTES[stack.runner]
    ]
    for authorization in REFUSED_AUTHORIZATIONS:
        headers = {**JSON, "authorization": authorization} if authorization else JSON
        for method, url, body in calls:
            response = httpx.request(method, url, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (method, url, authorization, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {"detail": "Missing or invalid API token"}
    # the right token: accepted, and its task readable; only that email is ever sent
    accepted_subject = f"accepted {uuid.uuid4().hex[:8]}"
    response = stack.post_email(to="ada@example.com", subject=accepted_subject, body="x")
    assert response.status_code == 202, response.text
    if stack.runner != "builtin":
        status_url = _task_url(stack, TASK_ROUTES[stack.runner][0][1], _queued_id(response))
        assert httpx.get(status_url, headers=AUTH, timeout=10).status_code == 200
        assert httpx.get(status_url, headers=JSON, timeout=10).status_code == 401
    stack.delivered(accepted_subject)
    assert refused_subject not in [m["Subject"] for m in stack.sink.messages]


def test_anonymous_callers_pass_only_when_explicitly_allowed(stack: Stack) -> None:
    env = {**stack.env, "BGTASKS_API_TOKEN": "", "BGTASKS_ALLOW_ANONYMOUS": "true"}
    log = stack.project.parent / "logs" / "uvicorn-anonymous.log"
    api, base = serve_app(stack.python, stack.project, "app.main:app", log, env)
    with running(api):
        url = base + stack.path_of("/send-email").removeprefix(stack.base)
        subject = f"anonymous {uuid.uuid4().hex[:8]}"
        email = {"to": "ada@example.com", "subject": subject, "body": "x"}
        response = httpx.post(url, json=email, headers=JSON, timeout=30)
        assert response.status_code == 202, response.text
        wrong = {**JSON, "authorization": "Bearer not-the-token"}
        assert httpx.post(url, json=email, headers=wrong, timeout=30).status_code == 401
        stack.delivered(subject)
        wait_until(
            lambda: "BGTASKS_ALLOW_ANONYMOUS is on" in api.log(),
            10,
            f"the warning about anonymous access\n{api.log()[-3000:]}",
        )


def test_cross_site_style_posts_are_refused_with_415(stack: Stack) -> None:
    url = stack.path_of("/send-email")
    subject = f"cross-site {uuid.uuid4().hex[:8]}"
    email = {"to": "ada@example.com", "subject": subject, "body": "x"}
    token = {"authorization": AUTH["authorization"]}
    # what a form on another site, or its no-cors fetch, sends without a preflight
    attempts = [
        httpx.post(url, data=email, timeout=10),
        httpx.post(url, data=email, headers=token, timeout=10),
        httpx.post(url, files={"body": b"x"}, headers=token, timeout=10),
        httpx.post(url, content=json.dumps(email), headers={**token, "content-type": "text/plain"}),
    ]
    if stack.runner != "builtin":  # a route without a body, too
        method, template = TASK_ROUTES[stack.runner][1]
        stop = _task_url(stack, template, uuid.uuid4().hex)
        if method == "POST":
            attempts.append(httpx.post(stop, headers=token, timeout=10))
        if stack.runner == "celery":  # the order's id as a cross-site form sends it
            order = stack.path_of("/process-order")
            attempts.append(httpx.post(order, data={"order_id": "1"}, headers=token, timeout=10))
    for response in attempts:
        assert response.status_code == 415, (response.request.url, response.text)
        assert response.json() == {"detail": "Send Content-Type: application/json"}
    # none of them was queued: a later email arrives, theirs never does
    later = f"after cross-site {uuid.uuid4().hex[:8]}"
    assert stack.post_email(to="ada@example.com", subject=later, body="x").status_code == 202
    stack.delivered(later)
    assert subject not in [m["Subject"] for m in stack.sink.messages]


# (method, path suffix): the summary and the responses each route declares
DECLARED = {
    "builtin": {
        ("post", "/send-email"): ("Queue an email", {"202", "401", "413", "415", "422"}),
        ("post", "/process"): ("Queue a notification", {"202", "401", "413", "415", "422"}),
        ("post", "/scale"): ("Queue scale", {"202", "401", "413", "415", "422"}),
    },
    "celery": {
        ("post", "/send-email"): (
            "Queue an email",
            {"202", "401", "413", "415", "422", "429", "503"},
        ),
        ("get", "/status/{task_id}"): ("A task's state and result", {"200", "401", "404", "503"}),
        ("post", "/cancel/{task_id}"): (
            "Cancel a queued or running task",
            {"200", "202", "401", "404", "409", "415", "503"},
        ),
        ("post", "/scale"): ("Queue scale", {"202", "401", "413", "415", "422", "503"}),
    },
    "arq": {
        ("post", "/send-email"): (
            "Queue an email",
            {"200", "202", "401", "413", "415", "422", "429", "503"},
        ),
        ("get", "/status/{task_id}"): ("A task's state and result", {"200", "401", "404", "503"}),
        ("post", "/cancel/{task_id}"): (
            "Cancel a queued or running task",
            {"200", "202", "401", "404", "409", "415", "503"},
        ),
        ("post", "/scale"): ("Queue scale", {"200", "202", "401", "413", "415", "503"}),
    },
}


def test_openapi_declares_the_real_responses_and_summaries(stack: Stack) -> None:
    document = httpx.get(f"{stack.base}/openapi.json", timeout=10).json()
    for (method, suffix), (summary, codes) in DECLARED[stack.runner].items():
        (path,) = [p for p in document["paths"] if p.endswith(suffix)]
        operation = document["paths"][path][method]
        assert operation["summary"] == summary, (path, operation["summary"])
        assert codes <= set(operation["responses"]), (path, sorted(operation["responses"]))
        refused = operation["responses"]["401"]["content"]["application/json"]["schema"]
        assert refused["$ref"] == "#/components/schemas/ErrorMessage", path
    assert document["components"]["schemas"]["ErrorMessage"]["required"] == ["detail"]


@pytest.mark.parametrize("stack", ["celery", "arq"], indirect=True)
def test_stopping_a_finished_task_is_409_with_its_state(stack: Stack) -> None:
    if stack.runner == "celery":
        queued = httpx.post(
            stack.path_of("/process-order"), json={"order_id": 5}, headers=AUTH, timeout=10
        )
    else:
        queued = httpx.post(
            stack.path_of("/process-data"),
            json={"data_id": 5, "values": [1.5]},
            headers=AUTH,
            timeout=10,
        )
    assert queued.status_code == 202, queued.text
    task_id = _queued_id(queued)
    (_, status), (stop_method, stop) = TASK_ROUTES[stack.runner]
    status_url = _task_url(stack, status, task_id)

    def finished() -> dict[str, object] | None:
        body: dict[str, object] = httpx.get(status_url, headers=AUTH, timeout=10).json()
        return body if body["status"] == "complete" else None

    done = wait_until(finished, 30, f"task {task_id} to finish\n{stack.process_log()[-3000:]}")
    assert done["success"] is True, done
    url = _task_url(stack, stop, task_id)
    response = httpx.request(stop_method, url, params=None, headers=AUTH, timeout=10)
    assert response.status_code == 409, response.text
    assert response.json() == {"task_id": task_id, "cancelled": False, "status": "complete"}
    # nothing was stopped: the task keeps its outcome
    after = httpx.get(status_url, headers=AUTH, timeout=10).json()
    assert after["status"] == "complete" and after["success"] is True, after

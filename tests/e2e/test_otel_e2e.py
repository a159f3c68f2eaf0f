"""`--with otel` against real processes: one trace from the request to the SMTP send.

For each runner the `layered` example is scaffolded with `--with otel` and served by
uvicorn beside a real worker (builtin: the web process runs the task itself), every
process exporting its spans with OTEL_TRACES_EXPORTER=console (one JSON document per
span in its log). A POST to send-email yields, in one trace: the web process's request
span, its enqueue (PRODUCER) span, the worker's run (CONSUMER) span whose parent is the
enqueue span, and the SMTP span under the run. No span holds the recipient. Twenty
concurrent requests, each sent with a traceparent of its own, give twenty traces: each
task runs in the trace of the request that queued it, never another message's. The
task's log line names its trace id.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.dashboard_stack import _commands, _env
from tests.e2e.harness import (
    API_TOKEN,
    AUTH,
    Proc,
    free_port,
    port_open,
    refusing_sink,
    restartable_redis,
    runner_python,
    running,
    scaffold,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e

WAIT = 30.0
RECIPIENT = "ada.lovelace@example.com"
CONCURRENT = 20
OTEL_ENV = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans reach the log quickly
}
# every process's log lines carry the record's trace and span ids (tracing.py)
LOG_FORMAT = "%(levelname)s %(name)s trace_id=%(trace_id)s span_id=%(span_id)s %(message)s"
# arq's command line configures only its own logger: the task's logger is set up here
ARQ_WORKER = (
    "import logging, sys\n"
    f"logging.basicConfig(level=logging.INFO, format={LOG_FORMAT!r})\n"
    "from arq.cli import cli\n"
    "sys.argv = ['arq', 'app.tasks.arq_worker.WorkerSettings']\n"
    "cli()\n"
)
UVICORN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"traced": {"format": LOG_FORMAT}},
    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "traced"}},
    "loggers": {"uvicorn.error": {"handlers": ["out"], "level": "INFO"}},
}


@dataclass
class TracedStack:
    runner: str
    web: Proc
    worker: Proc | None
    base: str
    paths: list[str]

    def url(self, suffix: str) -> str:
        (path,) = [path for path in self.paths if path.endswith(suffix)]
        return f"{self.base}{path}"

    def logs(self) -> str:
        return self.web.log() + (self.worker.log() if self.worker else "")

    def spans(self) -> list[dict[str, Any]]:
        found = spans_in(self.web.log())
        if self.worker is not None:
            found += spans_in(self.worker.log())
        return found


def spans_in(log: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote into a process's log, among its other lines."""
    decoder = json.JSONDecoder()
    spans, start = [], 0
    while (start := log.find('{\n    "name": ', start)) != -1:
        try:
            span, end = decoder.raw_decode(log, start)
        except json.JSONDecodeError:
            break  # the last one is still being written
        spans.append(span)
        start = end
    return spans


def _serve(python: Path, project: Path, logs: Path, env: dict[str, str]) -> tuple[Proc, str]:
    config = logs / "uvicorn-logging.json"
    config.write_text(json.dumps(UVICORN_LOGGING))
    port = free_port()
    command = [str(python), "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-config", str(config)]
    proc = start_process(
        command, project, logs / "web.log", {"BGTASKS_API_TOKEN": API_TOKEN, **env}
    )

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"uvicorn exited:\n{proc.log()}")
        return port_open("127.0.0.1", port)

    wait_until(up, 30, "uvicorn serving the app")
    return proc, f"http://127.0.0.1:{port}"


def _worker_command(runner: str, python: Path, logs: Path) -> list[str]:
    if runner == "arq":
        return [str(python), "-c", ARQ_WORKER]
    command = _commands(runner, python, logs)["worker"]
    if runner == "taskiq":
        command += ["--log-format", LOG_FORMAT]
    return command


@pytest.fixture(scope="module", params=["celery", "arq", "taskiq", "builtin"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TracedStack]:
    runner = str(request.param)
    # builtin runs in FastAPI alone: any runner's environment has it and the SDK
    python = runner_python("taskiq" if runner == "builtin" else runner)
    root = tmp_path_factory.mktemp(f"otel-{runner}")
    project = scaffold("layered", root, "--runner", runner, "--with", "otel")
    assert (project / "app" / "tasks" / "tracing.py").is_file()
    logs = root / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(refusing_sink())
        sink.rcpt_reply = "250 OK"  # every recipient taken
        env = {**OTEL_ENV, "PYTHONPATH": str(project)}
        worker = None
        if runner == "builtin":
            env.update(_env("arq", "redis://unused", sink))
        else:
            redis = stack.enter_context(restartable_redis(root))
            env.update(_env(runner, redis.url, sink))
            command = _worker_command(runner, python, logs)
            worker = start_process(command, project, logs / "worker.log", env)
        web, base = _serve(python, project, logs, env)
        stack.enter_context(running(*(p for p in (web, worker) if p is not None)))
        paths = list(httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"])
        yield TracedStack(runner, web, worker, base, paths)


def post(stack: TracedStack, path: str, body: dict[str, Any], trace_id: str) -> httpx.Response:
    """POST as a client in the trace `trace_id` (its own traceparent header)."""
    headers = {**AUTH, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    response = httpx.post(stack.url(path), headers=headers, json=body, timeout=15)
    assert response.status_code == 202, response.text
    return response


# a task that sends no email (the email routes allow 20 per caller and minute)
PROCESS = {
    "celery": ("/process-order", lambda n: {"order_id": n}),
    "arq": ("/process-data", lambda n: {"data_id": n, "values": [1.0, float(n)]}),
    "taskiq": ("/process-data", lambda n: {"data_id": n, "values": [1.0, float(n)]}),
    "builtin": ("/process", lambda n: {"user_id": n, "message": "traced"}),
}


def kind(span: dict[str, Any]) -> str:
    return str(span["kind"]).rpartition(".")[2]


def trace_of(span: dict[str, Any]) -> str:
    return str(span["context"]["trace_id"]).removeprefix("0x")


def span_id(span: dict[str, Any]) -> str:
    return str(span["context"]["span_id"])


def service(span: dict[str, Any]) -> str:
    return str(span["resource"]["attributes"].get("service.name"))


def runs_of(spans: list[dict[str, Any]], task: str = "send_email") -> list[dict[str, Any]]:
    return [s for s in spans if kind(s) == "CONSUMER" and task in s["name"]]


def test_one_request_is_one_trace_from_the_request_to_the_smtp_send(
    stack: TracedStack,
) -> None:
    trace_id = secrets.token_hex(16)
    body = {"to": RECIPIENT, "subject": "traced", "body": "One trace, end to end."}
    post(stack, "/send-email", body, trace_id)

    def whole_trace() -> list[dict[str, Any]] | None:
        spans = [s for s in stack.spans() if trace_of(s) == trace_id]
        names = {s["name"] for s in spans}
        ids = {span_id(s) for s in spans}
        runs = runs_of(spans)
        # each process exports on its own schedule: until the run's parent is in too
        whole = "smtp send" in names and runs and runs[0]["parent_id"] in ids
        return spans if whole and any(kind(s) == "SERVER" for s in spans) else None

    try:
        spans = wait_until(whole_trace, WAIT, "the request's spans, the run's and the send's")
    except BaseException:
        print(stack.logs()[-6000:], file=sys.stderr)
        raise
    by_id = {span_id(s): s for s in spans}
    (run,) = runs_of(spans)
    (smtp,) = [s for s in spans if s["name"] == "smtp send"]
    assert kind(smtp) == "CLIENT"
    assert smtp["parent_id"] == span_id(run), "the SMTP send is a child of the run"
    worker_role = "web" if stack.runner == "builtin" else "worker"
    assert service(run) == service(smtp) == worker_role
    parent = by_id[run["parent_id"]]
    assert service(parent) == "web"
    if stack.runner == "builtin":
        # the background task runs in the web process, after the response, under the
        # request's span
        assert kind(parent) in ("SERVER", "INTERNAL"), parent
    else:
        assert kind(parent) == "PRODUCER", "the run's parent is the enqueue span"
        assert parent["name"].startswith("enqueue ")
        assert run["attributes"]["messaging.system"] == stack.runner
    # up the chain from the run: the request's SERVER span, in the web process
    chain, span = [], run
    while span.get("parent_id") in by_id:
        span = by_id[span["parent_id"]]
        chain.append(span)
    assert any(kind(s) == "SERVER" and service(s) == "web" for s in chain), chain
    for span in spans:
        assert RECIPIENT not in json.dumps(span), f"the recipient in span {span['name']}"
    print("\n" + tree(spans), file=sys.stderr)

    # the task's own log line names its trace (and its span)
    def logged() -> bool:
        return f"trace_id={trace_id}" in stack.logs()

    wait_until(logged, WAIT, "a log line of the task with its trace id")


def test_concurrent_requests_each_have_their_own_trace(stack: TracedStack) -> None:
    trace_ids = [secrets.token_hex(16) for _ in range(CONCURRENT)]
    path, body = PROCESS[stack.runner]
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        numbers = range(1, CONCURRENT + 1)
        calls = [
            pool.submit(post, stack, path, body(n), t)
            for n, t in zip(numbers, trace_ids, strict=True)
        ]
        responses = [call.result() for call in calls]
    task_ids = {
        trace_id: str(response.json().get("task_id", ""))
        for trace_id, response in zip(trace_ids, responses, strict=True)
    }

    def all_ran() -> list[dict[str, Any]] | None:
        runs = [s for s in runs_of(stack.spans(), "process") if trace_of(s) in task_ids]
        return runs if len(runs) >= CONCURRENT else None

    runs = wait_until(all_ran, WAIT, f"{CONCURRENT} runs traced")
    assert sorted(trace_of(s) for s in runs) == sorted(trace_ids), "one run per trace"

    def parents_exported() -> dict[str, dict[str, Any]] | None:
        by_id = {span_id(s): s for s in stack.spans()}
        return by_id if all(run["parent_id"] in by_id for run in runs) else None

    by_id = wait_until(parents_exported, WAIT, "the enqueue spans of the runs")
    for run in runs:
        parent = by_id[run["parent_id"]]
        assert trace_of(parent) == trace_of(run)
        if stack.runner != "builtin":
            # the task queued by the request of that trace, none other's
            task_id = task_ids[trace_of(run)]
            assert run["attributes"]["messaging.message.id"] == task_id
            assert kind(parent) == "PRODUCER"


def tree(spans: list[dict[str, Any]]) -> str:
    """The spans as an indented tree: name, kind, service."""
    children: dict[Any, list[dict[str, Any]]] = {}
    ids = {span_id(s) for s in spans}
    for span in sorted(spans, key=lambda s: str(s["start_time"])):
        parent = span.get("parent_id")
        children.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: Any, depth: int) -> None:
        for span in children.get(parent, []):
            lines.append(f"{'  ' * depth}{span['name']} [{kind(span)}, {service(span)}]")
            walk(span_id(span), depth + 1)

    walk(None, 0)
    return "\n".join(lines)

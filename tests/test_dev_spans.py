"""`bgtasks dev` shows the spans its processes print as traces (dev_spans.py): fed the
real output of OpenTelemetry's console exporter (the installed SDK of .venvs/celery),
from two processes sharing one trace through W3C trace context, as dev's processes do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bgtasks_gen.dev_spans import (
    Span,
    SpanReader,
    TraceBoard,
    console_environment,
    parse_span,
    wants_console,
)
from tests.e2e.harness import runner_python

# a process exporting with the console exporter, as the generated tracing module sets it
# up; argv[1] is "web" (a request that queues a task, its traceparent printed last) or
# "worker" (the task's run, a child of the traceparent in argv[2], with its SMTP send)
PROCESS = """
import sys
import time
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
tracer = provider.get_tracer("bgtasks")
print("INFO:     Application startup complete.")
if sys.argv[1] == "web":
    with tracer.start_as_current_span("POST /tasks/send-email", kind=SpanKind.SERVER):
        time.sleep(0.002)
        with tracer.start_as_current_span("enqueue send_email", kind=SpanKind.PRODUCER):
            carrier = {}
            propagate.inject(carrier)
    print('{"not": "a span"}')
    print("TRACEPARENT", carrier["traceparent"])
else:
    parent = propagate.extract({"traceparent": sys.argv[2]})
    with tracer.start_as_current_span("run send_email", parent, kind=SpanKind.CONSUMER):
        with tracer.start_as_current_span("smtp send", kind=SpanKind.CLIENT) as span:
            span.set_status(StatusCode.ERROR)
"""
LINE = re.compile(r"^( *)(\S.*?)  ([A-Z]+) (web|worker) (\d+\.\d)ms( ERROR)?$")


def _output(*args: str) -> list[str]:
    result = subprocess.run(
        [str(runner_python("celery")), "-c", PROCESS, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(keepends=True)


@pytest.fixture(scope="module")
def outputs() -> tuple[list[str], list[str]]:
    web = _output("web")
    traceparent = next(line for line in web if line.startswith("TRACEPARENT")).split()[1]
    return web, _output("worker", traceparent)


def _read(lines: list[str], reader: SpanReader) -> list[str]:
    return [kept for line in lines for kept in reader.feed(line)]


def test_spans_are_taken_out_of_the_output_and_the_rest_kept(
    outputs: tuple[list[str], list[str]],
) -> None:
    web, _worker = outputs
    spans: list[Span] = []
    kept = _read(web, SpanReader("web", spans.append))
    assert [s.name for s in spans] == ["enqueue send_email", "POST /tasks/send-email"]
    assert [s.kind for s in spans] == ["PRODUCER", "SERVER"]
    assert spans[0].parent_id == spans[1].span_id and spans[1].parent_id is None
    assert spans[0].trace_id == spans[1].trace_id and len(spans[0].trace_id) == 32
    assert spans[1].milliseconds >= 2.0
    assert kept[0] == "INFO:     Application startup complete.\n"
    assert kept[1] == '{"not": "a span"}\n'  # a one-line JSON document passes through
    assert kept[2].startswith("TRACEPARENT 00-")
    assert len(kept) == 3


def test_a_trace_from_two_processes_is_one_tree(outputs: tuple[list[str], list[str]]) -> None:
    web, worker = outputs
    board = TraceBoard(quiet=1.0)
    _read(web, SpanReader("web", lambda span: board.add(span, now=10.0)))
    _read(worker, SpanReader("worker", lambda span: board.add(span, now=10.5)))
    assert board.due(now=11.2) == []  # the worker's spans came 0.7 s ago: still waiting
    header, *lines = board.due(now=11.5)
    assert board.due(now=20.0) == []  # shown once
    assert re.fullmatch(r"trace [0-9a-f]{12} 4 spans \d+\.\dms", header), header
    shapes = [LINE.match(line) for line in lines]
    assert all(shapes), lines
    assert [(len(m[1]), m[2], m[3], m[4], bool(m[6])) for m in shapes if m] == [
        (2, "POST /tasks/send-email", "SERVER", "web", False),
        (4, "enqueue send_email", "PRODUCER", "web", False),
        (6, "run send_email", "CONSUMER", "worker", False),
        (8, "smtp send", "CLIENT", "worker", True),
    ]


def test_a_span_arriving_after_its_trace_was_shown_sits_under_its_parent(
    outputs: tuple[list[str], list[str]],
) -> None:
    web, worker = outputs
    board = TraceBoard(quiet=1.0)
    _read(web, SpanReader("web", lambda span: board.add(span, now=0.0)))
    first = board.due(now=1.0)
    assert len(first) == 3
    _read(worker, SpanReader("worker", lambda span: board.add(span, now=5.0)))
    header, run, smtp = board.flush()
    trace_id = first[0].split()[1]
    assert header == f"trace {trace_id} continued: 2 spans"
    assert run.startswith("      run send_email  CONSUMER worker ")  # below enqueue (depth 2)
    assert smtp.startswith("        smtp send  CLIENT worker ")


def test_a_document_that_is_not_a_span_is_printed_as_it_came() -> None:
    spans: list[Span] = []
    reader = SpanReader("web", spans.append)
    lines = ["{\n", '    "name": "settings"\n', "}\n", "after\n"]
    assert _read(lines, reader) == lines
    assert spans == []
    assert parse_span('{"name": "x"}', "web") is None


def test_dev_exports_to_the_console_only_when_the_user_chose_no_exporter() -> None:
    assert wants_console(["dashboard", "otel"], {})
    assert wants_console(["otel"], {"OTEL_TRACES_EXPORTER": " "})
    assert not wants_console(["otel"], {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not wants_console(["otel"], {"OTEL_TRACES_EXPORTER": "none"})
    assert not wants_console(["dashboard"], {})
    assert not wants_console(None, {})
    assert console_environment({}) == {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    assert console_environment({"OTEL_BSP_SCHEDULE_DELAY": "50"}) == {
        "OTEL_TRACES_EXPORTER": "console"
    }


@pytest.mark.e2e
def test_bgtasks_dev_shows_a_request_and_its_task_as_one_trace(tmp_path: Path) -> None:
    """A real `bgtasks dev` on an arq project with `--with otel`: an email queued over
    HTTP shows as one trace across the web process and the worker, and no span JSON."""
    from tests.e2e.harness import missing, scaffold, wait_until
    from tests.e2e.test_dev_e2e import (
        bgtasks_dev,
        closed_redis,
        send_email,
        stop_and_check_everything_is_gone,
        wait_for_api,
    )

    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    project = scaffold("layered", tmp_path, "--runner", "arq", "--with", "otel")
    with bgtasks_dev(
        project, runner_python("arq"), tmp_path, {"REDIS_URL": closed_redis(0)}
    ) as run:
        wait_for_api(run)
        assert "traces: each finished trace is shown below" in run.output()
        wait_until(lambda: "Starting worker" in run.output(), 30, f"the worker\n{run.output()}")
        send_email(run, "/tasks/send-email")

        def shown() -> list[str] | None:
            spans = [
                line.split("|", 1)[1][1:]
                for line in run.output().splitlines()
                if line.split("|")[0].strip().endswith("spans") and "|" in line
            ]
            return spans if any("smtp send  CLIENT worker" in s for s in spans) else None

        spans = wait_until(shown, 30, f"the trace in dev's output\n{run.output()}")
        start = max(i for i, s in enumerate(spans) if "POST /tasks/send-email  SERVER web" in s)
        tree = [LINE.match(s) for s in spans[start:]]
        assert all(tree), spans
        depths = {m[2]: len(m[1]) for m in tree if m}
        assert spans[start - 1].startswith("trace ") or "continued" in " ".join(spans)
        assert depths["enqueue send_email"] > depths["POST /tasks/send-email"], spans
        assert depths["run send_email"] > depths["enqueue send_email"], spans
        assert depths["smtp send"] > depths["run send_email"], spans
        assert '"trace_id"' not in run.output()
        banner = run.banner()
        stop_and_check_everything_is_gone(run, [run.port, int(banner["smtp"])])

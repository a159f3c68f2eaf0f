"""`bgtasks dev` with `--with otel`: the spans the processes print, shown as traces.

The processes export with OpenTelemetry's console exporter, which writes each finished
span as an indented JSON document on stdout. SpanReader picks those documents out of a
process's lines (every other line passes through untouched); TraceBoard gathers the
spans of all processes by trace id and, once a trace has been quiet for a moment (its
spans arrive from several processes, each exporting in batches), renders it as one line
per span, indented by depth:

    trace 2d160e7d1ff0 3 spans 41.2ms
      POST /tasks/send-email  SERVER web 12.3ms
        enqueue send_email  PRODUCER web 1.1ms
          run send_email  CONSUMER worker 25.0ms

A span that arrives after its trace was shown (a task run later) is shown on its own,
under the trace's id, indented below the span it belongs to when that one was shown.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# how long a trace waits for more spans after its last one before it is shown
QUIET_SECONDS = 1.0
# how many shown traces keep their span depths for late spans
REMEMBERED_TRACES = 256
SHORT_TRACE_ID = 12


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # SERVER, PRODUCER, CONSUMER, CLIENT, INTERNAL
    process: str  # the dev process that printed it
    start: datetime.datetime
    end: datetime.datetime
    failed: bool

    @property
    def milliseconds(self) -> float:
        return (self.end - self.start).total_seconds() * 1000


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_span(document: str, process: str) -> Span | None:
    """The span a console exporter document describes; None when it is not one."""
    try:
        data = json.loads(document)
        context = data["context"]
        return Span(
            trace_id=str(context["trace_id"]).removeprefix("0x"),
            span_id=str(context["span_id"]).removeprefix("0x"),
            parent_id=str(data["parent_id"]).removeprefix("0x") if data["parent_id"] else None,
            name=str(data["name"]),
            kind=str(data["kind"]).removeprefix("SpanKind."),
            process=process,
            start=_time(data["start_time"]),
            end=_time(data["end_time"]),
            failed=(data.get("status") or {}).get("status_code") == "ERROR",
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class SpanReader:
    """One process's output, line by line: the span documents go to `on_span`, every
    other line is returned for printing as it came."""

    process: str
    on_span: Callable[[Span], None]
    _held: list[str] = field(default_factory=list)

    def feed(self, line: str) -> list[str]:
        text = line.rstrip("\r\n")
        if not self._held:
            if text != "{":  # the exporter's documents open with a lone brace
                return [line]
            self._held.append(text)
            return []
        self._held.append(text)
        if text != "}":
            # a document is a few dozen lines: a runaway one is not a span
            return self.flush() if len(self._held) > 500 else []
        document = "\n".join(self._held)
        span = parse_span(document, self.process)
        if span is None:
            return self.flush()
        self._held = []
        self.on_span(span)
        return []

    def flush(self) -> list[str]:
        """The lines held back for a document that turned out not to be one."""
        held, self._held = self._held, []
        return [line + "\n" for line in held]


@dataclass
class _Pending:
    spans: list[Span] = field(default_factory=list)
    last_seen: float = 0.0


class TraceBoard:
    """Spans of every process, by trace; `due` renders the traces gone quiet."""

    def __init__(self, quiet: float = QUIET_SECONDS) -> None:
        self.quiet = quiet
        self.pending: dict[str, _Pending] = {}
        # trace id -> span id -> depth, for the spans already shown
        self.shown: dict[str, dict[str, int]] = {}

    def add(self, span: Span, now: float) -> None:
        pending = self.pending.setdefault(span.trace_id, _Pending())
        pending.spans.append(span)
        pending.last_seen = now

    def due(self, now: float) -> list[str]:
        """The lines of every trace with no new span for `quiet` seconds."""
        ready = [t for t, p in self.pending.items() if now - p.last_seen >= self.quiet]
        return [line for trace_id in ready for line in self._render(trace_id)]

    def flush(self) -> list[str]:
        """The lines of every trace still waiting (the stack is stopping)."""
        return [line for trace_id in list(self.pending) for line in self._render(trace_id)]

    def _render(self, trace_id: str) -> list[str]:
        spans = sorted(self.pending.pop(trace_id).spans, key=lambda s: s.start)
        depths = self.shown.setdefault(trace_id, {})
        late = bool(depths)
        ids = {span.span_id for span in spans}
        children: dict[str | None, list[Span]] = {}
        for span in spans:
            parent = span.parent_id if span.parent_id in ids else None
            children.setdefault(parent, []).append(span)
        lines: list[str] = []

        def walk(span: Span, depth: int) -> None:
            depths[span.span_id] = depth
            failed = " ERROR" if span.failed else ""
            lines.append(
                f"{'  ' * (depth + 1)}{span.name}  {span.kind} {span.process} "
                f"{span.milliseconds:.1f}ms{failed}"
            )
            for child in children.get(span.span_id, []):
                walk(child, depth + 1)

        for top in children.get(None, []):
            # a span whose parent was shown earlier (or another process's) sits below it
            known = depths.get(top.parent_id or "")
            walk(top, 0 if known is None else known + 1)
        total = (max(s.end for s in spans) - min(s.start for s in spans)).total_seconds() * 1000
        count = f"{len(spans)} span{'s' if len(spans) != 1 else ''}"
        header = f"trace {trace_id[:SHORT_TRACE_ID]} {count} {total:.1f}ms"
        if late:
            header = f"trace {trace_id[:SHORT_TRACE_ID]} continued: {count}"
        while len(self.shown) > REMEMBERED_TRACES:
            del self.shown[next(iter(self.shown))]
        return [header, *lines]


def console_environment(environ: dict[str, str]) -> dict[str, str]:
    """The variables that make the processes print their spans for TraceBoard: the
    console exporter, and batches sent every 200 ms (the SDK's default is 5 s)."""
    added = {"OTEL_TRACES_EXPORTER": "console"}
    if "OTEL_BSP_SCHEDULE_DELAY" not in environ:
        added["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    return added


def wants_console(features: Any, environ: dict[str, str]) -> bool:
    """Whether dev shows the spans itself: the project traces, and the user has not
    chosen an exporter."""
    return (
        isinstance(features, list)
        and "otel" in features
        and not environ.get("OTEL_TRACES_EXPORTER", "").strip()
    )

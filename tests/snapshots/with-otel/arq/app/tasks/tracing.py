"""Traces across the queue (`--with otel`): the request, its enqueue, the task's run and
the email's SMTP send share one trace.

Configured by the standard OpenTelemetry variables only, read once per process by
set_up:
- OTEL_TRACES_EXPORTER: `otlp` (OTLP over HTTP/protobuf, the exporter installed with the
  project), `console` (one JSON document per span on stdout), any other exporter
  installed under its entry point name, or `none`. Unset, nothing is exported, as the
  OpenTelemetry SDK's own configuration does.
- OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), _HEADERS,
  _TIMEOUT: read by the OTLP exporter itself (http://localhost:4318 by default).
- OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES): the service; when
  unset, the process's role: "web", "worker" or "scheduler".
- OTEL_TRACES_SAMPLER, OTEL_BSP_*: sampling and batching, read by the SDK.
- OTEL_SDK_DISABLED=true: nothing is set up.
An application that sets its own tracer provider before this module runs keeps it.

The context travels with each message as W3C trace context (`traceparent`,
`tracestate`), made per message from the span current when it is queued. Spans never
carry a task's arguments: they may be personal data (an email's address and text).

Every log record gets `trace_id` and `span_id` (32 and 16 hex digits, zeros outside a
span), for a log format or a structured handler to write out.
"""

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode

logger = logging.getLogger(__name__)

SYSTEM = "arq"
# the W3C trace context fields a message carries, and nothing else
CARRIER_KEYS = ("traceparent", "tracestate")
TRACER = trace.get_tracer("bgtasks")  # follows the provider set_up installs
# arq has no message headers: the job's keyword argument that carries the context
JOB_KEYWORD = "_bgtasks_trace"
NO_TRACE_ID = "0" * 32
NO_SPAN_ID = "0" * 16

_set_up_lock = threading.Lock()
_set_up_role: list[str] = []

Result = TypeVar("Result")


def set_up(role: str) -> None:
    """Install the tracer provider the OTEL_* variables describe, once per process;
    `role` ("web", "worker", "scheduler") is the service name when none is set. The
    first call decides; later ones do nothing."""
    with _set_up_lock:
        if _set_up_role:
            return
        _set_up_role.append(role)
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return
        exporters = _exporter_names()
        if not exporters:
            return
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return  # the application installed its own provider: it is kept
        _install_provider(role, exporters)


def _exporter_names() -> list[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "")
    chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
    return [name for name in chosen if name != "none"]


def _entry_point_name(name: str) -> str:
    """`otlp` is OTLP over the protocol the variables name (HTTP/protobuf, the exporter
    the project installs, unless they say grpc)."""
    if name != "otlp":
        return name
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"


def _install_provider(role: str, exporters: list[str]) -> None:
    # the SDK is imported only in a process that exports
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create({} if named else {SERVICE_NAME: role})
    provider = TracerProvider(resource=resource)
    available = {
        point.name: point
        for point in entry_points(group="opentelemetry_traces_exporter")
    }
    for name in exporters:
        point = available.get(_entry_point_name(name))
        if point is None:
            logger.warning(
                "OTEL_TRACES_EXPORTER names %r, which is not installed", name
            )
            continue
        provider.add_span_processor(BatchSpanProcessor(point.load()()))
    trace.set_tracer_provider(provider)


def flush() -> None:
    """Export the spans still waiting (a worker process about to exit)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if callable(force_flush):
        force_flush()


def inject_context() -> dict[str, str]:
    """The current trace context as message fields (empty outside a span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {key: carrier[key] for key in CARRIER_KEYS if key in carrier}


def extracted(carrier: Mapping[str, Any] | None) -> Context:
    """The context a message carried: a new trace when it carried none."""
    fields = {
        key: value
        for key in CARRIER_KEYS
        if isinstance(value := (carrier or {}).get(key), str)
    }
    return propagate.extract(fields)


def _failed(span: Span, error: BaseException) -> None:
    # the type only: an error's text may quote an address
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def _span(
    name: str, kind: SpanKind, attributes: dict[str, str], parent: Context | None = None
) -> Iterator[Span]:
    with TRACER.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            _failed(span, error)
            raise


def _task_attributes(task: str, task_id: str | None, operation: str) -> dict[str, str]:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "bgtasks.task": task,
    }
    if task_id:
        attributes["messaging.message.id"] = task_id
    return attributes


def producer_span(
    task: str, task_id: str | None = None
) -> contextlib.AbstractContextManager[Span]:
    """The span of queueing `task`: messages made inside it carry it as their parent."""
    return _span(
        f"enqueue {task}", SpanKind.PRODUCER, _task_attributes(task, task_id, "send")
    )


def consumer_span(
    task: str, task_id: str | None, carrier: Mapping[str, Any] | None
) -> contextlib.AbstractContextManager[Span]:
    """The span of running `task`, a child of the span that queued it."""
    attributes = _task_attributes(task, task_id, "process")
    return _span(f"run {task}", SpanKind.CONSUMER, attributes, extracted(carrier))


def smtp_span() -> contextlib.AbstractContextManager[Span]:
    """The span of one SMTP delivery (never its recipient)."""
    return _span("smtp send", SpanKind.CLIENT, {"network.protocol.name": "smtp"})


class RunningTask:
    """A consumer span opened and closed by two hooks (a task's start and its end),
    current in between."""

    def __init__(
        self, task: str, task_id: str | None, carrier: Mapping[str, Any] | None
    ) -> None:
        self._scope = consumer_span(task, task_id, carrier)
        self.span = self._scope.__enter__()

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            _failed(self.span, error)
        self._scope.__exit__(None, None, None)


class IncomingRequest(Protocol):
    """What request_handler reads of a request (a Starlette request has it)."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


Incoming = TypeVar("Incoming", bound=IncomingRequest)


def request_handler(
    handle: Callable[[Incoming], Coroutine[Any, Any, Result]], route: str
) -> Callable[[Incoming], Coroutine[Any, Any, Result]]:
    """`handle` (a route's handler) inside a SERVER span, unless the request has one
    already (FastAPI's own telemetry, or another instrumentation, made it)."""

    @functools.wraps(handle)
    async def traced(request: Incoming) -> Result:
        if trace.get_current_span().get_span_context().is_valid:
            return await handle(request)
        method = request.method
        attributes = {"http.request.method": method, "http.route": route}
        parent = propagate.extract(dict(request.headers))
        with _span(f"{method} {route}", SpanKind.SERVER, attributes, parent):
            return await handle(request)

    return traced


def _with_trace_fields(
    make: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    if getattr(make, "bgtasks_trace_fields", False):
        return make

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        current = trace.get_current_span().get_span_context()
        valid = current.is_valid
        record.trace_id = format(current.trace_id, "032x") if valid else NO_TRACE_ID
        record.span_id = format(current.span_id, "016x") if valid else NO_SPAN_ID
        return record

    make_record.bgtasks_trace_fields = True  # type: ignore[attr-defined]
    return make_record


logging.setLogRecordFactory(_with_trace_fields(logging.getLogRecordFactory()))

"""The task metrics: one Prometheus scrape of `GET {prefix}/metrics`.

Every worker and web process adds to the same counts in Redis (the task-state store,
celery_inbox.py), so one scrape of any web process shows them all, and a
worker's restart loses none but the runs it had in flight:

- bgtasks_tasks_total{task, state}: queued (through the API), started, succeeded,
  failed, retried
- bgtasks_task_duration_seconds{task}: a histogram of the runs that ended
- bgtasks_queue_depth{queue}, bgtasks_oldest_queued_seconds{queue}: read at the scrape
- bgtasks_enqueue_errors_total{reason}: broker_unavailable, outcome_unknown, queue_full

The route goes through the router's access hook ("metrics.read"): give your scraper
the API token (`authorization: Bearer ...` in its scrape config).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from redis.exceptions import RedisError

from app.tasks import celery_inbox as store
from app.tasks import registry
from app.tasks.celery_queues import queue_depths

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "The task store is unavailable"}
}


def metrics_routes(
    router: APIRouter,
    *,
    caller: Any,
    scrape: Callable[[Request], Awaitable[str]],
) -> None:
    """Add `GET /metrics` to `router` (its access hook guards it: `caller` is its
    dependency); `scrape(request)` returns the exposition text."""

    @router.get(
        "/metrics",
        name="bgtasks_metrics",
        summary="Task metrics (Prometheus text format)",
        response_class=PlainTextResponse,
        responses=UNAVAILABLE,
    )
    async def metrics(request: Request, who: str = caller) -> PlainTextResponse:
        del who  # admitted by the hook
        try:
            text = await scrape(request)
        except RedisError:
            raise HTTPException(
                status_code=503, detail="The task store is unavailable"
            ) from None
        return PlainTextResponse(text, media_type=CONTENT_TYPE)


def _label(value: str) -> str:
    """A label value as the text format escapes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _split(field: Any) -> tuple[str, str]:
    text = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
    task, _, rest = text.rpartition(store.SEPARATOR)
    return task, rest


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


async def exposition(client: Any, queues: list[dict[str, Any]]) -> str:
    """The text of one scrape: the counts in Redis (one round trip), and `queues` (the
    runner's queue_depths())."""
    await store.aflush_counts(client)  # this process's, if Redis was away
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(store.COUNTS_KEY)
        pipe.hgetall(store.DURATIONS_KEY)
        pipe.hgetall(store.ENQUEUE_ERRORS_KEY)
        counts, durations, errors = await pipe.execute()
    lines = [
        "# HELP bgtasks_tasks_total Tasks by state, across every process.",
        "# TYPE bgtasks_tasks_total counter",
    ]
    for field, value in sorted((_split(f), int(v)) for f, v in counts.items()):
        task, state = field
        lines.append(
            f'bgtasks_tasks_total{{task="{_label(task)}",state="{state}"}} {value}'
        )
    lines += [
        "# HELP bgtasks_task_duration_seconds How long the runs that ended took.",
        "# TYPE bgtasks_task_duration_seconds histogram",
    ]
    per_task: dict[str, dict[str, float]] = {}
    for field, value in durations.items():
        task, part = _split(field)
        per_task.setdefault(task, {})[part] = float(value)
    bounds = [*map(_number, store.DURATION_BUCKETS), "+Inf"]
    for task in sorted(per_task):
        parts, name, seen = per_task[task], _label(task), 0.0
        for index, bound in enumerate(bounds):
            seen += parts.get(str(index), 0.0)
            lines.append(
                f'bgtasks_task_duration_seconds_bucket{{task="{name}",le="{bound}"}} '
                f"{_number(seen)}"
            )
        lines.append(
            f'bgtasks_task_duration_seconds_sum{{task="{name}"}} '
            f"{_number(parts.get('sum', 0.0))}"
        )
        lines.append(
            f'bgtasks_task_duration_seconds_count{{task="{name}"}} '
            f"{_number(parts.get('count', 0.0))}"
        )
    lines += [
        "# HELP bgtasks_queue_depth Tasks waiting in the queue.",
        "# TYPE bgtasks_queue_depth gauge",
    ]
    for queue in queues:
        if queue["depth"] is not None:
            name = _label(queue["name"])
            lines.append(f'bgtasks_queue_depth{{queue="{name}"}} {queue["depth"]}')
    lines += [
        "# HELP bgtasks_oldest_queued_seconds How long the first waiting task waited.",
        "# TYPE bgtasks_oldest_queued_seconds gauge",
    ]
    for queue in queues:
        known = queue["depth"] == 0 or queue["oldest_seconds"] is not None
        if queue["depth"] is not None and known:  # Celery's sent times are not known
            name, waited = _label(queue["name"]), queue["oldest_seconds"] or 0.0
            line = f'bgtasks_oldest_queued_seconds{{queue="{name}"}} {waited:.3f}'
            lines.append(line)
    lines += [
        "# HELP bgtasks_enqueue_errors_total Requests to queue a task that failed.",
        "# TYPE bgtasks_enqueue_errors_total counter",
    ]
    for reason, value in sorted((_split(f)[1], int(v)) for f, v in errors.items()):
        name = _label(reason)
        lines.append(f'bgtasks_enqueue_errors_total{{reason="{name}"}} {value}')
    return "\n".join(lines) + "\n"


async def scrape(request: Request) -> str:
    """The counts in the result backend's Redis, and the queues as the broker has
    them now."""
    del request  # Celery's clients are the app's own
    return await exposition(registry.async_client(), await queue_depths())

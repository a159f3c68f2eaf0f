"""`--with metrics` against real processes: two workers, two web processes, one Redis.

For each queue runner, tasks queued through both web processes and run by two workers
(some succeed, some fail for good) are counted exactly once in `GET {prefix}/metrics`,
whichever web process is scraped: queued, started, succeeded and failed per task, a
duration histogram whose count is the runs that ended, the queue's depth. With Redis
stopped, a request to queue answers 503 and is counted as an enqueue error once Redis is
back. The route is the hook's like every other: 401 without the token.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.dashboard_stack import WAIT, DashboardStack, dashboard_stack
from tests.e2e.harness import AUTH, wait_until

pytestmark = pytest.mark.e2e

SUCCEEDING = 6
FAILING = 2
PROCESS = {
    "celery": ("/process-order", lambda n: {"order_id": n}),
    "arq": ("/process-data", lambda n: {"data_id": n, "values": [1.0, 2.0, float(n)]}),
    "taskiq": ("/process-data", lambda n: {"data_id": n, "values": [1.0, 2.0, float(n)]}),
}
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


@pytest.fixture(scope="module", params=["celery", "arq", "taskiq"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardStack]:
    runner = str(request.param)
    root = tmp_path_factory.mktemp(f"metrics-{runner}")
    with dashboard_stack(runner, root, "--with", "metrics", workers=2, webs=2) as built:
        yield built


def scrape(
    stack: DashboardStack, base: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{base}{stack.prefix}/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        found = SAMPLE.match(line)
        if found:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', found["labels"])))
            samples[(found["name"], labels)] = float(found["value"])
    return samples


def count(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


def task_named(samples: dict[Any, float], fragment: str) -> str:
    names = {dict(labels).get("task", "") for (_, labels) in samples}
    (found,) = [name for name in names if fragment in name]
    return found


def test_two_workers_and_two_web_processes_count_once(stack: DashboardStack) -> None:
    assert httpx.get(stack.url("/metrics"), timeout=10).status_code == 401
    path, body = PROCESS[stack.runner]
    ids = []
    for number in range(SUCCEEDING):
        base = stack.bases[number % 2]
        response = httpx.post(
            f"{base}{stack.prefix}{path}", headers=AUTH, json=body(number + 1), timeout=10
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["task_id"])
    for number in range(FAILING):
        base = stack.bases[number % 2]
        payload = {"to": "grace@example.com", "subject": f"m{number}", "body": "x"}
        response = httpx.post(
            f"{base}{stack.prefix}/send-email", headers=AUTH, json=payload, timeout=10
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["task_id"])

    def all_done() -> dict[Any, float] | None:
        samples = scrape(stack, stack.bases[1])
        ended = count(samples, "bgtasks_tasks_total", state="succeeded") + count(
            samples, "bgtasks_tasks_total", state="failed"
        )
        return samples if ended >= SUCCEEDING + FAILING else None

    samples = wait_until(all_done, WAIT * 2, "every task counted as ended", interval=0.5)
    time.sleep(1.0)  # a double count would show up after the first full count
    first, second = scrape(stack, stack.bases[0]), scrape(stack, stack.bases[1])
    tasks = {k: v for k, v in first.items() if k[0] == "bgtasks_tasks_total"}
    assert tasks == {k: v for k, v in second.items() if k[0] == "bgtasks_tasks_total"}

    process = task_named(first, "process")
    email = task_named(first, "send_email")
    total = "bgtasks_tasks_total"
    assert count(first, total, task=process, state="queued") == SUCCEEDING
    assert count(first, total, task=process, state="started") == SUCCEEDING
    assert count(first, total, task=process, state="succeeded") == SUCCEEDING
    assert count(first, total, task=process, state="failed") == 0
    assert count(first, total, task=email, state="queued") == FAILING
    assert count(first, total, task=email, state="failed") == FAILING
    assert count(first, total, task=email, state="succeeded") == 0
    histogram = "bgtasks_task_duration_seconds_count"
    assert count(first, histogram, task=process) == SUCCEEDING
    inf = count(first, "bgtasks_task_duration_seconds_bucket", task=process, le="+Inf")
    assert inf == SUCCEEDING
    assert count(first, "bgtasks_task_duration_seconds_sum", task=process) > 0
    depth = [k for k in first if k[0] == "bgtasks_queue_depth"]
    assert depth and all(first[k] == 0 for k in depth), depth
    assert samples  # the wait saw them too
    # the scrape as a reader sees it (pytest -s)
    for key in sorted(first, key=str):
        if not key[0].endswith("_bucket"):
            print(key, first[key], file=sys.stderr)


def test_an_enqueue_refused_while_redis_is_down_is_counted(stack: DashboardStack) -> None:
    before = count(scrape(stack, stack.bases[0]), "bgtasks_enqueue_errors_total")
    path, body = PROCESS[stack.runner]
    stack.redis.stop()
    try:
        response = httpx.post(stack.url(path), headers=AUTH, json=body(99), timeout=30)
        assert response.status_code == 503, response.text
    finally:
        stack.redis.start()

    def counted() -> bool:
        samples = scrape(stack, stack.bases[0])
        errors = count(samples, "bgtasks_enqueue_errors_total", reason="broker_unavailable")
        return errors >= before + 1

    wait_until(counted, WAIT, "the refused enqueue counted once Redis is back", interval=0.5)
    after = count(scrape(stack, stack.bases[1]), "bgtasks_enqueue_errors_total")
    assert after == before + 1

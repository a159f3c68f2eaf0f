"""The task dashboard of celery, arq and taskiq, against real processes.

For each queue runner: a scaffolded project (the dashboard on by default) with its real
worker, scheduler and web app on a private redis-server. The page's data tells the
truth: a long task shows up running with its progress advancing, then as a success in
the recent outcomes; an email the SMTP sink refuses shows up as a failure and in the
failed-task inbox, its recipient never shown; the worker (and the scheduler, where it
is a process of its own) read as alive; every schedule has a next run in the future.
Signing in exchanges the API token for a session cookie; without it the data is 401,
and a change through the cookie without the CSRF token is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.dashboard_stack import (
    RECIPIENT,
    RESULT_RETENTION,
    WAIT,
    DashboardStack,
    csrf_of,
    dashboard_stack,
)
from tests.e2e.harness import AUTH, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["celery", "arq", "taskiq"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardStack]:
    runner = str(request.param)
    with dashboard_stack(runner, tmp_path_factory.mktemp(f"dashboard-{runner}")) as built:
        yield built


def _running(board: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    return next((run for run in board["running"] if run["task_id"] == task_id), None)


def _outcome(board: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    return next((done for done in board["recent"] if done["task_id"] == task_id), None)


def test_the_page_data_tells_the_truth(stack: DashboardStack) -> None:
    started = time.time()
    alive = stack.board_when(
        lambda b: b["worker_alive"] and b["scheduler_alive"] is not False,
        f"the {stack.runner} worker and scheduler alive on the dashboard",
    )
    # arq runs cron jobs inside its workers: no scheduler of its own to report
    assert alive["scheduler_alive"] is (None if stack.runner == "arq" else True)
    schedules = alive["schedules"]
    assert schedules, alive
    timed = [row["next_run"] for row in schedules if row["next_run"] is not None]
    assert timed and all(at > started for at in timed), schedules
    assert all(row["task"] and row["when"] for row in schedules), schedules
    queue = alive["queues"][0]
    assert isinstance(queue["depth"], int) and queue["depth"] >= 0, alive["queues"]

    # a long task: running, its progress advancing, then a success
    task_id = stack.long_task(60)  # 6 s
    first = stack.board_when(
        lambda b: (_running(b, task_id) or {}).get("progress") is not None,
        f"{task_id} running with progress",
    )
    seen = _running(first, task_id)
    assert seen is not None and seen["task"].endswith(("long_running", "long_running_task"))
    later = stack.board_when(
        lambda b: (
            (_running(b, task_id) or {"progress": {"current": 10**6}})["progress"]["current"]
            > seen["progress"]["current"]
        ),
        f"{task_id}'s progress advancing",
    )
    assert later["generated_at"] > first["generated_at"]
    done = stack.board_when(lambda b: _outcome(b, task_id) is not None, f"{task_id} done")
    assert _outcome(done, task_id)["success"] is True, done["recent"]  # type: ignore[index]
    assert _running(done, task_id) is None
    # its result is kept as long as the setting says (BGTASKS_RESULT_RETENTION_SECONDS)
    assert 0 < stack.result_ttl(task_id) <= RESULT_RETENTION, stack.runner

    # an email refused for good: a failure, kept in the inbox, its recipient hidden
    email_id = stack.refused_email(f"Refused {uuid.uuid4()}")
    failed = stack.board_when(
        lambda b: (
            _outcome(b, email_id) is not None
            and any(e["id"] == email_id for e in b["failed"]["entries"])
        ),
        f"{email_id} failed and kept",
        timeout=WAIT * 2,
    )
    outcome = _outcome(failed, email_id)
    assert outcome is not None and outcome["success"] is False and outcome["error"]
    assert failed["failed"]["total"] >= 1
    text = stack.data().text
    assert RECIPIENT not in text and "lovelace" not in text, stack.logs()


def test_signing_in_and_the_refusals(stack: DashboardStack) -> None:
    # the page's shell is open to anyone (it holds no data); its data is not
    shell = httpx.get(stack.url("/dashboard"), timeout=10)
    assert shell.status_code == 200 and "Content-Security-Policy" in shell.headers
    assert stack.data(headers={}).status_code == 401
    forged = {"bgtasks_dashboard": "eyJ4IjoxfQ.00"}
    assert stack.data(headers={}, cookies=forged).status_code == 401

    signed = httpx.post(stack.url("/dashboard/session"), headers=AUTH, timeout=10)
    assert signed.status_code == 204, signed.text
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    with httpx.Client(base_url=stack.base, timeout=10) as browser:
        browser.cookies.set("bgtasks_dashboard", signed.cookies["bgtasks_dashboard"])
        assert browser.get(f"{stack.prefix}/dashboard/data").status_code == 200
        page = browser.get(f"{stack.prefix}/dashboard")
        csrf = csrf_of(page.text)
        assert csrf

        email_id = stack.refused_email(f"Replay me {uuid.uuid4()}")
        wait_until(
            lambda: any(e["id"] == email_id for e in stack.board()["failed"]["entries"]),
            WAIT * 2,
            f"{email_id} in the inbox",
        )
        replay = f"{stack.prefix}/failed/{email_id}/replay"
        # the cookie alone cannot change anything: the CSRF token must come with it
        json_body = {"content-type": "application/json"}
        refused = browser.post(replay, headers=json_body)
        assert refused.status_code == 401, refused.text
        wrong = browser.post(replay, headers={**json_body, "x-csrf-token": "not-it"})
        assert wrong.status_code == 401, wrong.text
        stack.sink.rcpt_reply = "250 OK"
        try:
            accepted = browser.post(replay, headers={**json_body, "x-csrf-token": csrf})
            assert accepted.status_code == 202, accepted.text
            wait_until(
                lambda: any(m["To"] == RECIPIENT for m in stack.sink.messages),
                WAIT,
                "the replayed email at the sink",
            )
        finally:
            stack.sink.rcpt_reply = "550 5.1.1 no such mailbox here"
        signed_out = browser.delete(
            f"{stack.prefix}/dashboard/session", headers={"x-csrf-token": csrf}
        )
        assert signed_out.status_code == 204

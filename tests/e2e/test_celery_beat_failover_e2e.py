"""Two real `celery beat` processes on one Redis: the standby that takes over right after
the holder sent a firing does not send that firing again.

The standby's own schedule (kept in its own file, as on another machine) still holds
the run it last saw: on takeover celery finds that run due and sends it. The generated
scheduler claims each firing's due time in Redis first, so the standby skips a slot the
holder sent and the task runs once per period across the failover.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.e2e.harness import (
    SmtpSink,
    add_task,
    redis_server,
    runner_python,
    running,
    scaffold,
    smtp_sink,
    wait_until,
)
from tests.e2e.test_celery_e2e import Stack, _env

pytestmark = pytest.mark.e2e

EVERY = 5  # seconds between the test entry's firings
SEND = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
    r"Scheduler: Sending due task tick "
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("celery-beat-failover")
    project = scaffold("layered", workdir / "project", "--runner", "celery")
    add_task(project, "tick", "--every", str(EVERY), "--no-route")
    beat_lock = project / "app" / "tasks" / "beat_lock.py"
    text = beat_lock.read_text()
    # the standby looks for the lock every half second: it takes over at once, the
    # moment at which a doubled firing happens
    assert "LOCK_RETRY_SECONDS = 5\n" in text
    beat_lock.write_text(text.replace("LOCK_RETRY_SECONDS = 5\n", "LOCK_RETRY_SECONDS = 0.5\n"))
    logs = workdir / "logs"
    logs.mkdir()
    sink: SmtpSink
    with redis_server(workdir) as url, smtp_sink() as sink:
        yield Stack(
            runner_python("celery"), project, _env(f"{url}/0", f"{url}/1", sink), logs, sink
        )


def _send_times(log: str) -> list[datetime]:
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for m in SEND.findall(log)]


def test_the_standby_does_not_resend_the_holders_last_firing(stack: Stack) -> None:
    holder = stack.beat("beat-holder", loglevel="info")
    with running(holder):
        wait_until(lambda: "took the beat lock" in holder.log(), 30, f"lock\n{holder.log()}")
        standby = stack.beat("beat-standby", loglevel="info")
        with running(standby):
            wait_until(lambda: "standing by" in standby.log(), 30, f"standby\n{standby.log()}")
            # two firings after the standby started: its own view of the entry is due
            wait_until(
                lambda: len(_send_times(holder.log())) >= 3,
                4 * EVERY,
                f"the holder's firings\n{holder.log()}",
                interval=0.05,
            )
            holder.stop()  # right after a firing; it releases the lock
            wait_until(
                lambda: len(_send_times(standby.log())) >= 2,
                4 * EVERY,
                f"the standby's firings\n{standby.log()}",
            )
            standby_log = standby.log()
    sends = sorted(_send_times(holder.log()) + _send_times(standby_log))
    gaps = [(b - a).total_seconds() for a, b in zip(sends, sends[1:], strict=False)]
    # once per period across the takeover: no two sends closer than most of a period
    assert min(gaps) >= 0.8 * EVERY, (gaps, holder.log(), standby_log)
    assert "was sent already; skipped" in standby_log, standby_log

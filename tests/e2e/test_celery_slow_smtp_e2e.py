"""The generated Celery mailer against SMTP servers slow to confirm a message.

A real SMTP server (aiosmtpd, in this process) keeps each message as soon as its data
is in, then takes 12 s to answer the end of the data, beyond the 10 s SMTP timeout the
settings default to (RFC 5321 gives that reply 10 minutes), or hangs up without
answering. A message handed over may have been sent: exactly one copy may arrive per
queued email, whatever the task's retries. Real redis-server, prefork `celery worker`
and uvicorn from .venvs/celery.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    SmtpSink,
    redis_server,
    runner_python,
    running,
    scaffold,
    smtp_sink,
)
from tests.e2e.test_celery_e2e import Stack, _env, _serve

pytestmark = pytest.mark.e2e

REPLY_DELAY = 12.0  # seconds before the server answers the end of the data
SETTLE = 5.0  # seconds to wait for a copy that must never come


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("celery-slow-smtp")
    python = runner_python("celery")
    project = scaffold("layered", workdir / "project", "--runner", "celery")
    logs = workdir / "logs"
    logs.mkdir()
    with redis_server(workdir) as url, smtp_sink(delay=REPLY_DELAY) as sink:
        stack = Stack(python, project, _env(f"{url}/0", f"{url}/1", sink), logs, sink)  # type: ignore[arg-type]
        with running(_serve(stack)):
            yield stack


def _copies(sink: SmtpSink, subject: str) -> int:
    return sum(1 for message in sink.messages if message["Subject"] == subject)


def test_a_slow_reply_to_the_data_sends_one_copy(stack: Stack) -> None:
    sink: SmtpSink = stack.sink  # type: ignore[assignment]
    sink.delay, sink.hang_up = REPLY_DELAY, False
    worker = stack.worker("slow-reply")
    with running(worker):
        task_id = stack.email("Slow receipt")
        final = stack.final(task_id, timeout=REPLY_DELAY + 30)
        time.sleep(SETTLE)
        assert _copies(sink, "Slow receipt") == 1, worker.log()
        assert final["status"] == "complete" and final["success"], (final, worker.log())


def test_a_reply_lost_after_the_data_is_never_retried(stack: Stack, tmp_path: Path) -> None:
    sink: SmtpSink = stack.sink  # type: ignore[assignment]
    sink.hang_up = True
    worker = stack.worker("hang-up")
    with running(worker):
        task_id = stack.email("Lost reply")
        final = stack.final(task_id, timeout=30)
        time.sleep(SETTLE)
        copies = _copies(sink, "Lost reply")
        log = worker.log()
    assert copies == 1, log
    # not a success (no reply came), not retried, and the log says why
    assert final["success"] is False and final["error"] == "unconfirmed", (final, log)
    assert "may have been sent" in log, log
    assert " retry: " not in log, log

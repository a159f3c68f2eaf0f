"""Generated mail code against SMTP servers that are slow to confirm a message.

A real SMTP server (aiosmtpd, in this process) keeps each message, then takes 12 s to
answer the end of its data, beyond the 10 s SMTP timeout the settings default to
(RFC 5321 gives that reply 10 minutes), or hangs up without answering at all. Exactly
one copy may arrive per queued email, and the task must not report a plain failure
for a message the server accepted. arq: real redis-server, `arq` worker and uvicorn
(.venvs/arq); builtin: uvicorn (this interpreter) running the BackgroundTasks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    AUTH,
    SmtpSink,
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

REPLY_DELAY = 12.0  # seconds before the server answers the end of the data
SETTLE = 3.0  # seconds to wait for a copy that should never come
EMAIL = {"to": "ada@example.com", "subject": "Receipt", "body": "Thanks!"}


def _smtp_env(sink: SmtpSink) -> dict[str, str]:
    return {
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
        "EMAIL_FROM": "shop@example.com",
    }


@pytest.fixture(scope="module")
def arq_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold("layered", tmp_path_factory.mktemp("mail-arq"), "--runner", "arq")


def _arq_email(arq_project: Path, tmp_path: Path, sink: SmtpSink) -> dict[str, Any]:
    """Queue one email through the API with a worker running; its final status."""
    python = runner_python("arq")
    with redis_server(tmp_path) as url:
        env = {**_smtp_env(sink), "REDIS_URL": f"{url}/0", "PYTHONPATH": str(arq_project)}
        api, base = serve_app(python, arq_project, "app.main:app", tmp_path / "api.log", env)
        worker = start_process(
            [str(python.parent / "arq"), "app.tasks.arq_worker.WorkerSettings"],
            cwd=arq_project,
            log_path=tmp_path / "worker.log",
            env=env,
        )
        with running(api, worker):
            queued = httpx.post(f"{base}/tasks/send-email", json=EMAIL, headers=AUTH, timeout=10)
            assert queued.status_code == 202, queued.text
            task_id = queued.json()["task_id"]

            def complete() -> dict[str, Any] | None:
                response = httpx.get(f"{base}/tasks/status/{task_id}", headers=AUTH, timeout=10)
                body: dict[str, Any] = response.json()
                return body if body["status"] == "complete" else None

            # one slow reply takes 12 s; a retry loop would not end within 45 s
            body: dict[str, Any] = wait_until(
                complete, 45, f"email job complete\n{worker.log()[-3000:]}", interval=0.5
            )
            time.sleep(SETTLE)
            assert worker.alive(), worker.log()[-3000:]
            return body


def test_arq_slow_data_reply_is_one_email_and_a_success(arq_project: Path, tmp_path: Path) -> None:
    with smtp_sink(delay=REPLY_DELAY) as sink:
        body = _arq_email(arq_project, tmp_path, sink)
        assert len(sink.messages) == 1, (len(sink.messages), body)
    assert body["success"] is True, body
    assert body["result"] == {"status": "sent"}


def test_arq_hang_up_after_the_data_is_one_email_that_may_have_been_sent(
    arq_project: Path, tmp_path: Path
) -> None:
    with smtp_sink(delay=REPLY_DELAY, hang_up=True) as sink:
        body = _arq_email(arq_project, tmp_path, sink)
        assert len(sink.messages) == 1, (len(sink.messages), body)
    # not retried, and not called a plain failure
    assert body["success"] is False and body["error"] == "unconfirmed", body


def test_builtin_slow_data_reply_is_one_email_logged_as_sent(tmp_path: Path) -> None:
    project = scaffold("layered", tmp_path, "--runner", "builtin")
    with smtp_sink(delay=REPLY_DELAY) as sink:
        env = {**_smtp_env(sink), "PYTHONPATH": str(project)}
        server, base = serve_app(
            Path(sys.executable), project, "app.main:app", tmp_path / "uvicorn.log", env
        )
        with running(server):
            response = httpx.post(
                f"{base}/notifications/send-email", json=EMAIL, headers=AUTH, timeout=10
            )
            assert response.status_code == 202, response.text
            wait_until(
                lambda: "email sent" in server.log() or "failed" in server.log(),
                REPLY_DELAY + 20,
                f"the email's outcome in the log\n{server.log()[-3000:]}",
            )
            time.sleep(SETTLE)
            log = server.log()
        assert len(sink.messages) == 1
    assert "email sent: Receipt" in log and "failed" not in log, log[-3000:]


def test_builtin_hang_up_after_the_data_is_logged_as_may_have_been_sent(
    tmp_path: Path,
) -> None:
    project = scaffold("layered", tmp_path, "--runner", "builtin")
    with smtp_sink(delay=REPLY_DELAY, hang_up=True) as sink:
        env = {**_smtp_env(sink), "PYTHONPATH": str(project)}
        server, base = serve_app(
            Path(sys.executable), project, "app.main:app", tmp_path / "uvicorn.log", env
        )
        with running(server):
            response = httpx.post(
                f"{base}/notifications/send-email", json=EMAIL, headers=AUTH, timeout=10
            )
            assert response.status_code == 202, response.text
            wait_until(
                lambda: "email may have been sent" in server.log(),
                20,
                f"the email's outcome in the log\n{server.log()[-3000:]}",
            )
            log = server.log()
        assert len(sink.messages) == 1
    assert "failed" not in log, log[-3000:]

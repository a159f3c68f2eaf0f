"""`migrate --to taskiq` keeps the mail settings a deployment already sets.

On a project whose Settings has `SMTP_HOST: str | None = None`, arq's init adds
ARQ_SMTP_HOST (None is no server to send to). After the move, a deployment that sets
ARQ_SMTP_HOST to its mail server must still send there: the email queued through the
unchanged arq-shaped route reaches a real SMTP sink that only ARQ_SMTP_HOST names.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_tree
from tests.e2e.harness import (
    AUTH,
    bgtasks,
    redis_server,
    runner_python,
    running,
    serve_app,
    smtp_sink,
    start_process,
    wait_until,
)
from tests.e2e.test_day_one_e2e import TEMPLATE_SHAPED

pytestmark = pytest.mark.e2e


def test_a_set_arq_smtp_host_stays_in_effect_after_migrating(tmp_path: Path) -> None:
    python = runner_python("taskiq")
    project = write_tree(tmp_path / "project", TEMPLATE_SHAPED)
    init = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", "arq"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    moved = bgtasks(project, "migrate", "--to", "taskiq")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    config = (project / "app/core/config.py").read_text()
    assert re.search(r"^\s+ARQ_SMTP_HOST: str", config, re.M), config
    assert "TASKIQ_SMTP_HOST" not in config
    assert re.search(r"^ARQ_SMTP_HOST=", (project / ".env.example").read_text(), re.M)

    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server(tmp_path) as redis_url, smtp_sink() as sink:
        env = {
            "REDIS_URL": f"{redis_url}/0",
            "TASKIQ_BROKER_URL": f"{redis_url}/0",
            # only the variable the deployment set before the move names the sink
            "ARQ_SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_TLS": "false",  # the sink speaks plain SMTP
            "SMTP_USER": "",
            "ARQ_EMAIL_FROM": "shop@example.com",
            "PYTHONPATH": str(project),
        }
        worker = start_process(
            [
                str(python.parent / "taskiq"),
                "worker",
                "app.tasks.taskiq_app:broker",
                "app.tasks.taskiq_tasks",
                "--workers",
                "1",
            ],
            project,
            logs / "worker.log",
            env,
        )
        with running(worker):
            wait_until(
                lambda: "Listening started" in worker.log() or not worker.alive(),
                30,
                "taskiq worker",
            )
            assert worker.alive(), worker.log()
            server, base = serve_app(python, project, "app.main:app", logs / "web.log", env)
            with running(server):
                response = httpx.post(
                    f"{base}/api/v1/tasks/send-email",
                    json={"to": "ada@example.com", "subject": "Still here", "body": "Moved."},
                    headers=AUTH,
                    timeout=10,
                )
                assert response.status_code == 202, response.text
                wait_until(
                    lambda: sink.messages, 30, f"the email at the sink\n{worker.log()[-3000:]}"
                )
    (message,) = sink.messages
    assert message["Subject"] == "Still here" and message["To"] == "ada@example.com"

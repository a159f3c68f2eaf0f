"""The worker sends to exactly one address, whoever queued the task.

The API validates the recipient, but code that calls or queues the email task directly
does not go through it, and the SMTP client sends to every address the To header names.
Each runner's generated email task is called directly, in the runner's environment,
with recipients naming more than one mailbox or hiding one: each call fails with an
error that says why, is not retried, and the SMTP sink receives nothing. A bare address
sent through the same mailer arrives, so the sink is known to listen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import EXAMPLES, runner_python, smtp_sink, wait_until

REFUSED = {
    "ada@example.com, victim@evil.example": "must be one address",
    "ada@example.com,victim@evil.example": "must be one address",
    "ada@example.com; victim@evil.example": "must be one address",
    "friends: ada@example.com, victim@evil.example;": "must be one address",
    "ada@example.com victim@evil.example": "must be one address",
    "<ada@example.com> victim@evil.example": "must be one address",
    "ada@example.com\r\nBcc: victim@evil.example": "must be one line",
    "ada@example.com\nvictim@evil.example": "must be one line",
    "=?utf-8?q?victim=40evil.example?=@example.com": "encoded word",
    "=?utf-8?q?a=2C_victim=40evil.example?=@example.com": "encoded word",
}

# Per runner: call the email task itself with each recipient; print what each raised
# (and, for celery, the state of an eager run: FAILURE, not RETRY), then send one
# message to a bare address through the same module.
_CALLS = {
    "builtin": """
from app.tasks import email as mail

def attempt(to):
    mail.send_email(to, "Invoice", "the body")

def deliver():
    mail.send_email("ada@example.com", "Invoice", "the body")
""",
    "celery": """
from app.tasks import mailer
from app.tasks.tasks import send_email

def attempt(to):
    result = send_email.apply(args=(to, "Invoice", "the body"))
    assert result.state == "FAILURE", result.state
    raise result.result

def deliver():
    mailer.send("ada@example.com", "Invoice", "the body")
""",
    "arq": """
import asyncio, smtplib
from app.tasks import arq_tasks

def attempt(to):
    ctx = {"job_id": "direct", "job_try": 1}
    asyncio.run(arq_tasks.send_email(ctx, to, "Invoice", "the body"))

def deliver():
    message = arq_tasks.build_message("ada@example.com", "Invoice", "the body")
    with smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"])) as smtp:
        smtp.send_message(message)
""",
    "taskiq": """
import asyncio, smtplib
from app.tasks import taskiq_tasks

def attempt(to):
    asyncio.run(taskiq_tasks.send_email(to, "Invoice", "the body"))

def deliver():
    message = taskiq_tasks.build_message("ada@example.com", "Invoice", "the body")
    with smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"])) as smtp:
        smtp.send_message(message)
""",
}
_DRIVER = """
import json, os, sys
outcomes = {}
for to in json.loads(sys.argv[1]):
    try:
        attempt(to)
    except Exception as exc:
        outcomes[to] = [type(exc).__name__, str(exc)]
    else:
        outcomes[to] = ["sent", ""]
deliver()
print(json.dumps(outcomes))
"""


def _scaffold(tmp_path: Path, runner: str) -> Path:
    import shutil

    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.mark.parametrize("runner", ["builtin", "celery", "arq", "taskiq"])
def test_a_recipient_that_is_not_one_address_fails_the_task_unsent(
    tmp_path: Path, runner: str
) -> None:
    python = runner_python("celery" if runner == "builtin" else runner)
    project = _scaffold(tmp_path, runner)
    script = "import os\n" + _CALLS[runner] + _DRIVER
    with smtp_sink() as sink:
        env = {
            **os.environ,
            "PYTHONPATH": str(project),
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "shop@example.com",
        }
        run = subprocess.run(
            [str(python), "-c", script, json.dumps(list(REFUSED))],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        outcomes = json.loads(run.stdout.strip().splitlines()[-1])
        # the one bare address arrives; give a stray earlier delivery time to show up
        wait_until(lambda: sink.messages, 10, "the bare address's message at the sink")
        time.sleep(0.5)
    for to, why in REFUSED.items():
        kind, message = outcomes[to]
        assert kind == "ValueError", (to, outcomes[to])
        assert "recipient" in message and why in message, (to, message)
    assert [m["To"] for m in sink.messages] == ["ada@example.com"]

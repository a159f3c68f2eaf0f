"""Email header injection through RFC 2047 encoded words: real on this Python without a
defence, stopped by the mailer bgtasks generates.

Python's email package before the CVE-2024-6923 fix decodes an encoded word and writes
its CR LF out as a real line break; fixed Pythons refuse to write such a header
(`policy.verify_generated_headers`). Messages go through smtplib to an aiosmtpd sink.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import smtplib
import subprocess
import sys
from email import errors, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from tests.conftest import EXAMPLES
from tests.e2e.harness import SmtpSink, smtp_sink, wait_until

FIXED_PYTHON = hasattr(policy.default, "verify_generated_headers")
INJECTING_SUBJECTS = [
    "=?utf-8?q?Invoice=0D=0ABcc:_victim@evil.example=0D=0A=0D=0Aattacker_body?=",
    "=?utf-8?b?"
    + base64.b64encode(b"Invoice\r\nBcc: victim@evil.example\r\n\r\nattacker body").decode()
    + "?=",
]
RECIPIENT = "=?utf-8?q?ada=0D=0ABcc=3A_victim=40evil.example?=@example.com"


def _send(sink: SmtpSink, message: EmailMessage) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(message)


@pytest.mark.parametrize("subject", INJECTING_SUBJECTS, ids=["q", "b"])
def test_an_encoded_line_break_injects_headers_without_a_defence(subject: str) -> None:
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = "ada@example.com"
    message["Subject"] = subject  # no raw CR or LF: a raw-character check lets it through
    message.set_content("the real body")
    with smtp_sink() as sink:
        if FIXED_PYTHON:  # the error class came with the fix
            with pytest.raises(errors.HeaderWriteError):  # type: ignore[attr-defined,unused-ignore]
                _send(sink, message)
            return
        _send(sink, message)
        wait_until(lambda: sink.messages, 10, "the message at the sink")
    (received,) = sink.messages
    assert received["Subject"] == "Invoice"
    assert received["Bcc"] == "victim@evil.example"  # a header the sender never set
    assert str(received.get_payload()).startswith("attacker body")


GENERATED_MAILER_CHECK = """
import json, sys
from app.tasks import email as mailer

refused = []
for to, subject in json.loads(sys.argv[1]):
    try:
        mailer.build_message(to, subject, "the real body")
    except ValueError:
        refused.append(True)
    else:
        refused.append(False)
mailer.send_email("ada@example.com", "Invoice", "the real body")
print(json.dumps(refused))
"""


def test_the_generated_mailer_refuses_them_and_writes_its_own_headers_only(
    tmp_path: Path,
) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    result = CliRunner().invoke(app, ["init", str(project), "--runner", "builtin"])
    assert result.exit_code == 0, result.output
    probes = [("ada@example.com", s) for s in INJECTING_SUBJECTS] + [(RECIPIENT, "Invoice")]
    with smtp_sink() as sink:
        env = {
            **os.environ,
            "PYTHONPATH": str(project),
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "Shop <shop@example.com>",
        }
        run = subprocess.run(
            [sys.executable, "-c", GENERATED_MAILER_CHECK, json.dumps(probes)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout) == [True] * len(probes)
        wait_until(lambda: sink.messages, 10, "the message at the sink")
    (received,) = sink.messages
    assert set(received.keys()) == {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    }
    assert received["Message-ID"].endswith("@example.com>")
    assert str(received.get_payload()).strip() == "the real body"

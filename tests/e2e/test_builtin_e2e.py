"""`init --runner builtin` end to end: real uvicorn serving the scaffolded example, a real
SMTP sink on loopback, requests over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import AUTH, running, scaffold, serve_app, smtp_sink, wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("example", "target", "prefix"),
    # the factory example includes its router with prefix="/api": so is the new one
    [("layered", "app.main:app", ""), ("factory", "acme.server:app", "/api")],
)
def test_email_queued_over_http_reaches_the_smtp_sink(
    example: str, target: str, prefix: str, tmp_path: Path
) -> None:
    project = scaffold(example, tmp_path, "--runner", "builtin")
    with smtp_sink() as sink:
        env = {
            "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port),
            "SMTP_STARTTLS": "false",  # the sink speaks plain SMTP
            "EMAIL_FROM": "shop@example.com",
            "PYTHONPATH": str(project / "src") if (project / "src").is_dir() else str(project),
        }
        server, base = serve_app(
            Path(sys.executable), project, target, tmp_path / "uvicorn.log", env
        )
        with running(server):
            response = httpx.post(
                f"{base}{prefix}/notifications/send-email",
                json={"to": "ada@example.com", "subject": "Welcome", "body": "Thanks!"},
                headers=AUTH,
                timeout=10,
            )
            assert response.status_code == 202, response.text
            wait_until(lambda: sink.messages, 15, f"email at the sink\n{server.log()}")
            (message,) = sink.messages
            assert message["To"] == "ada@example.com"
            assert message["From"] == "shop@example.com"
            assert message["Subject"] == "Welcome"

            response = httpx.post(
                f"{base}{prefix}/notifications/process",
                json={"user_id": 3, "message": "Order shipped", "email": "bob@example.com"},
                headers=AUTH,
                timeout=10,
            )
            assert response.status_code == 202
            wait_until(lambda: len(sink.messages) == 2, 15, "notification email at the sink")
            assert sink.messages[1]["To"] == "bob@example.com"

            invalid = httpx.post(
                f"{base}{prefix}/notifications/send-email",
                json={"to": "nope", "subject": "x", "body": "x"},
                headers=AUTH,
                timeout=10,
            )
            assert invalid.status_code == 422

"""A project's fastapi-mail style settings keep their meaning: MAIL_SSL_TLS on port 465 is
TLS from the first byte (not STARTTLS), USE_CREDENTIALS=False means no login, and the
certificate is verified. Proven against a real implicit-TLS SMTP server on loopback,
with the generated mailer of each runner running in that runner's environment."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import invoke, write_tree
from tests.e2e.harness import free_port, runner_python, wait_until

pytestmark = pytest.mark.e2e

SETTINGS = """from pydantic import EmailStr, SecretStr
from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    MAIL_USERNAME: str = "shop"
    MAIL_PASSWORD: SecretStr = SecretStr("never-sent")
    MAIL_FROM: EmailStr = "shop@example.com"
    MAIL_PORT: int = 465
    MAIL_SERVER: str = "localhost"
    MAIL_STARTTLS: bool = False
    MAIL_SSL_TLS: bool = True
    USE_CREDENTIALS: bool = False
    VALIDATE_CERTS: bool = True


settings = Settings()
"""

SEND = {
    "builtin": "from shop.tasks.email import send_email\nsend_email({args})\n",
    "celery": "from shop.tasks.mailer import send\nsend({args})\n",
    "arq": (
        "import asyncio\nfrom shop.tasks.arq_tasks import send_email\n"
        "asyncio.run(send_email({{'job_try': 1, 'job_id': 'j'}}, {args}))\n"
    ),
}
ENVIRONMENT = {"celery": "celery", "arq": "arq", "builtin": "celery"}


@contextmanager
def tls_sink(tmp_path: Path) -> Iterator[tuple[int, Path, list[Message], list[Any]]]:
    """An SMTP server speaking TLS from the first byte, with a self-signed certificate
    for localhost; records each message and whether anyone tried to log in."""
    from aiosmtpd.controller import Controller

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    messages: list[Message] = []
    logins: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append(mechanism)
        from aiosmtpd.smtp import AuthResult

        return AuthResult(success=True)

    port = free_port()
    controller = Controller(
        Handler(), hostname="localhost", port=port, ssl_context=context,
        authenticator=authenticate, auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        yield port, cert, messages, logins
    finally:
        controller.stop()


@pytest.mark.parametrize("runner", ["builtin", "celery", "arq"])
def test_fastapi_mail_settings_mean_what_they_say(runner: str, tmp_path: Path) -> None:
    project = write_tree(
        tmp_path / "project",
        {
            "shop/__init__.py": "",
            "shop/config.py": SETTINGS,
            "shop/main.py": "from fastapi import FastAPI\n\nfrom shop.config import settings\n\n"
            "app = FastAPI(title=settings.MAIL_FROM)\n",
        },
    )
    code, output = invoke("init", str(project), "--runner", runner, "--no-deps", "--json")
    assert code == 0, output
    reused = "\n".join(json.loads(output)["notes"])
    for name in ("MAIL_SERVER", "MAIL_SSL_TLS", "USE_CREDENTIALS", "VALIDATE_CERTS"):
        assert name in reused, reused
    config = (project / "shop/config.py").read_text()
    assert "SMTP_HOST" not in config and "SMTP_SSL" not in config  # nothing duplicated
    args = "'ada@example.com', 'Welcome', 'Hello over TLS'"
    with tls_sink(tmp_path) as (port, cert, messages, logins):
        result = subprocess.run(
            [str(runner_python(ENVIRONMENT[runner])), "-c", SEND[runner].format(args=args)],
            cwd=project,
            env={
                "PYTHONPATH": str(project),
                "PATH": "/usr/bin:/bin",
                "MAIL_PORT": str(port),
                "SSL_CERT_FILE": str(cert),  # trust the sink's certificate, still verified
                "REDIS_URL": "redis://127.0.0.1:1/0",
                "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        wait_until(lambda: messages, 10, "the message at the TLS sink")
    (message,) = messages
    assert message["To"] == "ada@example.com" and message["Subject"] == "Welcome"
    assert logins == []  # USE_CREDENTIALS=False: a user is set, but no login

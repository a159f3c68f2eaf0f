"""builtin's queue routes take an Idempotency-Key: a repeat runs nothing again.

The `layered` example is scaffolded with `--runner builtin` and its app imported in this
process (builtin has no broker: BackgroundTasks run inside the ASGI call, so a
TestClient sees them run). What the background tasks would do is recorded instead.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from bgtasks_gen.cli import app as cli
from tests.conftest import EXAMPLES

TOKEN = "builtin-idempotency-token"
HEADERS = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Welcome"}
NOTICE = {"user_id": 7, "message": "Hello"}


@dataclass
class Project:
    api: Any
    routes: ModuleType
    auth: ModuleType
    sent: list[str] = field(default_factory=list)
    processed: list[int] = field(default_factory=list)

    def path(self, route: str) -> str:
        return str(self.api.url_path_for(route))


def _forget_app_modules() -> None:
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("builtin-idempotency") / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    result = CliRunner().invoke(cli, ["init", str(project), "--runner", "builtin"])
    assert result.exit_code == 0, result.output
    return project


@pytest.fixture
def project(scaffolded: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    _forget_app_modules()
    monkeypatch.syspath_prepend(str(scaffolded))
    try:
        main = importlib.import_module("app.main")
        routes = importlib.import_module("app.api.v1.routes.notifications")
        auth = importlib.import_module("app.tasks.auth")
        config = importlib.import_module("app.core.config").settings
        monkeypatch.setattr(config, "BGTASKS_API_TOKEN", SecretStr(TOKEN))
        found = Project(main.app, routes, auth)
        monkeypatch.setattr(routes, "send_email", lambda to, subject, body: found.sent.append(to))
        monkeypatch.setattr(
            routes.jobs,
            "process_notification",
            lambda user_id, message: found.processed.append(user_id),
        )
        yield found
    finally:
        _forget_app_modules()


def test_a_repeated_key_answers_200_with_the_first_answer_and_runs_once(
    project: Project,
) -> None:
    client = TestClient(project.api, headers=HEADERS)
    key = {"Idempotency-Key": "welcome-ada"}
    first = client.post(project.path("send_email_later"), json=EMAIL, headers=key)
    again = client.post(project.path("send_email_later"), json=EMAIL, headers=key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert first.json() == {
        "status": "accepted",
        "detail": "the email will be sent after this response",
        "duplicate": False,
    }
    assert again.json() == {**first.json(), "duplicate": True}
    assert project.sent == ["ada@example.com"]
    # without a key, every request is new work
    for _ in range(2):
        assert client.post(project.path("send_email_later"), json=EMAIL).status_code == 202
    assert len(project.sent) == 3


def test_keys_are_per_caller_and_per_route(project: Project) -> None:
    client = TestClient(project.api, headers=HEADERS)
    key = {"Idempotency-Key": "shared-key"}
    assert client.post(project.path("process_later"), json=NOTICE, headers=key).status_code == 202
    # the same key on the other route is other work
    email = client.post(project.path("send_email_later"), json=EMAIL, headers=key)
    assert email.status_code == 202 and email.json()["duplicate"] is False
    # and from another caller it is theirs, not a repeat of ours
    project.api.dependency_overrides[project.auth.authorize_task_access] = lambda: "user:bob"
    try:
        theirs = client.post(project.path("process_later"), json=NOTICE, headers=key)
        theirs_again = client.post(project.path("process_later"), json=NOTICE, headers=key)
    finally:
        project.api.dependency_overrides.clear()
    assert (theirs.status_code, theirs_again.status_code) == (202, 200)
    assert project.processed == [7, 7] and project.sent == ["ada@example.com"]


def test_a_repeat_of_a_notification_counts_no_email(project: Project) -> None:
    client = TestClient(project.api, headers=HEADERS)
    key = {"Idempotency-Key": "notice-with-copy"}
    notice = {**NOTICE, "email": "ada@example.com"}
    project.routes.EMAIL_RATE_LIMIT = 1
    try:
        codes = [
            client.post(project.path("process_later"), json=notice, headers=key).status_code
            for _ in range(3)
        ]
    finally:
        project.routes.EMAIL_RATE_LIMIT = 20
        project.routes._email_times.clear()
    # 429 would mean the repeats were counted against the limit of one email
    assert codes == [202, 200, 200]
    assert project.processed == [7] and project.sent == ["ada@example.com"]


def test_the_record_is_bounded_in_time_and_entries(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(project.api, headers=HEADERS)
    path = project.path("process_later")

    def post(key: str) -> int:
        return client.post(path, json=NOTICE, headers={"Idempotency-Key": key}).status_code

    monkeypatch.setattr(project.routes, "IDEMPOTENCY_ENTRIES", 2)
    assert [post("k1"), post("k2"), post("k3")] == [202, 202, 202]
    assert len(project.routes._answers) == 2
    # k1, the oldest, was forgotten; k3 is remembered
    assert [post("k3"), post("k1")] == [200, 202]
    monkeypatch.setattr(project.routes, "IDEMPOTENCY_WINDOW_SECONDS", 0.0)
    assert post("k1") == 202  # past the window: new work
    assert project.processed == [7] * 5


def test_concurrent_repeats_run_the_work_once(project: Project) -> None:
    async def together() -> list[int]:
        transport = httpx.ASGITransport(app=project.api)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=HEADERS
        ) as client:
            key = {"Idempotency-Key": "at-once"}
            path = project.path("process_later")
            answers = await asyncio.gather(
                *(client.post(path, json=NOTICE, headers=key) for _ in range(20))
            )
        return sorted(response.status_code for response in answers)

    assert asyncio.run(together()) == [200] * 19 + [202]
    assert project.processed == [7]


def test_a_malformed_key_is_refused_and_runs_nothing(project: Project) -> None:
    client = TestClient(project.api, headers=HEADERS)
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        response = client.post(
            project.path("send_email_later"), json=EMAIL, headers={"Idempotency-Key": bad}
        )
        assert response.status_code == 422, bad
    assert project.sent == []


def test_openapi_declares_the_header_and_the_200(project: Project) -> None:
    paths = project.api.openapi()["paths"]
    for route in ("send_email_later", "process_later"):
        operation = paths[project.path(route)]["post"]
        (header,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert header["in"] == "header" and not header["required"]
        duplicate = operation["responses"]["200"]
        schema = duplicate["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/Accepted"), route
        assert "Idempotency-Key" in duplicate["description"]

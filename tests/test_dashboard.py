"""The dashboard module every queue runner will generate, served by a real FastAPI app.

The partial is rendered on its own and mounted on a router whose access hook does what
the generated hook does with it: the page's shell passes, a bearer token or a signed
session cookie identifies the caller, and a request that changes anything through the
cookie must echo the session's CSRF token. Checked: the page's own policy (nonce'd
script and style only), signing in and out, refusals without the cookie, with a forged
or expired one, and without the CSRF token.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from bgtasks_gen.template_filters import add_filters

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
TOKEN = "t0ken-for-the-dashboard-test"
SNAPSHOT = {
    "worker_alive": True,
    "scheduler_alive": False,
    "queues": [{"name": "celery", "depth": 3, "oldest_seconds": 12.5}],
    "running": [{"task": "long_running", "task_id": "r1", "progress": {"current": 2}}],
    "recent": [],
    "failed": {"entries": [], "total": 0, "dropped": 0},
    "schedules": [],
}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    add_filters(environment)
    text = environment.get_template("_partials/dashboard.py.jinja").render(
        dashboard_import_groups=[
            [
                "from fastapi import APIRouter, Request, Response",
                "from fastapi.responses import HTMLResponse",
            ]
        ]
    )
    path = tmp_path_factory.mktemp("dashboard") / "generated_dashboard.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def client(dashboard: ModuleType) -> TestClient:
    secret = dashboard.session_secret(TOKEN)

    async def hook(request: Request) -> str:
        if request.method == "GET" and request.url.path.endswith("/dashboard"):
            return "page"  # the shell holds no data
        if request.headers.get("authorization") == f"Bearer {TOKEN}":
            return "token:holder"
        signed_in = dashboard.session_caller(secret, request)
        if signed_in is not None:
            return str(signed_in)
        raise HTTPException(status_code=401, detail="Missing or invalid API token")

    router = APIRouter(prefix="/tasks", dependencies=[Depends(hook)])

    async def snapshot(request: Request) -> dict[str, Any]:
        assert request.url.path.endswith("/dashboard/data")
        return SNAPSHOT

    dashboard.dashboard_routes(
        router, secret=lambda: secret, caller=Depends(hook), snapshot=snapshot
    )

    @router.post("/failed/{entry_id}/replay")
    async def replay(entry_id: str, who: str = Depends(hook)) -> dict[str, str]:
        return {"replayed": entry_id, "by": who}

    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    return TestClient(app)


def _config(html: str) -> dict[str, Any]:
    found = re.search(r"const CONFIG = (\{.*?\});", html)
    assert found, html
    return dict(json.loads(found.group(1)))


def test_the_page_sets_its_own_strict_policy(client: TestClient) -> None:
    page = client.get("/api/v1/tasks/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
    assert nonce and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    # every script and style of the page carries this response's nonce; nothing external
    assert page.text.count(f'nonce="{nonce.group(1)}"') == 2
    assert "<script src" not in page.text and "http" not in policy
    config = _config(page.text)
    assert config["signedIn"] is False and config["csrf"] == ""
    assert config["base"] == "/api/v1/tasks/dashboard" and config["api"] == "/api/v1/tasks"
    assert client.get("/api/v1/tasks/dashboard").headers["content-security-policy"] != policy


def test_sign_in_with_the_token_then_read_through_the_cookie(client: TestClient) -> None:
    assert client.post("/api/v1/tasks/dashboard/session", json={}).status_code == 401
    assert client.get("/api/v1/tasks/dashboard/data").status_code == 401
    signed = client.post(
        "/api/v1/tasks/dashboard/session",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert signed.status_code == 204
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/api/v1/tasks" in cookie
    assert TOKEN not in cookie
    data = client.get("/api/v1/tasks/dashboard/data")
    assert data.status_code == 200 and data.json() == SNAPSHOT
    config = _config(client.get("/api/v1/tasks/dashboard").text)
    assert config["signedIn"] is True and len(config["csrf"]) >= 24
    # a change through the cookie needs the CSRF token the page was given
    assert client.post("/api/v1/tasks/failed/f1/replay", json={}).status_code == 401
    forged = client.post(
        "/api/v1/tasks/failed/f1/replay", json={}, headers={"X-CSRF-Token": "guess"}
    )
    assert forged.status_code == 401
    replayed = client.post(
        "/api/v1/tasks/failed/f1/replay", json={}, headers={"X-CSRF-Token": config["csrf"]}
    )
    assert replayed.status_code == 200 and replayed.json()["by"] == "token:holder"
    out = client.request(
        "DELETE", "/api/v1/tasks/dashboard/session", headers={"X-CSRF-Token": config["csrf"]}
    )
    assert out.status_code == 204
    assert client.get("/api/v1/tasks/dashboard/data").status_code == 401


def test_forged_or_expired_sessions_are_refused(dashboard: ModuleType, client: TestClient) -> None:
    secret = dashboard.session_secret(TOKEN)
    value, session = dashboard.issue_session(secret, "token:holder")
    assert dashboard.read_session(secret, value) == session
    assert dashboard.read_session(dashboard.session_secret("another"), value) is None
    payload, signature = value.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    assert dashboard.read_session(secret, tampered) is None
    for junk in ("", ".", "a.b.c", "x" * 5000, "!!!.00"):
        assert dashboard.read_session(secret, junk) is None
    expired = dashboard.Session("token:holder", int(time.time()) - 1, "c")
    raw = json.dumps([expired.caller, expired.expires, expired.csrf]).encode()
    import base64
    import hashlib
    import hmac

    old = (
        base64.urlsafe_b64encode(raw).decode()
        + "."
        + hmac.new(secret, raw, hashlib.sha256).hexdigest()
    )
    assert dashboard.read_session(secret, old) is None
    client.cookies.set(dashboard.SESSION_COOKIE, old)
    assert client.get("/api/v1/tasks/dashboard/data").status_code == 401


def test_a_value_in_the_config_cannot_close_the_script(dashboard: ModuleType) -> None:
    app = FastAPI()

    @app.get("/x</script><b>/dashboard", name="bgtasks_dashboard")
    async def page(request: Request) -> Any:
        return dashboard.page_response(request, None)

    text = TestClient(app).get("/x%3C/script%3E%3Cb%3E/dashboard").text
    script = text.split("<script", 1)[1]
    assert "</script><b>" not in script.split("</script>\n</body>", 1)[0]

"""The task dashboard: one page that shows the whole task system.

`GET {prefix}/dashboard` is a single HTML page, rendered here with its CSS and script
inline (no build step, no CDN: it works offline) under a strict Content-Security-Policy
the page sets itself (scripts and styles only with this response's nonce, requests only
to this origin, no framing). It shows the queues' depth, the tasks running now with
their progress, recent outcomes, the failed-task inbox with replay and discard buttons,
the schedules with their next run, and whether a worker and a scheduler are alive.

A browser cannot send the API's bearer token by itself, so the page asks for it once:
the token goes to `POST {prefix}/dashboard/session` as the API takes it, through the
same access hook, and comes back as a session cookie (HttpOnly, SameSite=Strict, for
SESSION_SECONDS) signed with SESSION_SECRET_ENV (else a key derived from the API token,
else one per web process). The hook admits that cookie in place of the token; a request
that changes anything also carries the session's CSRF token in X-CSRF-Token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from celery.schedules import maybe_schedule
from celery.schedules import schedule as interval_schedule
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from app.tasks import celery_inbox, registry
from app.tasks.beat_lock import SLOT_KEY
from app.tasks.celery_app import celery_app
from app.tasks.celery_queues import queue_depths

SESSION_COOKIE = "bgtasks_dashboard"
SESSION_SECONDS = 30 * 60
SESSION_SECRET_ENV = "BGTASKS_DASHBOARD_SECRET"
CSRF_HEADER = "x-csrf-token"
REFRESH_MILLISECONDS = 2_000
# a snapshot that takes longer (Redis or the broker slow to answer) is answered 503
SNAPSHOT_SECONDS = 3.0
FAILED_SHOWN = 20
# every route of the page may meet a task store that does not answer (the same words
# on every runner's router)
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "The task store is unavailable or did not answer in time"}
}
_process_secret = secrets.token_bytes(32)


@dataclass(frozen=True)
class Session:
    """A signed-in browser: who the access hook said it was, until when, and the token
    its state-changing requests must echo."""

    caller: str
    expires: int
    csrf: str


def session_secret(api_token: str) -> bytes:
    """The key sessions are signed with: the environment's, else one derived from the
    API token (the same in every web process), else this process's own."""
    configured = os.environ.get(SESSION_SECRET_ENV, "")
    if configured:
        return configured.encode()
    if api_token:
        return hashlib.sha256(b"bgtasks-dashboard\0" + api_token.encode()).digest()
    return _process_secret


def _sign(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def issue_session(secret: bytes, caller: str) -> tuple[str, Session]:
    """A new session for `caller`: the cookie's value and what it holds."""
    session = Session(
        caller, int(time.time()) + SESSION_SECONDS, secrets.token_urlsafe(24)
    )
    payload = json.dumps([session.caller, session.expires, session.csrf]).encode()
    encoded = base64.urlsafe_b64encode(payload).decode()
    return f"{encoded}.{_sign(secret, payload)}", session


def read_session(secret: bytes, cookie: str | None) -> Session | None:
    """The session a cookie holds: None when absent, forged, malformed or expired."""
    if not cookie or cookie.count(".") != 1 or len(cookie) > 4_096:
        return None
    encoded, signature = cookie.split(".")
    try:
        payload = base64.urlsafe_b64decode(encoded.encode())
        caller, expires, csrf = json.loads(payload)
    except ValueError:
        return None
    if not hmac.compare_digest(_sign(secret, payload), signature):
        return None
    if not isinstance(caller, str) or not isinstance(csrf, str):
        return None
    if not isinstance(expires, int) or expires < time.time():
        return None
    return Session(caller, expires, csrf)


def session_caller(secret: bytes, request: Request) -> str | None:
    """The caller of a request signed in through the page: its session's identity, if
    the cookie is valid and, for a request that changes anything, the CSRF header
    matches; else None (the hook then answers 401)."""
    session = read_session(secret, request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return None
    return session.caller


def dashboard_routes(
    router: APIRouter,
    *,
    secret: Callable[[], bytes],
    caller: Any,
    snapshot: Callable[[Request], Awaitable[dict[str, Any]]],
) -> None:
    """Add the page and its session routes to `router` (the runner's, whose access hook
    already guards each route: `caller` is its dependency). `snapshot(request)` returns
    what the page shows (see PAGE_SCRIPT for the fields)."""

    @router.get(
        "/dashboard",
        name="bgtasks_dashboard",
        responses=UNAVAILABLE,
        summary="The task dashboard (HTML)",
        response_class=HTMLResponse,
    )
    async def dashboard_page(request: Request) -> HTMLResponse:
        session = read_session(secret(), request.cookies.get(SESSION_COOKIE))
        return page_response(request, session)

    @router.post(
        "/dashboard/session",
        name="bgtasks_dashboard_sign_in",
        responses=UNAVAILABLE,
        summary="Sign the browser in (the API token, once)",
        status_code=204,
        response_class=Response,
    )
    async def dashboard_sign_in(request: Request, who: str = caller) -> Response:
        value, _ = issue_session(secret(), who)
        answer = Response(status_code=204)
        answer.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=_page_path(request).rsplit("/", 1)[0] or "/",
        )
        return answer

    @router.delete(
        "/dashboard/session",
        name="bgtasks_dashboard_sign_out",
        responses=UNAVAILABLE,
        summary="Sign the browser out",
        status_code=204,
        response_class=Response,
    )
    async def dashboard_sign_out(request: Request, who: str = caller) -> Response:
        del who  # signed in: the hook said so
        answer = Response(status_code=204)
        answer.delete_cookie(
            SESSION_COOKIE, path=_page_path(request).rsplit("/", 1)[0] or "/"
        )
        return answer

    @router.get(
        "/dashboard/data",
        name="bgtasks_dashboard_data",
        responses=UNAVAILABLE,
        summary="What the dashboard shows",
    )
    async def dashboard_data(request: Request, who: str = caller) -> dict[str, Any]:
        del who  # signed in: the hook said so
        reading = asyncio.ensure_future(snapshot(request))
        done, _ = await asyncio.wait({reading}, timeout=SNAPSHOT_SECONDS)
        if not done:
            reading.cancel()
            raise HTTPException(
                status_code=503, detail="The task store did not answer in time"
            )
        return reading.result()


def progress_view(current: int, total: int) -> dict[str, int] | None:
    """A run's progress as the page draws it; None when it reported none."""
    if total <= 0:
        return None
    current = max(0, min(current, total))
    return {"current": current, "total": total, "percent": current * 100 // total}


def view(
    board: dict[str, Any],
    *,
    queues: list[dict[str, Any]],
    running: list[dict[str, Any]],
    failed: tuple[list[dict[str, Any]], int, int],
    schedules: list[dict[str, Any]],
    worker_alive: bool,
    scheduler_alive: bool | None,
    workers: int | None = -1,
) -> dict[str, Any]:
    """The page's data: `board` is the store's board() (recent outcomes, counts),
    `running` its runs still going on, with their progress; `scheduler_alive` None
    when the schedules run inside the worker; `workers` None when not counted (-1:
    the board's count)."""
    entries, total, dropped = failed
    return {
        "generated_at": time.time(),
        "queues": queues,
        "running": running,
        "recent": board["recent"],
        "failed": {"entries": entries, "total": total, "dropped": dropped},
        "schedules": schedules,
        "worker_alive": worker_alive,
        "workers": board["workers"] if workers == -1 else workers,
        "scheduler_alive": scheduler_alive,
    }


def _page_path(request: Request) -> str:
    return str(request.url_for("bgtasks_dashboard").path)


def page_response(request: Request, session: Session | None) -> HTMLResponse:
    """The page, signed in or not, with a nonce of its own in its policy."""
    nonce = secrets.token_urlsafe(16)
    base = _page_path(request)
    config = {
        "base": base,
        "api": base.rsplit("/dashboard", 1)[0],  # the router's own routes (the inbox)
        "signedIn": session is not None,
        "csrf": session.csrf if session else "",
        "refresh": REFRESH_MILLISECONDS,
    }
    # "</" never closes the script early, whatever a value holds
    config_json = json.dumps(config).replace("</", "<\\/")
    body = PAGE.format(
        nonce=nonce, config=config_json, style=PAGE_STYLE, script=PAGE_SCRIPT
    )
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(body, headers=headers)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tasks</title>
<style nonce="{nonce}">{style}</style>
</head>
<body>
<header><h1>Tasks</h1><p id="health" role="status" aria-live="polite"></p>
<button id="sign-out" type="button" hidden>Sign out</button></header>
<main>
<form id="sign-in" hidden>
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
<p id="sign-in-error" role="alert"></p>
</form>
<div id="board" hidden>
<section aria-labelledby="h-queues"><h2 id="h-queues">Queues</h2>
<table><thead><tr><th scope="col">Queue</th><th scope="col">Waiting</th>
<th scope="col">Oldest waiting</th></tr></thead><tbody id="queues"></tbody></table>
</section>
<section aria-labelledby="h-running"><h2 id="h-running">Running now</h2>
<table><thead><tr><th scope="col">Task</th><th scope="col">Id</th>
<th scope="col">Progress</th></tr></thead><tbody id="running"></tbody></table></section>
<section aria-labelledby="h-recent"><h2 id="h-recent">Recent outcomes</h2>
<table><thead><tr><th scope="col">Task</th><th scope="col">Id</th>
<th scope="col">Outcome</th>
<th scope="col">Finished</th></tr></thead><tbody id="recent"></tbody></table></section>
<section aria-labelledby="h-failed"><h2 id="h-failed">Failed tasks</h2>
<p id="failed-summary"></p>
<table><thead><tr><th scope="col">Task</th><th scope="col">Id</th>
<th scope="col">Error</th><th scope="col">Attempts</th><th scope="col">Last failed</th>
<th scope="col">Actions</th>
</tr></thead><tbody id="failed"></tbody></table><p id="action-result" role="status"></p>
</section>
<section aria-labelledby="h-schedules"><h2 id="h-schedules">Schedules</h2>
<table><thead><tr><th scope="col">Entry</th><th scope="col">Task</th>
<th scope="col">When</th><th scope="col">Next run</th></tr></thead>
<tbody id="schedules"></tbody></table></section>
</div>
</main>
<script nonce="{nonce}">const CONFIG = {config};
{script}</script>
</body>
</html>
"""

PAGE_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1rem auto; max-width: 70rem;
  padding: 0 1rem; color: #1a1a1a; background: #fff; }
header { display: flex; gap: 1rem; align-items: baseline; flex-wrap: wrap; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ccc; }
td.id { font-family: monospace; font-size: .85em; }
progress { width: 10rem; }
.ok::before { content: "\\2713 "; color: #176b2c; }
.bad::before { content: "\\2717 "; color: #a8200d; }
button { font: inherit; padding: .2rem .6rem; }
button:focus, input:focus { outline: 3px solid #1f5fbf; outline-offset: 1px; }
"""

PAGE_SCRIPT = """
const $ = (id) => document.getElementById(id);
const cell = (text, cls) => {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
};
const when = (epoch) => epoch ? new Date(epoch * 1000).toISOString().replace("T", " ")
  .slice(0, 19) + " UTC" : "";
const fill = (id, rows, empty) => {
  const body = $(id);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty);
    td.colSpan = body.closest("table").querySelectorAll("th").length;
    tr.append(td);
    body.append(tr);
  }
};
async function call(method, url) {
  const response = await fetch(url, {method, credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": CONFIG.csrf},
    body: method === "GET" ? undefined : "{}"});
  if (response.status === 401) { location.reload(); }
  return response;
}
function button(label, name, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-label", label + " " + name);
  b.addEventListener("click", action);
  return b;
}
async function act(method, path, done) {
  const response = await call(method, path);
  $("action-result").textContent = response.ok ? done : "Refused: " + response.status;
  refresh();
}
function render(data) {
  const alive = (ok, what) => (ok ? "up: " : "down: ") + what;
  $("health").textContent = [alive(data.worker_alive, "worker"),
    data.scheduler_alive == null ? "" : alive(data.scheduler_alive, "scheduler")]
    .filter(Boolean).join(" \\u00b7 ");
  $("health").className = data.worker_alive ? "ok" : "bad";
  fill("queues", (data.queues || []).map((q) => {
    const tr = document.createElement("tr");
    tr.append(cell(q.name), cell(q.depth), cell(q.oldest_seconds == null ? "" :
      Math.round(q.oldest_seconds) + " s"));
    return tr;
  }), "No queue");
  fill("running", (data.running || []).map((t) => {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    const p = t.progress || {};
    if (p.total) {
      const bar = document.createElement("progress");
      bar.max = p.total; bar.value = p.current;
      bar.setAttribute("aria-label", t.task + " progress");
      td.append(bar, " " + p.percent + "% (" + p.current + " of " + p.total + ")");
    } else { td.textContent = "running"; }
    tr.append(cell(t.task), cell(t.task_id, "id"), td);
    return tr;
  }), "Nothing running");
  fill("recent", (data.recent || []).map((t) => {
    const tr = document.createElement("tr");
    const outcome = t.success ? "succeeded"
      : "failed" + (t.error ? ": " + t.error : "");
    tr.append(cell(t.task), cell(t.task_id, "id"),
      cell(outcome, t.success ? "ok" : "bad"), cell(when(t.finished_at)));
    return tr;
  }), "No outcome yet");
  const failed = data.failed || {entries: [], total: 0, dropped: 0};
  $("failed-summary").textContent = failed.total + " kept, " + failed.dropped +
    " removed by the limits";
  fill("failed", failed.entries.map((e) => {
    const tr = document.createElement("tr");
    const actions = document.createElement("td");
    if (e.kind !== "poison") {
      actions.append(button("Replay", e.id, () => act("POST", CONFIG.api + "/failed/" +
        encodeURIComponent(e.id) + "/replay" + (e.replayed_as ? "?force=true" : ""),
        "Queued again: " + e.id)));
    }
    actions.append(" ", button("Discard", e.id, () => act("DELETE",
      CONFIG.api + "/failed/" + encodeURIComponent(e.id), "Discarded: " + e.id)));
    tr.append(cell(e.task || e.kind), cell(e.id, "id"),
      cell(e.error_type + ": " + e.error), cell(e.attempts),
      cell(when(e.last_failed_at)), actions);
    return tr;
  }), "No failed task");
  fill("schedules", (data.schedules || []).map((s) => {
    const tr = document.createElement("tr");
    tr.append(cell(s.name), cell(s.task), cell(s.when), cell(when(s.next_run)));
    return tr;
  }), "No schedule");
}
async function refresh() {
  const response = await call("GET", CONFIG.base + "/data");
  if (response.ok) { render(await response.json()); }
}
if (CONFIG.signedIn) {
  $("board").hidden = false;
  $("sign-out").hidden = false;
  $("sign-out").addEventListener("click", async () => {
    await call("DELETE", CONFIG.base + "/session");
    location.reload();
  });
  refresh();
  setInterval(refresh, CONFIG.refresh);
} else {
  $("sign-in").hidden = false;
  $("token").focus();
  $("sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch(CONFIG.base + "/session", {method: "POST",
      credentials: "same-origin", body: "{}",
      headers: {"Content-Type": "application/json",
        "Authorization": "Bearer " + $("token").value}});
    if (response.ok) { location.reload(); }
    else { $("sign-in-error").textContent = "Refused (" + response.status + ")"; }
  });
}
"""


async def snapshot(request: Request) -> dict[str, Any]:
    """What the page shows of this Celery app: its queues, the runs going on with
    their progress, recent outcomes, the failed-task inbox, beat's schedule, and
    whether a worker and beat said they were alive."""
    del request  # Celery's clients are the app's own, not the request's
    client = registry.async_client()
    try:
        board = await celery_inbox.board(client)
        running = await _running(client, board["running"])
        failed = await celery_inbox.page(client, 0, FAILED_SHOWN)
        schedules = await _schedules(client)
        queues = await queue_depths()
    except RedisError:
        raise HTTPException(
            status_code=503, detail="The task store is unavailable"
        ) from None
    return view(
        board,
        queues=queues,
        running=running,
        failed=failed,
        schedules=schedules,
        worker_alive=board["workers"] > 0,
        scheduler_alive=board["schedulers"] > 0,
    )


async def _running(client: Any, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose task still keeps its alive key (a killed worker's run does not),
    with the progress they stored in the result backend."""
    if not runs:
        return []
    keys = [registry.alive_key(run["task_id"]) for run in runs]
    metas = [celery_app.backend.get_key_for_task(run["task_id"]) for run in runs]
    values = await client.mget(keys + metas)
    alive, stored = values[: len(runs)], values[len(runs) :]
    found = []
    for index, run in enumerate(runs):
        if alive[index] is None:
            continue
        found.append({**run, "progress": _progress(stored[index])})
    return found


def _progress(stored: Any) -> dict[str, int] | None:
    try:
        meta = json.loads(stored) if stored else {}
        result = meta.get("result") if meta.get("status") == "PROGRESS" else None
        if not isinstance(result, dict):
            return None
        return progress_view(int(result["current"]), int(result["total"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


async def _schedules(client: Any) -> list[dict[str, Any]]:
    """beat_schedule's entries with their next run: a crontab's next time after now,
    an interval's period after the firing beat last claimed (none before beat ran)."""
    entries = dict(celery_app.conf.beat_schedule or {})
    names = sorted(entries)
    if not names:
        return []
    slots = await client.mget(
        [f"{registry.KEY_PREFIX}:{SLOT_KEY}:{name}" for name in names]
    )
    now = celery_app.now()
    rows = []
    for index, name in enumerate(names):
        entry = entries[name]
        when = maybe_schedule(entry["schedule"])
        next_run: float | None = None
        if isinstance(when, interval_schedule):
            if slots[index] is not None:
                next_run = float(slots[index]) + when.run_every.total_seconds()
        else:
            next_run = round((now + when.remaining_estimate(now)).timestamp())
        rows.append(
            {
                "name": name,
                "task": str(entry["task"]),
                "when": str(when).strip("<>"),
                "next_run": next_run,
            }
        )
    return rows

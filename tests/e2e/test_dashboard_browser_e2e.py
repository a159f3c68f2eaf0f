"""The task dashboard in a real headless browser (Debian's chromium, driven through
Playwright's protocol client; no browser is downloaded), on a running Celery stack.

The browser opens the page, signs in with the API token, watches a long task's progress
bar advance, and replays a failed email by clicking its Replay button (the email then
reaches the SMTP sink). The page's own Content-Security-Policy must let its nonce'd
script and style run and nothing else: the browser reports no violation. A screenshot
of the page is saved as an artifact (BGTASKS_ARTIFACTS, else artifacts/ in the
repository).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dashboard_stack import RECIPIENT, WAIT, DashboardStack, dashboard_stack
from tests.e2e.harness import API_TOKEN, REPO, missing, wait_until

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("BGTASKS_ARTIFACTS") or REPO / "artifacts")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardStack]:
    with dashboard_stack("celery", tmp_path_factory.mktemp("dashboard-browser")) as built:
        yield built


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("no chromium on PATH: apt-get install chromium")
    return str(found)


def test_a_browser_signs_in_watches_progress_and_replays(stack: DashboardStack) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    violations: list[str] = []
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on(
                "console",
                lambda message: (
                    violations.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(stack.url("/dashboard"))
            page.get_by_label("API token").fill(API_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("#board:not([hidden])", timeout=WAIT * 1000)
            page.wait_for_selector("#health.ok", timeout=WAIT * 1000)

            # a long task: its bar appears and advances without a reload
            task_id = stack.long_task(80)  # 8 s
            bar = page.locator(f"#running tr:has-text('{task_id}') progress")
            bar.wait_for(timeout=WAIT * 1000)
            first = float(bar.evaluate("element => element.value"))
            page.wait_for_function(
                "([id, seen]) => [...document.querySelectorAll('#running tr')]"
                ".some(row => row.textContent.includes(id) && "
                "row.querySelector('progress') && "
                "row.querySelector('progress').value > seen)",
                arg=[task_id, first],
                timeout=WAIT * 1000,
            )

            # a refused email lands in the inbox; a click replays it once the sink takes mail
            subject = f"Replayed by a click {uuid.uuid4()}"
            email_id = stack.refused_email(subject)
            replay = page.get_by_role("button", name=f"Replay {email_id}")
            replay.wait_for(timeout=WAIT * 2000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard-celery.png"
            page.screenshot(path=str(shot), full_page=True)
            stack.sink.rcpt_reply = "250 OK"
            replay.click()
            page.wait_for_selector(
                f"#action-result:has-text('Queued again: {email_id}')", timeout=WAIT * 1000
            )
            wait_until(
                lambda: any(m["Subject"] == subject for m in stack.sink.messages),
                WAIT,
                "the email replayed from the page at the sink",
            )
            print(f"\ndashboard screenshot: {shot}")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert not violations, violations
    sent = [m for m in stack.sink.messages if m["Subject"] == subject]
    assert sent and sent[0]["To"] == RECIPIENT

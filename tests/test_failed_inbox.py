"""The failed-task inbox module every queue runner generates, against a real Redis.

The partial is rendered on its own (settings given as a plain object), written as a
module and exercised with redis-py's synchronous and asyncio clients on a private
redis-server: entries are kept with their reason, newest first, filtered by task;
both limits hold, with what they removed counted; a private task's arguments are kept
for replay and never listed; replay is marked once (refused twice unless forced) and
linked both ways; discard removes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import jinja2
import pytest
import redis
import redis.asyncio

from bgtasks_gen.template_filters import add_filters
from tests.e2e.harness import redis_server

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def render_inbox(tmp_path: Path, max_entries: int, retention: int) -> ModuleType:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    add_filters(environment)
    text = environment.get_template("_partials/failed_inbox.py.jinja").render(
        private_tasks=["send_email"],
        runner="arq",
        settings_expr="SETTINGS",
        field_names={
            "bgtasks_failed_max_entries": "FAILED_MAX",
            "bgtasks_failed_retention_seconds": "FAILED_RETENTION",
        },
        env_names={
            "bgtasks_failed_max_entries": "BGTASKS_FAILED_MAX_ENTRIES",
            "bgtasks_failed_retention_seconds": "BGTASKS_FAILED_RETENTION_SECONDS",
        },
    )
    path = tmp_path / f"inbox_{max_entries}_{retention}.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    module.SETTINGS = SimpleNamespace(FAILED_MAX=max_entries, FAILED_RETENTION=retention)  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("inbox-redis")) as url:
        yield url


def clients(url: str, db: int) -> tuple[redis.Redis, Callable[[Any], Any]]:
    """A synchronous client on an emptied database, and a runner of coroutine functions
    taking an asyncio client of it (one event loop and client per call)."""
    sync = redis.Redis.from_url(f"{url}/{db}")
    sync.flushdb()

    def run(work: Callable[[redis.asyncio.Redis], Awaitable[Any]]) -> Any:
        async def once() -> Any:
            client = redis.asyncio.Redis.from_url(f"{url}/{db}")
            try:
                return await work(client)
            finally:
                await client.aclose()

        return asyncio.run(once())

    return sync, run


def failure(inbox: Any, task_id: str, task: str = "process_data", **kwargs: Any) -> Any:
    try:
        raise ValueError(f"no such order: {task_id}")
    except ValueError as error:
        return inbox.failure_entry(task_id, task, [1, 2], kwargs, error, attempts=4)


def test_entries_kept_newest_first_with_their_reason(tmp_path: Path, redis_url: str) -> None:
    inbox = render_inbox(tmp_path, max_entries=100, retention=3600)
    sync, aio = clients(redis_url, 1)
    for n in range(3):
        assert inbox.record(sync, failure(inbox, f"t{n}")) == 0
    poison = inbox.poison_entry("poison-1", "timelimit is not two numbers", b"\xff" * 10_000)
    aio(lambda client: inbox.arecord(client, poison))

    async def read(client: Any) -> Any:
        return await inbox.page(client, 0, 10), await inbox.page(client, 0, 10, "process_data")

    (entries, total, dropped), (only, _, _) = aio(read)
    assert [e["id"] for e in entries] == ["poison-1", "t2", "t1", "t0"]
    assert (total, dropped) == (4, 0)
    assert [e["id"] for e in only] == ["t2", "t1", "t0"]
    first = entries[1]
    assert first["error_type"] == "ValueError" and first["error"] == "no such order: t2"
    assert "raise ValueError" in first["traceback"] and first["attempts"] == 4
    assert first["args"] == [1, 2] and first["kwargs"] == {}
    assert entries[0]["raw_size"] == 10_000
    assert len(entries[0]["raw"]) <= 4 * inbox.MAX_RAW_BYTES // 3 + 4  # base64 of the bound


def test_max_entries_and_retention_hold_and_are_counted(tmp_path: Path, redis_url: str) -> None:
    inbox = render_inbox(tmp_path, max_entries=3, retention=60)
    sync, aio = clients(redis_url, 2)
    for n in range(5):
        inbox.record(sync, failure(inbox, f"t{n}"))
    entries, total, dropped = aio(inbox.page)
    assert [e["id"] for e in entries] == ["t4", "t3", "t2"]
    assert (total, dropped) == (3, 2)
    assert sync.get(inbox.ENTRY_PREFIX + "t0") is None  # removed, not only unlisted
    # an entry last seen beyond the retention goes with the next write
    stale = failure(inbox, "old")
    stale["last_failed_at"] = stale["first_failed_at"] = 1.0
    inbox.record(sync, stale)
    inbox.record(sync, failure(inbox, "t5"))
    entries, total, dropped = aio(inbox.page)
    assert "old" not in [e["id"] for e in entries]
    assert dropped == 4  # t0, t1, then t2 over the limit and "old" past the retention
    assert sync.ttl(inbox.ENTRY_PREFIX + "t5") <= 60


def test_private_arguments_kept_for_replay_never_listed(tmp_path: Path, redis_url: str) -> None:
    inbox = render_inbox(tmp_path, max_entries=10, retention=60)
    sync, aio = clients(redis_url, 3)
    secret = {"to": "ada@example.com", "subject": "Your code", "body": "1234"}
    inbox.record(sync, failure(inbox, "mail-1", task="send_email", **secret))
    listed, _, _ = aio(inbox.page)
    assert "ada@example.com" not in repr(listed)
    assert listed[0]["kwargs"] == {name: inbox.HIDDEN for name in secret}
    kept = aio(lambda client: inbox.entry(client, "mail-1"))
    assert kept is not None and kept["kwargs"] == secret


def test_replay_is_marked_once_and_linked_both_ways(tmp_path: Path, redis_url: str) -> None:
    inbox = render_inbox(tmp_path, max_entries=10, retention=60)
    sync, aio = clients(redis_url, 4)
    inbox.record(sync, failure(inbox, "first"))

    async def replay(client: Any) -> list[Any]:
        return [
            await inbox.mark_replayed(client, "first", "second"),
            await inbox.mark_replayed(client, "first", "third"),
            await inbox.mark_replayed(client, "first", "fourth", force=True),
            await inbox.mark_replayed(client, "missing", "x"),
        ]

    assert aio(replay) == ["", "second", "", None]
    kept = aio(lambda client: inbox.entry(client, "first"))
    assert kept is not None and kept["replayed_as"] == "fourth"
    # the replay fails too: its entry names the one it replays
    inbox.record(sync, failure(inbox, "fourth"))
    again = aio(lambda client: inbox.entry(client, "fourth"))
    assert again is not None and again["replay_of"] == "first"
    assert again["args"] == [1, 2]  # lists survive Redis' JSON round trip


def test_discard_removes(tmp_path: Path, redis_url: str) -> None:
    inbox = render_inbox(tmp_path, max_entries=10, retention=60)
    sync, aio = clients(redis_url, 5)
    inbox.record(sync, failure(inbox, "gone"))

    async def discard(client: Any) -> tuple[bool, bool, Any]:
        return (
            await inbox.discard(client, "gone"),
            await inbox.discard(client, "gone"),
            await inbox.page(client),
        )

    removed, again, (entries, total, _) = aio(discard)
    assert (removed, again, entries, total) == (True, False, [], 0)

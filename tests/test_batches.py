"""The Batches class the celery, arq and taskiq web modules share (templates/_partials):
rendered as generated, run against a fake Redis call that records each batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import partial_module

IMPORTS = """
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar
"""


def batches_class(legacy_typing: bool) -> Any:
    return partial_module("batches", IMPORTS, legacy_typing=legacy_typing).Batches


class FakeRedis:
    """Answers each item with item * 10 after `delay`; records every batch sent."""

    def __init__(self, delay: float = 0.01, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.sent: list[list[int]] = []

    async def send(self, items: list[int]) -> list[int]:
        self.sent.append(list(items))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [item * 10 for item in items]


@pytest.fixture(params=[False, True], ids=["typing", "legacy-typing"])
def Batches(request: pytest.FixtureRequest) -> Any:  # noqa: N802 - a class
    return batches_class(request.param)


def test_items_submitted_together_share_batches(Batches: Any) -> None:
    redis = FakeRedis()

    async def scenario() -> list[int]:
        batches = Batches(redis.send, timeout=5)
        return list(await asyncio.gather(*(batches.submit(n) for n in range(100))))

    results = asyncio.run(scenario())
    assert results == [n * 10 for n in range(100)]
    # at most 64 a batch, in the order submitted
    assert redis.sent == [list(range(64)), list(range(64, 100))]


def test_items_submitted_while_a_batch_is_in_flight_go_in_the_next(
    Batches: Any,
) -> None:
    redis = FakeRedis(delay=0.1)

    async def scenario() -> list[int]:
        batches = Batches(redis.send, timeout=5)
        first = asyncio.ensure_future(batches.submit(0))
        await asyncio.sleep(0.02)  # a lone item goes without waiting for company
        assert redis.sent == [[0]]
        later = [asyncio.ensure_future(batches.submit(n)) for n in range(1, 4)]
        return [await first, *[await one for one in later]]

    assert asyncio.run(scenario()) == [0, 10, 20, 30]
    assert redis.sent == [[0], [1, 2, 3]]


def test_a_failed_batch_fails_its_items_and_the_next_batch_still_goes(
    Batches: Any,
) -> None:
    redis = FakeRedis(fail=ConnectionError("refused"))

    async def scenario() -> tuple[list[Any], list[int]]:
        batches = Batches(redis.send, timeout=5)
        failed = await asyncio.gather(
            *(batches.submit(n) for n in range(5)), return_exceptions=True
        )
        redis.fail = None
        return failed, [await batches.submit(7)]

    failed, later = asyncio.run(scenario())
    assert all(isinstance(outcome, ConnectionError) for outcome in failed)
    assert later == [70]


def test_an_item_given_up_on_before_its_batch_went_is_never_sent(
    Batches: Any,
) -> None:
    redis = FakeRedis(delay=0.2)

    async def scenario() -> None:
        batches = Batches(redis.send, timeout=5)
        first = asyncio.ensure_future(batches.submit(1))
        await asyncio.sleep(0.05)  # its batch is in flight
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batches.submit(2), 0.05)  # waited in line only
        third = batches.submit(3)
        assert await first == 10
        assert await third == 30

    asyncio.run(scenario())
    assert redis.sent == [[1], [3]]


def test_a_batch_that_hangs_fails_within_the_timeout(Batches: Any) -> None:
    redis = FakeRedis(delay=30)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        batches = Batches(redis.send, timeout=0.2)
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batches.submit(1), 5)
        return loop.time() - started

    assert asyncio.run(scenario()) < 2

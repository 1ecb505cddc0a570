"""The shared rate budget: one reservation log for every replica, by Redis time."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.errors import RateBudgetExhausted
from broker.tokens.budget import WINDOW
from tests.redis.conftest import MakeBackend


async def test_three_replicas_together_never_exceed_the_rate_in_any_window(
    make_backend: MakeBackend,
) -> None:
    rate = 10
    replicas = [await make_backend(rate=rate) for _ in range(3)]
    loop = asyncio.get_running_loop()
    # Each call's slot is Redis time: at least its wait after the call was sent, at most
    # when acquire returned (the reply, then the sleep, which may wake late on a busy
    # machine). Only what those bounds prove is judged, so that lateness is not taken
    # for a breach.
    slots: list[tuple[float, float]] = []

    async def call(index: int) -> None:
        sent = loop.time()
        wait = await replicas[index % 3].budget.acquire(max_wait=10.0)
        slots.append((sent + wait, loop.time()))

    await asyncio.gather(*(call(i) for i in range(36)))
    assert len(slots) == 36
    for earliest, _ in slots:
        # The rate + 1 calls whose slots could all lie in a window starting at earliest.
        latest = sorted(last for first, last in slots if first >= earliest)[: rate + 1]
        surely_in_window = len(latest) > rate and latest[-1] - earliest < WINDOW
        assert not surely_in_window, f"{rate + 1} calls within {latest[-1] - earliest:.3f} s"
    # And the budget was not starved either: 36 calls at 10 per window take ~3 windows.
    assert max(last for _, last in slots) - min(first for first, _ in slots) < 4 * WINDOW


async def test_a_call_that_would_wait_past_max_wait_is_refused_everywhere(
    make_backend: MakeBackend,
) -> None:
    first, second = await make_backend(rate=2.0), await make_backend(rate=2.0)
    await first.budget.acquire(max_wait=0.0)
    await second.budget.acquire(max_wait=0.0)
    with pytest.raises(RateBudgetExhausted) as caught:
        await first.budget.acquire(max_wait=0.1)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_a_pause_on_one_replica_holds_back_the_others(
    make_backend: MakeBackend, redis: Redis, cache_settings: CacheSettings
) -> None:
    first, second = await make_backend(rate=100.0), await make_backend(rate=100.0)
    first.budget.pause(5.0)
    pause_key = f"{cache_settings.namespace}:budget:pause"
    for _ in range(100):  # the shared pause is written in the background
        if await redis.exists(pause_key):
            break
        await asyncio.sleep(0.01)
    with pytest.raises(RateBudgetExhausted) as caught:
        await second.budget.acquire(max_wait=1.0)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 4

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
    times: list[float] = []

    async def call(index: int) -> None:
        await replicas[index % 3].budget.acquire(max_wait=10.0)
        times.append(loop.time())

    await asyncio.gather(*(call(i) for i in range(36)))
    times.sort()
    assert len(times) == 36
    for i, start in enumerate(times):
        # A little under the window: the loop wakes a sleeper slightly late, never early.
        in_window = [t for t in times[i:] if t - start < WINDOW - 0.02]
        assert len(in_window) <= rate, f"{len(in_window)} calls in a window from {i}"
    # And the budget was not starved either: 36 calls at 10 per window take ~3 windows.
    assert times[-1] - times[0] < 4 * WINDOW


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

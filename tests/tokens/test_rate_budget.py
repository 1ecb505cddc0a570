"""The partner-call budget: never more than `rate` calls in any window, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from broker.errors import RateBudgetExhausted
from broker.tokens.budget import WINDOW, SlidingWindowBudget
from tests.tokens.fakes import in_virtual_time


async def fifty_calls_at_twenty_a_second(clock: Callable[[], float]) -> None:
    budget = SlidingWindowBudget(rate=20.0, clock=clock)
    times: list[float] = []

    async def call() -> None:
        await budget.acquire(max_wait=5.0)
        times.append(clock())

    await asyncio.gather(*(call() for _ in range(50)))
    times.sort()
    assert times[-1] - times[0] >= 2 * WINDOW - 0.01  # they really were spread out
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t - start < WINDOW - 0.01]
        assert len(in_window) <= 20


@in_virtual_time
async def test_no_window_ever_holds_more_than_rate_calls() -> None:
    await fifty_calls_at_twenty_a_second(asyncio.get_running_loop().time)


@pytest.mark.slow
async def test_no_window_ever_holds_more_than_rate_calls_in_real_time() -> None:
    """The same on the wall clock, where a sleep may wake late (2 s)."""
    await fifty_calls_at_twenty_a_second(time.monotonic)


async def test_a_caller_that_would_wait_too_long_is_refused_with_retry_after() -> None:
    budget = SlidingWindowBudget(rate=2.0)
    await budget.acquire(max_wait=0.0)
    await budget.acquire(max_wait=0.0)
    with pytest.raises(RateBudgetExhausted) as caught:
        await budget.acquire(max_wait=0.1)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_pause_honours_an_upstream_429() -> None:
    budget = SlidingWindowBudget(rate=100.0)
    budget.pause(5.0)
    with pytest.raises(RateBudgetExhausted):
        await budget.acquire(max_wait=1.0)

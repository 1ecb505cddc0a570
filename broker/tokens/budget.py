"""The shared budget for calls made with the partner credentials (5/s at the vendor).

A sliding-window reservation: each call reserves the earliest moment at which at most
``rate`` calls fall inside any one-second window, then sleeps until it. The guarantee
is exact (never more than ``rate`` in any window), not the burst-then-refill of a
classic token bucket, because the vendor's limit is checked over any second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from broker.errors import RateBudgetExhausted

# One second plus a guard, so that network jitter between our clock and the vendor's
# cannot squeeze rate + 1 calls into any second the vendor measures.
WINDOW = 1.05


class RateBudget(Protocol):
    async def acquire(self, max_wait: float) -> float:
        """Wait for a slot (at most *max_wait* s) and return the wait; else raise."""

    def pause(self, seconds: float) -> None:
        """Honour an upstream 429: hand out no slot for *seconds*."""


class SlidingWindowBudget:
    """An in-process ``RateBudget``; replicas sharing Redis use a shared one instead."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        # A fractional rate (0.5/s) becomes one call per 1/rate seconds.
        self._calls = max(1, math.floor(rate))
        self._window = WINDOW * self._calls / rate
        self._slots: deque[float] = deque(maxlen=self._calls)
        self._paused_until = 0.0
        self._clock = clock

    async def acquire(self, max_wait: float) -> float:
        now = self._clock()
        slot = max(now, self._paused_until)
        if len(self._slots) == self._calls:
            # The slot must leave a full window after the call `rate` places back.
            slot = max(slot, self._slots[0] + self._window)
        wait = slot - now
        if wait > max_wait:
            raise RateBudgetExhausted(
                "partner call budget exhausted", retry_after=max(1.0, math.ceil(wait))
            )
        self._slots.append(slot)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

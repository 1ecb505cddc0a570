"""The cluster-wide ``RateBudget``: one sliding-window reservation log in Redis.

The same rule as ``SlidingWindowBudget`` (reserve the earliest slot that is at least
one window after the slot ``rate`` places back, then sleep until it), decided by one
Lua script so that concurrent replicas cannot both take a slot, and timed by the
Redis server's clock (``TIME``) so that replicas' clocks do not matter. While Redis
is unavailable each replica falls back to an in-process budget for its share of the
rate (divided among the replicas last counted), so that together they still keep to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from broker.errors import RateBudgetExhausted
from broker.redis.census import ReplicaCensus
from broker.redis.link import RedisLink, RedisUnavailable, stop_task
from broker.tokens.budget import WINDOW, SlidingWindowBudget

# KEYS: the reservation log (a list of slots, oldest first), the pause-until time.
# ARGV: calls per window, window (s), max wait (s).
# Returns {granted (1/0), wait (s) as a string: Lua numbers become integers in replies}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local calls = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[2]) or '0'))
if redis.call('LLEN', KEYS[1]) >= calls then
  slot = math.max(slot, tonumber(redis.call('LINDEX', KEYS[1], -calls)) + window)
end
local wait = slot - now
if wait > tonumber(ARGV[3]) then
  return {0, string.format('%.6f', wait)}
end
redis.call('RPUSH', KEYS[1], string.format('%.6f', slot))
redis.call('LTRIM', KEYS[1], -calls, -1)
redis.call('PEXPIRE', KEYS[1], math.ceil((wait + window) * 1000) + 1000)
return {1, string.format('%.6f', wait)}
"""
# KEYS: the pause-until time. ARGV: seconds. A pause only ever extends.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.6f', until_), 'PX',
             math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 0
"""


class RedisRateBudget:
    """At most ``rate`` partner calls in any window, summed over every replica."""

    def __init__(self, link: RedisLink, rate: float, census: ReplicaCensus) -> None:
        self._link = link
        self._rate = rate
        self._census = census
        # As in SlidingWindowBudget: a fractional rate is one call per 1/rate s.
        self._calls = max(1, math.floor(rate))
        self._window = WINDOW * self._calls / rate
        self._keys = [link.key("budget", "log"), link.key("budget", "pause")]
        self._reserve = link.client.register_script(_RESERVE)
        self._pause = link.client.register_script(_PAUSE)
        self._local = SlidingWindowBudget(rate)
        self._local_replicas = 1
        self._paused_until = 0.0  # monotonic; carried over when the share changes
        self._pausing: set[asyncio.Task[None]] = set()

    async def acquire(self, max_wait: float) -> float:
        try:
            granted, wait = await self._link.call(
                lambda redis: self._reserve(
                    keys=self._keys, args=[self._calls, repr(self._window), repr(max_wait)]
                )
            )
        except RedisUnavailable:
            return await self._fallback().acquire(max_wait)
        wait = float(wait)
        if not int(granted):
            raise RateBudgetExhausted(
                "partner call budget exhausted", retry_after=max(1.0, math.ceil(wait))
            )
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._fallback().pause(seconds)
        # The protocol's pause is synchronous; share it in the background.
        task = asyncio.get_running_loop().create_task(self._share_pause(seconds))
        self._pausing.add(task)  # referenced until done: no GC footgun
        task.add_done_callback(self._pausing.discard)

    async def close(self) -> None:
        for task in list(self._pausing):
            await stop_task(task, within=self._link.timeout)

    def _fallback(self) -> SlidingWindowBudget:
        replicas = self._census.replicas
        if replicas != self._local_replicas:
            share = self._rate / replicas
            # Whole shares keep the sum exact: replicas * floor(rate / replicas) <= rate.
            self._local = SlidingWindowBudget(math.floor(share) if share >= 1 else share)
            self._local_replicas = replicas
            if (paused := self._paused_until - time.monotonic()) > 0:
                self._local.pause(paused)
        return self._local

    async def _share_pause(self, seconds: float) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self._link.call(
                lambda redis: self._pause(keys=self._keys[1:], args=[repr(seconds)])
            )

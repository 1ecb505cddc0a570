"""How many replicas share the namespace: one heartbeat per replica, counted by Redis.

The count sizes each replica's fallback budget while Redis is down (the rate divided
among the replicas last seen), so that replicas working alone still stay, together,
within the vendor's limit instead of each spending all of it.
"""

from __future__ import annotations

import asyncio
import contextlib

from broker.redis.link import RedisLink, RedisUnavailable, stop_task

HEARTBEAT = 5.0
# A replica missing three heartbeats in a row no longer counts.
FORGET_AFTER = 3 * HEARTBEAT

# KEYS: the census (a sorted set: replica id → last heartbeat, Redis time in ms).
# ARGV: this replica's id, how long a heartbeat counts (ms). Returns the count.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""


class ReplicaCensus:
    def __init__(self, link: RedisLink, *, interval: float = HEARTBEAT) -> None:
        self._link = link
        self._interval = interval
        self._key = link.key("replicas")
        self._beat = link.client.register_script(_BEAT)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.replicas = 1  # this one, until Redis says otherwise

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_beating())

    async def beat(self) -> None:
        forget_ms = round(FORGET_AFTER * 1000)
        count = await self._link.call(
            lambda redis: self._beat(keys=[self._key], args=[self._link.replica_id, forget_ms])
        )
        self.replicas = max(1, int(count))

    async def close(self) -> None:
        """Stop beating and leave the census, so the others' shares grow at once."""
        self._closing = True
        await stop_task(self._task, within=self._link.timeout)
        with contextlib.suppress(RedisUnavailable):
            await self._link.call(lambda redis: redis.zrem(self._key, self._link.replica_id))

    async def _keep_beating(self) -> None:
        while not self._closing:
            if not self._link.degraded:  # while degraded, the last count is what we know
                with contextlib.suppress(RedisUnavailable):
                    await self.beat()
            await asyncio.sleep(self._interval)

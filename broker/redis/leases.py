"""Mint leases: one holder per slot across the cluster, kept alive while it works.

A lease is ``SET NX PX lease_ttl`` with a random owner value. The holder renews it
every third of its lifetime while its mint runs; a holder that dies stops renewing,
so the lease expires and a waiting replica takes it over. Renewal and release are
compare-and-act scripts, so a holder whose lease expired can never extend or delete
the lease a successor took since.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

from broker.observability.logs import get_logger
from broker.redis.link import RedisLink, RedisUnavailable, stop_task

log = get_logger("broker.redis")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Also how a stale token is dropped: only while it is still the stored value.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    def __init__(self, link: RedisLink, ttl: float) -> None:
        self._link = link
        self.ttl = ttl
        self.call_timeout = link.timeout
        self._ttl_ms = max(1, round(ttl * 1000))
        self._renew = link.client.register_script(_RENEW)
        self._release = link.client.register_script(COMPARE_AND_DELETE)

    async def acquire(self, slot: str) -> Lease | None:
        """The lease on *slot* if nobody holds it; raises ``RedisUnavailable``."""
        key = self._link.key("lease", slot)
        owner = secrets.token_hex(16)
        won = await self._link.call(lambda redis: redis.set(key, owner, nx=True, px=self._ttl_ms))
        return Lease(self, key, owner) if won else None

    async def renew(self, lease: Lease) -> bool:
        renewed = await self._link.call(
            lambda redis: self._renew(keys=[lease.key], args=[lease.owner, self._ttl_ms])
        )
        return bool(renewed)

    async def release(self, lease: Lease) -> bool:
        released = await self._link.call(
            lambda redis: self._release(keys=[lease.key], args=[lease.owner])
        )
        return bool(released)


class Lease:
    """A held lease; ``kept()`` renews it for as long as the block runs."""

    def __init__(self, leases: Leases, key: str, owner: str) -> None:
        self._leases = leases
        self.key = key
        self.owner = owner

    def __repr__(self) -> str:
        return f"Lease({self.key!r})"

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        done = asyncio.Event()
        renewer = asyncio.get_running_loop().create_task(self._keep_renewing(done))
        try:
            yield
        finally:
            done.set()
            await stop_task(renewer, within=self._leases.call_timeout)

    async def release(self) -> None:
        """Give the lease back if still ours; a Redis fault leaves it to expire."""
        with contextlib.suppress(RedisUnavailable):
            await self._leases.release(self)

    async def _keep_renewing(self, done: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._leases.ttl / 3):
                    await done.wait()
            if done.is_set():
                return
            try:
                still_ours = await self._leases.renew(self)
            except RedisUnavailable:
                return  # degraded: the mint goes on; the lease expires by itself
            if not still_ours:
                # Taken over (we stalled past the TTL): finish anyway; the later
                # store simply wins, as both tokens are valid.
                log.warning("mint_lease_lost", lease=self.key)
                return

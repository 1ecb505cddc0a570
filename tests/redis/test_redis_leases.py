"""Mint leases: one holder, takeover after the holder stops renewing, safe release."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.observability.metrics import Metrics
from broker.redis.leases import Leases
from broker.redis.link import RedisLink


def replica_leases(settings: CacheSettings) -> tuple[RedisLink, Leases]:
    link = RedisLink.connect(settings, Metrics.create(CollectorRegistry()))
    return link, Leases(link, ttl=settings.lease_ttl)


async def test_one_holder_then_takeover_once_the_holder_stops_renewing(
    cache_settings: CacheSettings, redis: Redis
) -> None:
    link_a, leases_a = replica_leases(cache_settings)
    link_b, leases_b = replica_leases(cache_settings)
    try:
        held = await leases_a.acquire("checkout:cus_1:inv_1")
        assert held is not None
        assert await leases_b.acquire("checkout:cus_1:inv_1") is None
        # The holder "dies": it never renews. Within the TTL (1 s) the lease lapses.
        taken = None
        for _ in range(40):
            await asyncio.sleep(0.05)
            taken = await leases_b.acquire("checkout:cus_1:inv_1")
            if taken is not None:
                break
        assert taken is not None
        # The old holder's release must not delete the new holder's lease.
        assert await leases_a.release(held) is False
        assert await redis.get(taken.key) == taken.owner.encode()
        assert await leases_a.renew(held) is False
        assert await leases_b.release(taken) is True
        assert await redis.exists(taken.key) == 0
    finally:
        await link_a.close()
        await link_b.close()


async def test_a_kept_lease_outlives_its_ttl(cache_settings: CacheSettings) -> None:
    link_a, leases_a = replica_leases(cache_settings)
    link_b, leases_b = replica_leases(cache_settings)
    try:
        held = await leases_a.acquire("partner")
        assert held is not None
        async with held.kept():
            await asyncio.sleep(cache_settings.lease_ttl * 1.6)
            assert await leases_b.acquire("partner") is None
        await held.release()
        assert await leases_b.acquire("partner") is not None
    finally:
        await link_a.close()
        await link_b.close()

"""Shared revocation and eviction: what one replica records, every replica applies."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.credentials import token_key
from broker.errors import ServiceUnavailable
from tests.redis.conftest import MakeBackend
from tests.redis.processes import free_port
from tests.redis.test_redis_coordinator import Minter


async def test_a_revocation_on_one_replica_is_seen_by_the_next_check_on_another(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    first, second = await make_backend(), await make_backend()
    now = time.time()
    assert await second.revoked_before("cus_1") is None
    await first.revoke_sessions("cus_1", before=now, until=now + 30)
    assert await second.revoked_before("cus_1") == pytest.approx(now)
    assert await second.revoked_before("cus_2") is None
    ttl_ms = await redis.pttl(f"{cache_settings.namespace}:revoked:cus_1")
    assert 0 < ttl_ms <= 30_000
    # An older cut-off never weakens a newer one, nor shortens its life.
    await second.revoke_sessions("cus_1", before=now - 100, until=now + 10)
    assert await first.revoked_before("cus_1") == pytest.approx(now)
    assert await redis.pttl(f"{cache_settings.namespace}:revoked:cus_1") > 10_000


async def test_an_eviction_reaches_every_replica_and_drops_the_shared_tokens(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    replicas = [await make_backend() for _ in range(3)]
    evicted: list[list[str]] = [[], [], []]
    for replica, seen in zip(replicas, evicted, strict=True):
        replica.on_eviction(seen.append)
    for key in (
        token_key("cus_1", "inv_a"),
        token_key("cus_1", "inv_b"),
        token_key("cus_2", "inv_c"),
    ):
        await replicas[0].coordinator.obtain(key, Minter(), current=None)
    await asyncio.sleep(0.1)  # let the subscriptions settle

    await replicas[1].publish_eviction("cus_1")

    assert evicted[1] == ["cus_1"]  # applied here before the call returns
    for _ in range(100):
        if evicted[0] and evicted[2]:
            break
        await asyncio.sleep(0.01)
    assert evicted == [["cus_1"], ["cus_1"], ["cus_1"]]
    remaining = {
        key async for key in redis.scan_iter(match=f"{cache_settings.namespace}:checkout:*")
    }
    assert remaining == {f"{cache_settings.namespace}:checkout:cus_2:inv_c".encode()}


async def test_customer_ids_outside_the_validated_alphabet_never_reach_a_key_name(
    make_backend: MakeBackend,
) -> None:
    replica = await make_backend()
    for bad in ("", "a:b", "*", "x" * 65):
        with pytest.raises(ValueError, match="invalid customer id"):
            await replica.publish_eviction(bad)
        with pytest.raises(ValueError, match="invalid customer id"):
            await replica.revoke_sessions(bad, before=0.0, until=time.time() + 1)


async def test_without_redis_a_revocation_holds_here_and_the_caller_is_told_it_is_not_shared(
    make_backend: MakeBackend, cache_settings: CacheSettings
) -> None:
    settings = dataclasses.replace(
        cache_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2
    )
    alone = await make_backend(settings)
    evicted: list[str] = []
    alone.on_eviction(evicted.append)
    now = time.time()
    with pytest.raises(ServiceUnavailable):
        await alone.revoke_sessions("cus_1", before=now, until=now + 30)
    assert await alone.revoked_before("cus_1") == pytest.approx(now)
    with pytest.raises(ServiceUnavailable):
        await alone.publish_eviction("cus_1")
    assert evicted == ["cus_1"]

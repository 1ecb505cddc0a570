"""End to end: three `token-broker serve` replicas sharing Redis behave as one broker.

Real processes: one sandbox (the vendor's 5 calls/s enforced), one redis-server,
three brokers on their own ports with the same signing key, API key and Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from broker.tokens.budget import WINDOW
from tests.redis.cluster import (
    API_KEY,
    LEASE_TTL,
    NAMESPACE,
    RATE,
    SANDBOX_RATE_WINDOW,
    Cluster,
    unique_tag,
)
from tests.redis.processes import MISSING_REDIS, redis_executable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    executable = redis_executable()
    if executable is None:
        pytest.fail(MISSING_REDIS)
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), executable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    """The cluster, whole again (Redis up, every replica ready and shared), counters reset."""
    running_cluster.ensure_healthy()
    return running_cluster


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def checkout(http: aiohttp.ClientSession, port: int, customer: str, invoice: str) -> int:
    """What the SDK does: a session from the partner backend, then a checkout call."""
    base = f"http://127.0.0.1:{port}"
    async with http.post(
        f"{base}/v1/checkout-auth/init",
        json={"customer_id": customer, "invoice_id": invoice},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["token"]
    async with http.get(
        f"{base}/checkout/invoice", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await response.read()
        return response.status


async def sandbox_stats(http: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{cluster.sandbox_port}/_sandbox/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def sandbox_faults(http: aiohttp.ClientSession, cluster: Cluster, **faults: object) -> None:
    url = f"http://127.0.0.1:{cluster.sandbox_port}/_sandbox/faults"
    async with http.post(url, json=faults) as response:
        assert response.status == 200, await response.text()


async def test_600_concurrent_requests_for_30_cold_keys_mint_each_key_once(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    tag = unique_tag()
    keys = [(f"cus_{tag}_{i}", f"inv_{tag}_{i}") for i in range(30)]
    outages = cluster.events("redis_unavailable")
    # Request n goes to key n % 30 on replica (n // 30) % 3: every key on every replica.
    statuses = await asyncio.gather(
        *(checkout(http, cluster.ports[(n // 30) % 3], *keys[n % 30]) for n in range(600))
    )
    assert cluster.events("redis_unavailable") == outages, "a replica left the shared cache"
    assert statuses == [200] * 600
    stats = await sandbox_stats(http, cluster)
    assert stats["tokens_issued"] == 30
    assert {f"{c}/{i}": 1 for c, i in keys} == {
        key: count for key, count in stats["mints_per_key"].items() if tag in key
    }


async def test_three_replicas_minting_100_keys_stay_within_the_vendor_rate(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """One budget for the cluster, judged where the vendor judges it: on arrival.

    The sandbox refuses (429) the sixth partner call within SANDBOX_RATE_WINDOW, a
    window that a correct shared budget never fills even with each call half a second
    late (a loaded machine), that a budget granting RATE + 1 a window fills at once, and
    that replicas budgeting on their own overfill many times over. The replicas must
    stay on the shared budget throughout: one whose Redis call timed out would budget
    alone. That the budget never grants RATE + 1 slots within WINDOW is pinned exactly,
    on its own clock, by tests/redis/test_redis_budget.py."""
    tag = unique_tag()
    outages = cluster.events("redis_unavailable")
    statuses = await asyncio.gather(
        *(
            checkout(http, cluster.ports[n % 3], f"cus_{tag}_{n}", f"inv_{tag}_{n}")
            for n in range(100)
        )
    )
    # A replica whose Redis call timed out would have budgeted alone beside the others.
    assert cluster.events("redis_unavailable") == outages, "a replica left the shared budget"
    assert statuses == [200] * 100
    stats = await sandbox_stats(http, cluster)
    assert stats["tokens_issued"] == 100
    assert stats["rate_limited_served"] == 0
    arrivals = sorted(stats["mint_times"])[-100:]
    closest = min(arrivals[i + RATE] - arrivals[i] for i in range(len(arrivals) - RATE))
    assert closest > SANDBOX_RATE_WINDOW
    # 100 mints at RATE per WINDOW take (100 - 1) // RATE windows, give or take jitter.
    assert arrivals[-1] - arrivals[0] > (99 // RATE) * WINDOW - (WINDOW - SANDBOX_RATE_WINDOW)


async def test_a_replica_killed_while_holding_a_mint_lease_is_taken_over(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    tag = unique_tag()
    customer, invoice = f"cus_{tag}_stall", f"inv_{tag}_stall"
    victim_port, survivors = cluster.ports[0], cluster.ports[1:]
    warm = [(f"cus_{tag}_w{i}", f"inv_{tag}_w{i}") for i in range(4)]
    assert (
        await asyncio.gather(*(checkout(http, p, *k) for p in survivors for k in warm)) == [200] * 8
    )
    await sandbox_faults(http, cluster, stall_customers=[customer], stall_seconds=30)

    doomed = asyncio.create_task(checkout(http, victim_port, customer, invoice))
    redis = Redis.from_url(cluster.redis.url)
    try:
        lease = f"{NAMESPACE}:lease:checkout:{customer}:{invoice}"
        for _ in range(100):
            if await redis.exists(lease):
                break
            await asyncio.sleep(0.05)
        assert await redis.exists(lease), "the victim never took the mint lease"
    finally:
        await redis.aclose()
    waiter = asyncio.create_task(checkout(http, survivors[0], customer, invoice))

    async def steady_traffic() -> list[int]:
        statuses: list[int] = []
        for round_ in range(20):
            cold = (f"cus_{tag}_c{round_}", f"inv_{tag}_c{round_}")
            statuses += await asyncio.gather(
                *(checkout(http, p, *k) for p in survivors for k in [*warm, cold])
            )
            await asyncio.sleep(0.05)
        return statuses

    traffic = asyncio.create_task(steady_traffic())
    await asyncio.sleep(0.3)  # the survivor is now waiting on the victim's lease
    await asyncio.to_thread(cluster.brokers[0].kill)
    killed_at = time.monotonic()
    await sandbox_faults(http, cluster, stall_customers=[])

    assert await asyncio.wait_for(waiter, timeout=LEASE_TTL + 10) == 200
    took_over_in = time.monotonic() - killed_at
    assert took_over_in < LEASE_TTL + 1.5  # the lease TTL, plus one (fast) mint
    assert set(await traffic) == {200}
    with pytest.raises(aiohttp.ClientError):
        await doomed
    # The victim's stalled mint would otherwise finish in a later test's counters.
    async with http.post(f"http://127.0.0.1:{cluster.sandbox_port}/_sandbox/reset"):
        pass


async def test_redis_down_degrades_to_local_minting_and_recovers_to_shared(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    tag = unique_tag()
    warm = [(f"cus_{tag}_w{i}", f"inv_{tag}_w{i}") for i in range(3)]
    assert set(
        await asyncio.gather(*(checkout(http, p, *k) for p in cluster.ports for k in warm))
    ) == {200}

    await asyncio.to_thread(cluster.redis.kill)
    # Warm keys from the in-process caches; cold ones minted locally, each replica
    # within its share of the rate (5 / 3 replicas: one a second), so no 429 either.
    cold = [[(f"cus_{tag}_d{p}{i}", f"inv_{tag}_d{p}{i}") for i in range(2)] for p in range(3)]
    statuses = await asyncio.gather(
        *(
            checkout(http, p, *k)
            for p, keys in zip(cluster.ports, cold, strict=True)
            for k in [*warm, *keys]
        )
    )
    assert set(statuses) == {200}
    await asyncio.to_thread(cluster.wait_for_mode, degraded=True)
    for port in cluster.ports:
        status, body = await asyncio.to_thread(cluster.readiness, port)
        assert status == 200  # a degraded replica still serves
        assert "redis unavailable" in str(body.get("notes"))

    await asyncio.to_thread(cluster.redis.start)
    await asyncio.to_thread(cluster.wait_for_mode, degraded=False)
    for port in cluster.ports:
        assert await asyncio.to_thread(cluster.readiness, port) == (200, {"status": "ready"})
    fresh = (f"cus_{tag}_fresh", f"inv_{tag}_fresh")
    statuses = await asyncio.gather(*(checkout(http, p, *fresh) for p in cluster.ports * 3))
    assert set(statuses) == {200}
    stats = await sandbox_stats(http, cluster)
    assert stats["mints_per_key"][f"{fresh[0]}/{fresh[1]}"] == 1

"""Redis down or slow: the replica serves alone, says so, and rejoins when Redis is back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from broker.config.model import CacheSettings
from broker.credentials import token_key
from broker.errors import RateBudgetExhausted
from broker.observability.metrics import Metrics
from broker.redis.backend import RedisBackend
from tests.redis.conftest import MakeBackend
from tests.redis.processes import RedisServer, free_port, redis_executable
from tests.redis.test_redis_coordinator import Minter


async def wait_for_mode(backend: RedisBackend, *, degraded: bool, within: float) -> None:
    for _ in range(round(within / 0.05)):  # the probe runs once a second
        if backend.degraded == degraded:
            return
        await asyncio.sleep(0.05)
    assert backend.degraded == degraded


def redis_events(logs: list[MutableMapping[str, Any]]) -> list[object]:
    return [entry["event"] for entry in logs if str(entry["event"]).startswith("redis_")]


def own_redis(cache_settings: CacheSettings, tmp_path: Path) -> tuple[RedisServer, CacheSettings]:
    """A redis-server of this test's own (not started yet) and settings pointing at it."""
    port = free_port()
    settings = dataclasses.replace(cache_settings, redis_url=f"redis://127.0.0.1:{port}/0")
    executable = redis_executable()
    assert executable is not None
    return RedisServer(executable, port, tmp_path), settings


async def test_a_replica_started_without_redis_serves_alone_then_rejoins(
    make_backend: MakeBackend, cache_settings: CacheSettings, tmp_path: Path
) -> None:
    server, settings = own_redis(cache_settings, tmp_path)
    registry = CollectorRegistry()
    with capture_logs() as logs:
        alone = await make_backend(settings, metrics=Metrics.create(registry))
        assert alone.degraded
        assert "redis unavailable" in (alone.health_note() or "")
        assert registry.get_sample_value("broker_redis_degraded") == 1
        mint = Minter()
        await alone.coordinator.obtain(token_key("cus_1", "inv_1"), mint, current=None)
        assert mint.calls == 1
        assert await alone.budget.acquire(max_wait=1.0) == 0.0
        assert await alone.revoked_before("cus_1") is None

        await asyncio.to_thread(server.start)
        try:
            await wait_for_mode(alone, degraded=False, within=3.0)
            assert alone.health_note() is None
            assert registry.get_sample_value("broker_redis_degraded") == 0
            peer = await make_backend(settings)
            shared_mint = Minter(delay=0.2)
            key = token_key("cus_2", "inv_2")
            await asyncio.gather(
                alone.coordinator.obtain(key, shared_mint, current=None),
                peer.coordinator.obtain(key, shared_mint, current=None),
            )
            assert shared_mint.calls == 1
            events = redis_events(logs)
        finally:
            await asyncio.to_thread(server.kill)
    assert events == ["redis_unavailable", "redis_recovered"]


async def test_redis_dying_mid_flight_degrades_once_and_nothing_fails(
    make_backend: MakeBackend, cache_settings: CacheSettings, tmp_path: Path
) -> None:
    server, settings = own_redis(cache_settings, tmp_path)
    await asyncio.to_thread(server.start)
    try:
        replica = await make_backend(settings)
        assert not replica.degraded
        await replica.coordinator.obtain(token_key("cus_0", "inv_0"), Minter(), current=None)
        with capture_logs() as logs:
            await asyncio.to_thread(server.kill)
            mint = Minter()
            tokens = await asyncio.gather(
                *(
                    replica.coordinator.obtain(token_key(f"cus_{i}", "inv"), mint, current=None)
                    for i in range(1, 11)
                )
            )
            assert len(tokens) == mint.calls == 10
            assert replica.degraded
            await replica.budget.acquire(max_wait=1.0)
            await asyncio.to_thread(server.start)
            await wait_for_mode(replica, degraded=False, within=3.0)
            # Connections pooled before the outage must not knock it straight back down.
            for i in range(5):
                await replica.coordinator.obtain(token_key(f"cus_{i}", "after"), mint, current=None)
            assert not replica.degraded
        assert redis_events(logs) == ["redis_unavailable", "redis_recovered"]
    finally:
        await asyncio.to_thread(server.kill)


async def test_a_redis_that_never_answers_costs_one_timeout_at_start(
    make_backend: MakeBackend, cache_settings: CacheSettings
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never answer
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    settings = dataclasses.replace(
        cache_settings, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2
    )
    try:
        started = time.monotonic()
        replica = await make_backend(settings)
        assert time.monotonic() - started < 1.0
        assert replica.degraded
        started = time.monotonic()
        await replica.coordinator.obtain(token_key("cus_1", "inv_1"), Minter(), current=None)
        assert time.monotonic() - started < 0.1  # degraded: no Redis wait per request
    finally:
        black_hole.close()
        await black_hole.wait_closed()


async def test_while_redis_is_down_each_replica_spends_only_its_share_of_the_rate(
    make_backend: MakeBackend, cache_settings: CacheSettings, tmp_path: Path
) -> None:
    server, settings = own_redis(cache_settings, tmp_path)
    await asyncio.to_thread(server.start)
    try:
        replicas = [await make_backend(settings, rate=6.0) for _ in range(3)]
        assert replicas[-1].replicas == 3
    finally:
        await asyncio.to_thread(server.kill)
    last = replicas[-1]
    await last.budget.acquire(max_wait=0.0)
    assert last.degraded
    # 6 calls/s among 3 replicas: this one alone may make 2 per window, not 6.
    await last.budget.acquire(max_wait=0.0)
    with pytest.raises(RateBudgetExhausted):
        await last.budget.acquire(max_wait=0.1)

"""Fixtures for the Redis backend: a real redis-server (never skipped), namespaces, replicas.

One redis-server serves the whole session; every test gets its own namespace, so
tests never see each other's keys. A missing redis-server fails the run loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.redis.backend import RedisBackend, open_redis_backend
from tests.redis.processes import RedisServer

MakeBackend = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
def encryption_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def cache_settings(redis_server: RedisServer, encryption_key: bytes) -> CacheSettings:
    return CacheSettings(
        backend="redis",
        redis_url=redis_server.url,
        encryption_keys=(encryption_key,),
        namespace=f"t{uuid.uuid4().hex[:10]}",
        redis_timeout=1.0,
        lease_ttl=1.0,
    )


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client for looking at what the broker stored."""
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_backend(cache_settings: CacheSettings) -> AsyncIterator[MakeBackend]:
    """In-process replicas: each call opens one more backend on the same namespace."""
    opened: list[RedisBackend] = []

    async def make(
        settings: CacheSettings | None = None,
        *,
        rate: float = 1000.0,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> RedisBackend:
        backend = await open_redis_backend(
            settings or cache_settings,
            metrics or Metrics.create(CollectorRegistry()),
            rate=rate,
            refresh_margin=60.0,
            mint_timeout=5.0,
            tracing=tracing,
        )
        opened.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in opened:
            await backend.close()

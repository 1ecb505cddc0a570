"""The Redis connection and its health: bounded calls, degraded mode, the recovery probe.

Every call goes through ``RedisLink.call``, which bounds it by ``cache.redis_timeout``.
A failure of any kind (refused, reset, slow, read-only, auth) switches the link to
*degraded*: further calls fail at once with ``RedisUnavailable`` instead of each
paying the timeout, callers fall back to working alone, and a probe pings Redis
every second until it answers, then switches back and runs the recovery hooks.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.config.model import CacheSettings
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics

log = get_logger("broker.redis")

T = TypeVar("T")
PROBE_INTERVAL = 1.0
# Concurrent commands per process; a command takes well under a millisecond.
MAX_CONNECTIONS = 64
# What a failing Redis call can raise: redis-py's errors, socket errors that slip
# through it, and the timeout of our own bound.
REDIS_FAULTS = (RedisError, OSError, TimeoutError)


class RedisUnavailable(Exception):
    """Redis did not answer (or is known to be down): the caller works locally."""


async def stop_task(task: asyncio.Task[None] | None, *, within: float) -> None:
    """Cancel *task* and wait for it, but at most *within* seconds.

    On Python 3.11 ``asyncio.wait_for``, which redis-py uses to send, can swallow a
    cancellation that lands as the send completes. So our loops also check a stop
    flag, and stopping them waits a bounded time instead of trusting cancel alone.
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=within)


class RedisLink:
    """One client for the process, a namespace for its keys, and the degraded flag."""

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str,
        timeout: float,
        metrics: Metrics,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.client = client
        self.timeout = timeout
        # Names this process among the replicas (events, census); random per start.
        self.replica_id = secrets.token_hex(8)
        self._namespace = namespace
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._degraded = False
        self._closing = False
        self._probe: asyncio.Task[None] | None = None
        self._recovery_hooks: list[Callable[[], None]] = []

    @classmethod
    def connect(cls, settings: CacheSettings, metrics: Metrics) -> RedisLink:
        """A link for ``cache.redis_url`` (``rediss://`` for TLS, password in the URL)."""
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            # Bursts queue for a connection (within the call's bound) instead of
            # failing: redis-py's default pool raises past 100 connections in use.
            max_connections=MAX_CONNECTIONS,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            # No retries: a retry would multiply the bound, and the caller has a
            # local fallback that is better than waiting.
            retry=Retry(NoBackoff(), 0),
        )
        client = Redis.from_pool(pool)
        return cls(
            client, namespace=settings.namespace, timeout=settings.redis_timeout, metrics=metrics
        )

    @property
    def degraded(self) -> bool:
        return self._degraded

    def key(self, *parts: str) -> str:
        """A key name inside the namespace; parts are fixed words or validated IDs."""
        return ":".join((self._namespace, *parts))

    def on_recovery(self, hook: Callable[[], None]) -> None:
        self._recovery_hooks.append(hook)

    async def start(self) -> None:
        """Ping once; a Redis that is down leaves the link degraded, never raises."""
        try:
            await self.call(lambda redis: redis.ping())
        except RedisUnavailable:
            return

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        if self._degraded:
            raise RedisUnavailable("degraded")
        try:
            async with asyncio.timeout(self.timeout):
                return await operation(self.client)
        except REDIS_FAULTS as exc:
            self.report_failure(exc)
            raise RedisUnavailable(type(exc).__name__) from exc

    def report_failure(self, exc: BaseException) -> None:
        """Enter degraded mode (once per outage) and start probing for the way back."""
        if self._degraded or self._closing:
            return
        self._degraded = True
        self._metrics.redis_degraded.set(1)
        # The error class only: a message could carry the URL, which may hold a password.
        log.warning("redis_unavailable", error=type(exc).__name__, fallback="local")
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def close(self) -> None:
        self._closing = True
        await stop_task(self._probe, within=self._probe_interval + self.timeout)
        await self.client.aclose()

    async def _probe_until_back(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._probe_interval)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
                    # Idle pooled connections may still point at the Redis that went
                    # away, and redis-py does not notice until a command fails on one.
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            except REDIS_FAULTS:
                continue
            break
        if self._closing:
            return
        self._degraded = False
        self._metrics.redis_degraded.set(0)
        log.info("redis_recovered")
        for hook in self._recovery_hooks:
            hook()

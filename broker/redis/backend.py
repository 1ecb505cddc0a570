"""``[cache] backend = "redis"``: the one entry point that assembles the shared engine.

Keys, all under ``{namespace}:``, none holding a token in its name:

- ``checkout:{customer}:{invoice}``, ``partner``: sealed tokens, TTL within their life
- ``lease:{slot}``: who is minting that slot (a random owner value)
- ``budget:log``, ``budget:pause``: the cluster's partner-call reservations
- ``replicas``: heartbeats, to divide the rate among replicas while Redis is down
- ``revoked:{customer}``: the session cut-off time
- channel ``events``: stored / evicted / revoked notices

Nothing here raises because Redis is down: ``open_redis_backend`` starts degraded and
a probe brings the replica back to shared mode when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from broker.config.model import CacheSettings
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.redis.budget import RedisRateBudget
from broker.redis.census import ReplicaCensus
from broker.redis.coordinator import RedisCoordinator
from broker.redis.events import ClusterEvents
from broker.redis.leases import Leases
from broker.redis.link import RedisLink, RedisUnavailable
from broker.redis.partner import RedisPartnerShare
from broker.redis.sealing import Sealer
from broker.redis.sessions import SharedSessions
from broker.redis.shared import SharedTokens

DEGRADED_NOTE = "redis unavailable: serving from the in-process cache and minting locally"


class RedisBackend:
    """What the gateway plugs in: coordinator, budget, partner share, sessions, health."""

    def __init__(
        self,
        link: RedisLink,
        events: ClusterEvents,
        census: ReplicaCensus,
        *,
        coordinator: RedisCoordinator,
        budget: RedisRateBudget,
        partner_cache: RedisPartnerShare,
        sessions: SharedSessions,
    ) -> None:
        self._link = link
        self._events = events
        self._census = census
        self.coordinator = coordinator
        self.budget = budget
        self.partner_cache = partner_cache
        self.sessions = sessions

    @property
    def degraded(self) -> bool:
        return self._link.degraded

    @property
    def replicas(self) -> int:
        """Replicas counted in Redis (this one included), as last seen."""
        return self._census.replicas

    def health_note(self) -> str | None:
        """Why readiness should mention this replica's mode; it still serves (200)."""
        return DEGRADED_NOTE if self._link.degraded else None

    def on_eviction(self, callback: Callable[[str], object]) -> None:
        self.sessions.on_eviction(callback)

    async def publish_eviction(self, customer_id: str) -> None:
        await self.sessions.publish_eviction(customer_id)

    async def revoke_sessions(self, customer_id: str, before: float, until: float) -> None:
        await self.sessions.revoke_sessions(customer_id, before, until)

    async def revoked_before(self, customer_id: str) -> float | None:
        return await self.sessions.revoked_before(customer_id)

    async def close(self) -> None:
        await asyncio.gather(self._events.close(), self.budget.close(), self._census.close())
        await self._link.close()


async def open_redis_backend(
    settings: CacheSettings,
    metrics: Metrics,
    *,
    rate: float,
    refresh_margin: float = 60.0,
    mint_timeout: float = 30.0,
    tracing: Tracing | None = None,
) -> RedisBackend:
    """Connect (or start degraded); *mint_timeout* bounds one mint, waiting included."""
    sealer = Sealer(settings.encryption_keys)  # before connecting: a bad key leaks nothing
    link = RedisLink.connect(settings, metrics)
    metrics.redis_degraded.set(0)
    await link.start()
    events = ClusterEvents(link)
    census = ReplicaCensus(link)
    if not link.degraded:
        events.start()
        with contextlib.suppress(RedisUnavailable):
            await census.beat()  # the fallback share is right from the start
    census.start()
    shared = SharedTokens(link, sealer, Leases(link, settings.lease_ttl), events, tracing=tracing)
    # A waiter gives the lease holder its lease TTL (to notice a dead holder) plus one mint.
    wait_bound = settings.lease_ttl + mint_timeout
    coordinator = RedisCoordinator(shared, refresh_margin=refresh_margin, wait_bound=wait_bound)
    return RedisBackend(
        link,
        events,
        census,
        coordinator=coordinator,
        budget=RedisRateBudget(link, rate, census),
        partner_cache=RedisPartnerShare(shared, wait_bound=wait_bound),
        sessions=SharedSessions(link, events, coordinator),
    )

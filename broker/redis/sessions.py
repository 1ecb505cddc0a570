"""Revoked sessions and evicted customers, shared by every replica through Redis.

A revocation is a per-customer cut-off time in Redis with a TTL that ends when the
last session it refuses would have expired anyway; ``revoked_before`` reads it on
every check, so every replica refuses from the next request on. A local copy
(updated by this replica's own calls and by pub/sub) answers while Redis is down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from broker.credentials import valid_id
from broker.errors import ServiceUnavailable
from broker.observability.logs import get_logger
from broker.redis.coordinator import RedisCoordinator
from broker.redis.events import EVICTED, REVOKED, ClusterEvent, ClusterEvents
from broker.redis.link import RedisLink, RedisUnavailable

log = get_logger("broker.redis")

NOT_SHARED = "recorded on this replica only: redis unavailable"
RETRY_AFTER = 1.0

# KEYS: the customer's cut-off. ARGV: before (s), until (ms since the epoch).
# Both only ever grow: a later revocation never shortens an earlier one.
_REVOKE = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'NX')
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'GT')
return 0
"""


class SharedSessions:
    def __init__(
        self,
        link: RedisLink,
        events: ClusterEvents,
        coordinator: RedisCoordinator,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._events = events
        self._coordinator = coordinator
        self._clock = clock
        self._revoke = link.client.register_script(_REVOKE)
        self._revoked: dict[str, tuple[float, float]] = {}  # customer → (before, until)
        self._eviction_callbacks: list[Callable[[str], object]] = []
        events.subscribe(EVICTED, self._evicted)
        events.subscribe(REVOKED, self._revoked_elsewhere)

    def on_eviction(self, callback: Callable[[str], object]) -> None:
        self._eviction_callbacks.append(callback)

    async def publish_eviction(self, customer_id: str) -> None:
        """Drop the customer's checkout JWTs here, in Redis and on every replica.

        Applied here first; raises ``ServiceUnavailable`` if it could not be shared.
        """
        _check_id(customer_id)
        self._evict_here(customer_id)
        try:
            dropped = await self._coordinator.evict_customer(customer_id)
            await self._events.publish(EVICTED, customer_id)
        except RedisUnavailable as exc:
            log.warning("eviction_not_shared", customer_id=customer_id)
            raise ServiceUnavailable(NOT_SHARED, retry_after=RETRY_AFTER) from exc
        log.info("customer_evicted", customer_id=customer_id, shared_tokens=dropped)

    async def revoke_sessions(self, customer_id: str, before: float, until: float) -> None:
        """Refuse the customer's sessions issued before *before*, until *until*.

        Remembered here first; raises ``ServiceUnavailable`` if it could not be shared.
        """
        _check_id(customer_id)
        self._remember(customer_id, before, until)
        key = self._link.key("revoked", customer_id)
        args = [repr(before), str(math.ceil(until * 1000))]
        try:
            await self._link.call(lambda redis: self._revoke(keys=[key], args=args))
            await self._events.publish(REVOKED, customer_id, before=before, until=until)
        except RedisUnavailable as exc:
            # The operator gets a 503: these sessions are not yet refused everywhere.
            log.warning("revocation_not_shared", customer_id=customer_id)
            raise ServiceUnavailable(NOT_SHARED, retry_after=RETRY_AFTER) from exc
        log.info("sessions_revoked", customer_id=customer_id, before=before)

    async def revoked_before(self, customer_id: str) -> float | None:
        """The cut-off for the customer's sessions, or None; Redis first, else the copy."""
        local = self._local_cutoff(customer_id)
        key = self._link.key("revoked", customer_id)
        try:
            raw = await self._link.call(lambda redis: redis.get(key))
        except RedisUnavailable:
            return local
        if raw is None:
            return local
        try:
            shared = float(raw)
        except ValueError:
            log.warning("revocation_unreadable", customer_id=customer_id)
            return local
        return shared if local is None else max(shared, local)

    def _evict_here(self, customer_id: str) -> None:
        for callback in self._eviction_callbacks:
            callback(customer_id)

    def _evicted(self, event: ClusterEvent) -> None:
        if event.sender != self._events.sender and valid_id(event.subject):
            self._evict_here(event.subject)

    def _revoked_elsewhere(self, event: ClusterEvent) -> None:
        if valid_id(event.subject):
            self._remember(event.subject, event.before, event.until)

    def _remember(self, customer_id: str, before: float, until: float) -> None:
        now = self._clock()
        # Drop what has lapsed, so that the copy stays as small as the live revocations.
        for customer, (_, lapses) in list(self._revoked.items()):
            if lapses <= now:
                del self._revoked[customer]
        old_before, old_until = self._revoked.get(customer_id, (before, until))
        if until > now:
            self._revoked[customer_id] = (max(before, old_before), max(until, old_until))

    def _local_cutoff(self, customer_id: str) -> float | None:
        entry = self._revoked.get(customer_id)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]


def _check_id(customer_id: str) -> None:
    # Customer IDs become part of key names: only the validated alphabet gets there.
    if not valid_id(customer_id):
        raise ValueError("invalid customer id")

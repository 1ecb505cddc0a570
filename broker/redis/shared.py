"""Sealed tokens in Redis and the protocol by which one replica produces each of them.

``obtain`` is the whole protocol: adopt a stored token that is fresh enough; else
take the slot's lease, read again (another replica may have finished meanwhile),
produce the token here, store it and tell the others; replicas that lose the race
wait for that event (or poll) and adopt the result. Waiting is bounded by the lease
TTL plus one mint, after which a replica produces its own. Any Redis fault before
producing means: produce locally. A Redis fault after producing only skips sharing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from redis.asyncio import Redis

from broker.observability.logs import get_logger
from broker.observability.tracing import Span, Tracing, maybe_span
from broker.redis.events import STORED, ClusterEvents
from broker.redis.leases import COMPARE_AND_DELETE, Lease, Leases
from broker.redis.link import RedisLink, RedisUnavailable
from broker.redis.sealing import SealBroken, Sealer

log = get_logger("broker.redis")

T = TypeVar("T")
# A waiter re-checks this often even without an event (lost message, dead owner).
POLL_INTERVAL = 0.2
SCAN_BATCH = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class SharedToken:
    """What a replica stores for the others: the token and its wall-clock lifetime."""

    value: str = field(repr=False)
    expires_at: float
    obtained_at: float

    def encode(self) -> bytes:
        return json.dumps({"v": self.value, "e": self.expires_at, "o": self.obtained_at}).encode()

    @classmethod
    def decode(cls, data: bytes) -> SharedToken:
        try:
            fields = json.loads(data)
            return cls(str(fields["v"]), float(fields["e"]), float(fields["o"]))
        except (TypeError, KeyError) as exc:
            raise ValueError("not a shared token") from exc


class Codec(Protocol[T]):
    """How a caller's token type maps to and from what is shared."""

    def adopt(self, shared: SharedToken) -> T | None:
        """*shared* as the caller's value, or None when it is not fresh enough to use."""

    def share(self, value: T) -> SharedToken: ...


class SharedTokens:
    """Load, save and discard sealed tokens by slot name, and ``obtain`` them once."""

    def __init__(
        self,
        link: RedisLink,
        sealer: Sealer,
        leases: Leases,
        events: ClusterEvents,
        *,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
    ) -> None:
        self._link = link
        self._tracing = tracing
        self._sealer = sealer
        self._leases = leases
        self._events = events
        self._clock = clock
        self._compare_and_delete = link.client.register_script(COMPARE_AND_DELETE)

    async def obtain(
        self, slot: str, produce: Callable[[], Awaitable[T]], codec: Codec[T], *, wait_bound: float
    ) -> T:
        """A fresh token for *slot*: adopted, or produced here exactly once."""
        produced = False

        async def produce_once() -> T:
            nonlocal produced
            produced = True
            return await produce()

        try:
            return await self._obtain_shared(slot, produce_once, codec, wait_bound)
        except RedisUnavailable:
            if produced:
                raise  # the producer itself failed on Redis: producing again is no cure
            return await produce()

    async def load(self, slot: str) -> SharedToken | None:
        key = self._link.key(slot)
        blob = _as_bytes(await self._link.call(lambda redis: redis.get(key)))
        if blob is None:
            return None
        try:
            return SharedToken.decode(self._sealer.open(key, blob))
        except (SealBroken, ValueError) as exc:
            # Tampered, moved, or sealed with a key we no longer hold: treat as absent.
            log.warning("shared_token_unreadable", slot=slot, reason=str(exc))
            return None

    async def save(self, slot: str, token: SharedToken) -> bool:
        """Store *token* with a TTL that ends no later than the token itself."""
        ttl_ms = math.floor((token.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return False
        key = self._link.key(slot)
        blob = self._sealer.seal(key, token.encode())
        await self._link.call(lambda redis: redis.set(key, blob, px=ttl_ms))
        return True

    async def discard(self, slot: str, value: str | None = None) -> None:
        """Delete *slot* (only while it still holds *value*, if given)."""
        key = self._link.key(slot)
        blob = _as_bytes(await self._link.call(lambda redis: redis.get(key)))
        if blob is None:
            return
        if value is not None:
            with contextlib.suppress(SealBroken, ValueError):
                if SharedToken.decode(self._sealer.open(key, blob)).value != value:
                    return  # already replaced by a newer token: keep it
        # The comparison on the exact stored bytes makes check-then-delete atomic.
        await self._link.call(lambda redis: self._compare_and_delete(keys=[key], args=[blob]))

    async def slots_matching(self, pattern: str) -> AsyncIterator[str]:
        """Slot names matching *pattern* (a SCAN glob under the namespace)."""
        prefix = self._link.key("")
        match = _GLOB_SPECIAL.sub(r"\\\1", prefix) + pattern  # the namespace is literal
        cursor = 0
        while True:
            cursor, keys = await self._link.call(
                functools.partial(_scan, cursor=cursor, match=match)
            )
            for key in keys:
                yield key.decode()[len(prefix) :]
            if cursor == 0:
                return

    async def _obtain_shared(
        self, slot: str, produce: Callable[[], Awaitable[T]], codec: Codec[T], wait_bound: float
    ) -> T:
        adopted = await self._adopt(slot, codec)
        if adopted is not None:
            return adopted
        lease = await self._leases.acquire(slot)
        if lease is not None:
            return await self._produce_under(lease, slot, produce, codec)
        # Another replica holds the lease: wait for its result (a span of its own).
        with maybe_span(self._tracing, "broker.redis.lease_wait") as span:
            span.set("broker.redis.slot", slot.partition(":")[0])  # "checkout", "partner"
            return await self._wait_for_holder(slot, produce, codec, wait_bound, span)

    async def _wait_for_holder(
        self,
        slot: str,
        produce: Callable[[], Awaitable[T]],
        codec: Codec[T],
        wait_bound: float,
        span: Span,
    ) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            remaining = started + wait_bound - loop.time()
            if remaining <= 0:
                # The holder is alive (it keeps renewing) but slower than any mint
                # should be: stop waiting on it.
                log.warning("shared_wait_expired", slot=slot, waited_s=round(wait_bound, 1))
                span.set("broker.redis.lease_outcome", "wait_expired")
                return await produce()
            await self._events.wait_for(slot, min(POLL_INTERVAL, remaining))
            adopted = await self._adopt(slot, codec)
            if adopted is not None:
                span.set("broker.redis.lease_outcome", "adopted")
                return adopted
            lease = await self._leases.acquire(slot)
            if lease is not None:  # the holder died or gave up: ours now
                span.set("broker.redis.lease_outcome", "taken_over")
                return await self._produce_under(lease, slot, produce, codec)

    async def _produce_under(
        self, lease: Lease, slot: str, produce: Callable[[], Awaitable[T]], codec: Codec[T]
    ) -> T:
        try:
            adopted = await self._adopt(slot, codec)  # finished elsewhere meanwhile?
            if adopted is not None:
                return adopted
            async with lease.kept():
                value = await produce()
            with contextlib.suppress(RedisUnavailable):
                if await self.save(slot, codec.share(value)):
                    await self._events.publish(STORED, slot)
            return value
        finally:
            await lease.release()

    async def _adopt(self, slot: str, codec: Codec[T]) -> T | None:
        shared = await self.load(slot)
        return None if shared is None else codec.adopt(shared)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client never decodes responses; the str case exists only in redis-py's types.
    return value.encode() if isinstance(value, str) else value


async def _scan(redis: Redis, *, cursor: int, match: str) -> tuple[int, list[bytes]]:
    cursor, keys = await redis.scan(cursor, match=match, count=SCAN_BATCH)
    return cursor, [key.encode() if isinstance(key, str) else key for key in keys]

"""Cluster events on one pub/sub channel per namespace: stored, evicted, revoked.

Events name slots and customers, never tokens. They only make replicas react sooner:
a waiter that misses a ``stored`` event still finds the token by polling, and
revocations are read from Redis itself, so a lost message costs latency, not safety.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from redis.asyncio.client import PubSub

from broker.observability.logs import get_logger
from broker.redis.link import REDIS_FAULTS, RedisLink, stop_task

log = get_logger("broker.redis")

STORED = "stored"  # subject: a slot name; a waiting replica may adopt the token now
EVICTED = "evicted"  # subject: a customer ID; drop its checkout JWTs everywhere
REVOKED = "revoked"  # subject: a customer ID; sessions issued before `before` are refused
# How long one read of the subscription blocks before looping (and noticing a
# close); not a latency bound: messages wake the reader at once.
LISTEN_POLL = 0.5


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    kind: str
    subject: str
    sender: str
    before: float = 0.0
    until: float = 0.0

    @classmethod
    def parse(cls, data: bytes | str) -> ClusterEvent | None:
        try:
            fields = json.loads(data)
            return cls(
                kind=str(fields["kind"]),
                subject=str(fields["subject"]),
                sender=str(fields["sender"]),
                before=float(fields.get("before", 0.0)),
                until=float(fields.get("until", 0.0)),
            )
        except (ValueError, TypeError, KeyError):
            return None


Handler = Callable[[ClusterEvent], None]


class ClusterEvents:
    """Publishes events, listens for them, and wakes the local waiters of a slot."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._channel = link.key("events")
        # Tells this replica's own events apart from its peers'.
        self.sender = link.replica_id
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        link.on_recovery(self.start)

    def start(self) -> None:
        """Listen, unless already listening; a lost subscription restarts on recovery."""
        if self._closing:
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        """Stop listening; call before closing the link."""
        self._closing = True
        await stop_task(self._listener, within=LISTEN_POLL + self._link.timeout)

    def subscribe(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    async def publish(
        self, kind: str, subject: str, *, before: float = 0.0, until: float = 0.0
    ) -> None:
        """Tell every replica (this one too); raises ``RedisUnavailable``."""
        event = ClusterEvent(kind, subject, self.sender, before=before, until=until)
        message = json.dumps(asdict(event))
        await self._link.call(lambda redis: redis.publish(self._channel, message))

    async def wait_for(self, slot: str, seconds: float) -> None:
        """Return when *slot* is stored somewhere, or after *seconds*."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(slot, set())
        waiters.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await event.wait()
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(slot, None)

    def _dispatch(self, event: ClusterEvent) -> None:
        if event.kind == STORED:
            for waiter in self._waiters.get(event.subject, ()):
                waiter.set()
        for handler in self._handlers.get(event.kind, ()):
            handler(event)

    async def _listen(self) -> None:
        pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self._link.timeout):
                await pubsub.subscribe(self._channel)
            while not self._closing:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=LISTEN_POLL
                )
                if message is None or message.get("type") != "message":
                    continue
                event = ClusterEvent.parse(message["data"])
                if event is None:
                    log.warning("cluster_event_malformed")
                    continue
                self._dispatch(event)
        except REDIS_FAULTS as exc:
            self._link.report_failure(exc)
        finally:
            with contextlib.suppress(*REDIS_FAULTS):
                async with asyncio.timeout(self._link.timeout):
                    await _closer(pubsub)()


def _closer(pubsub: PubSub) -> Callable[[], Awaitable[None]]:
    # Typed here: redis-py up to 8.1 leaves PubSub.aclose unannotated, 8.2 annotates it,
    # so neither a bare call nor a type: ignore type-checks on both.
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    return close

"""Per-client rate limits: token buckets keyed by client IP or session, bounded in memory."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from typing import Final

from broker.bounded import trim_target, trimmed
from broker.config.model import IpNetwork
from broker.errors import TooManyRequests

# Keys beyond this are forgotten least-recently-used first; a forgotten key starts
# with a full bucket, which errs on the side of serving.
MAX_TRACKED_KEYS = 100_000
# How often keys whose bucket is full again are forgotten: such a key is the same as
# one never seen, and keeping it costs ~80 bytes per idle session. Each pass copies
# only the keys used since the last one: amortised O(1) per request.
FORGET_IDLE_EVERY: Final = 2.0


class TokenBuckets:
    """Token buckets as GCRA: one float per key (when its bucket is next full).

    A bucket of ``burst`` tokens refilled at ``rate`` per second is the same as a
    "theoretical arrival time" that each request pushes ``1/rate`` ahead, refused when
    it runs more than ``burst/rate`` ahead of now. One float instead of two per key.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_TRACKED_KEYS,
    ) -> None:
        self._interval = 1.0 / rate
        self._tolerance = burst * self._interval
        self._clock = clock
        self._arrival: dict[str | bytes, float] = {}  # in order of last use: oldest first
        self._bound = max_keys
        self._keep = trim_target(max_keys)
        self._forget_idle_at = clock() + FORGET_IDLE_EVERY

    def take(self, key: str | bytes) -> None:
        """Spend one token for *key*, or raise TooManyRequests with a Retry-After."""
        now = self._clock()
        arrival = max(self._arrival.pop(key, now), now) + self._interval
        excess = arrival - now - self._tolerance
        if excess > 0:
            self._arrival[key] = arrival - self._interval  # a refusal spends nothing
            raise TooManyRequests(
                "client rate limit reached", retry_after=max(1, math.ceil(excess))
            )
        self._arrival[key] = arrival
        if len(self._arrival) > self._bound or now >= self._forget_idle_at:
            self._forget_idle_at = now + FORGET_IDLE_EVERY
            self._arrival = trimmed(self._arrival, self._keep, lambda at: at > now)


def client_ip(peer: str | None, forwarded_for: list[str], trusted: tuple[IpNetwork, ...]) -> str:
    """The client's address: the TCP peer, unless it is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read right to left (the nearest
    hop first), skipping trusted addresses; the first other address is the client.
    Anything left of it could have been written by the client and is ignored.
    """
    current = peer or "unknown"
    if not trusted or not _is_trusted(current, trusted):
        return current
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return current  # garbage from here on: the last proxy is all we know
        current = str(address)
        if not _is_trusted(current, trusted):
            return current
    return current


def _is_trusted(address: str, trusted: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)

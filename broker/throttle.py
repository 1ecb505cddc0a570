"""Per-client rate limits: token buckets keyed by client IP or session, bounded in memory."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from cachetools import LRUCache

from broker.errors import TooManyRequests
from broker.settings import IpNetwork

# Keys beyond this are forgotten least-recently-used first; a forgotten key starts
# with a full bucket, which errs on the side of serving.
MAX_TRACKED_KEYS = 100_000


class TokenBuckets:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        # key -> [tokens, last refill time]
        self._buckets: LRUCache[str, list[float]] = LRUCache(maxsize=MAX_TRACKED_KEYS)

    def take(self, key: str) -> None:
        """Spend one token for *key*, or raise TooManyRequests with a Retry-After."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self._burst - 1.0, now]
            return
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            wait = (1.0 - tokens) / self._rate
            raise TooManyRequests(f"rate limit for {key[:2]}…", retry_after=max(1, math.ceil(wait)))
        bucket[0] = tokens - 1.0


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

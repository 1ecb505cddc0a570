"""Session revocation by customer: sessions issued before a moment stop working."""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TLRUCache

MAX_REVOKED_CUSTOMERS = 100_000


class Revocations:
    """``customer_id -> revoked_before``, kept only while such sessions could live."""

    def __init__(self, session_ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._session_ttl = session_ttl
        self._clock = clock
        self._revoked: TLRUCache[str, float] = TLRUCache(
            maxsize=MAX_REVOKED_CUSTOMERS,
            # A session issued before `before` expires by `before + ttl` at the latest.
            ttu=lambda _customer, before, _now: before + session_ttl,
            timer=clock,
        )

    def revoke(self, customer_id: str, before: float | None = None) -> float:
        before = self._clock() if before is None else before
        self._revoked[customer_id] = max(before, self._revoked.get(customer_id, 0.0))
        return before

    def revoked(self, customer_id: str, issued_at: float) -> bool:
        if not self._revoked:
            return False  # the usual case, on every request: skip the cache's bookkeeping
        before = self._revoked.get(customer_id)
        return before is not None and issued_at <= before

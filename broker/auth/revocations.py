"""Session revocation by customer: sessions issued before a moment stop working."""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.bounded import trimmed

MAX_REVOKED_CUSTOMERS = 100_000


class Revocations:
    """``customer_id -> revoked_before``, kept only while such sessions could live.

    A plain dict rather than a TTL cache: it is read on every request and written
    only by the admin API, and a TTL cache pays its expiry bookkeeping on each read.
    """

    def __init__(
        self,
        session_ttl: float,
        clock: Callable[[], float] = time.time,
        max_customers: int = MAX_REVOKED_CUSTOMERS,
    ) -> None:
        self._session_ttl = session_ttl
        self._clock = clock
        self._max_customers = max_customers
        self._revoked: dict[str, float] = {}  # oldest revocation first

    def revoke(self, customer_id: str, before: float | None = None) -> float:
        before = self._clock() if before is None else before
        latest = max(before, self._revoked.pop(customer_id, 0.0))
        if len(self._revoked) >= self._max_customers:
            # Full: the expired go, then (full of live ones) the oldest, as an LRU would.
            cutoff = self._clock() - self._session_ttl
            self._revoked = trimmed(
                self._revoked, self._max_customers - 1, lambda revoked: revoked > cutoff
            )
        self._revoked[customer_id] = latest
        return before

    @property
    def session_ttl(self) -> float:
        """How long after a revocation a session it refused may still be presented."""
        return self._session_ttl

    def lengthen(self, session_ttl: float) -> None:
        """A reload changed how long sessions live (``ttl + leeway``). Never shorter:
        sessions issued before a reload that shortened it keep their own ``exp``, and
        one revoked must stay refused for as long as it could be presented."""
        self._session_ttl = max(self._session_ttl, session_ttl)

    def empty(self) -> bool:
        """Whether no customer is revoked (the usual case): nothing to look up."""
        return not self._revoked

    def revoked(self, customer_id: str, issued_at: float) -> bool:
        if not self._revoked:
            return False  # the usual case
        before = self._revoked.get(customer_id)
        if before is None:
            return False
        # A session issued before `before` is expired by `before + ttl` anyway.
        if before + self._session_ttl <= self._clock():
            del self._revoked[customer_id]
            return False
        return issued_at <= before

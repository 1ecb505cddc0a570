"""Where checkout JWTs are kept: a bounded per-process cache behind a small protocol.

``CheckoutTokens`` talks only to ``TokenStore``, so a shared store (Redis, fronted by
this in-process one) slots in without touching the proxy or the minting logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

from broker.bounded import trim_target, trimmed
from broker.credentials import CheckoutToken, TokenKey, customer_of


class TokenStore(Protocol):
    def get(self, key: TokenKey) -> CheckoutToken | None: ...

    def put(self, key: TokenKey, token: CheckoutToken) -> None: ...

    def discard(self, key: TokenKey, token: CheckoutToken | None = None) -> bool:
        """Remove *key*; with *token*, only while that exact token is still cached."""

    def keys_of_customer(self, customer_id: str) -> list[TokenKey]: ...

    def items(self) -> Iterator[tuple[TokenKey, CheckoutToken]]: ...

    def __len__(self) -> int: ...


class MemoryTokenStore:
    """A bounded per-process cache: a plain dict kept in insertion order.

    Expired entries are dropped when looked up, and the refresh scheduler looks up
    every key when its token expires, so nothing scans the dict for them. Past
    ``max_entries`` the expired and then the oldest go, a slice at a time (see
    ``bounded.trimmed``). A dict entry costs a fraction of a TTL cache's heap and links.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[TokenKey, CheckoutToken] = {}
        self._max_entries = max_entries
        self._keep = trim_target(max_entries)
        self._clock = clock

    def get(self, key: TokenKey) -> CheckoutToken | None:
        token = self._entries.get(key)
        if token is not None and self._clock() >= token.forward_until:
            del self._entries[key]
            return None
        return token

    def put(self, key: TokenKey, token: CheckoutToken) -> None:
        self._entries.pop(key, None)  # re-inserted at the back: newest last
        self._entries[key] = token
        if len(self._entries) > self._max_entries:
            now = self._clock()
            self._entries = trimmed(self._entries, self._keep, lambda t: now < t.forward_until)

    def discard(self, key: TokenKey, token: CheckoutToken | None = None) -> bool:
        current = self._entries.get(key)
        if current is None or (token is not None and current is not token):
            return False
        del self._entries[key]
        return True

    def keys_of_customer(self, customer_id: str) -> list[TokenKey]:
        return [key for key in list(self._entries) if customer_of(key) == customer_id]

    def items(self) -> Iterator[tuple[TokenKey, CheckoutToken]]:
        now = self._clock()
        return iter([(k, t) for k, t in list(self._entries.items()) if now < t.forward_until])

    def __len__(self) -> int:
        return len(self._entries)

"""Where checkout JWTs are kept: a bounded per-process cache behind a small protocol.

``CheckoutTokens`` talks only to ``TokenStore``, so a shared store (Redis, fronted by
this in-process one) slots in without touching the proxy or the minting logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

from cachetools import TLRUCache

from broker.credentials import CheckoutToken, TokenKey


class TokenStore(Protocol):
    def get(self, key: TokenKey) -> CheckoutToken | None: ...

    def put(self, key: TokenKey, token: CheckoutToken) -> None: ...

    def discard(self, key: TokenKey, token: CheckoutToken | None = None) -> bool:
        """Remove *key*; with *token*, only while that exact token is still cached."""

    def keys_of_customer(self, customer_id: str) -> list[TokenKey]: ...

    def items(self) -> Iterator[tuple[TokenKey, CheckoutToken]]: ...

    def __len__(self) -> int: ...


def _expires(_key: TokenKey, token: CheckoutToken, _now: float) -> float:
    # Entries leave the cache once they may no longer be forwarded.
    return token.forward_until


class MemoryTokenStore:
    """A bounded cache with per-entry expiry (LRU eviction past ``max_entries``)."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._cache: TLRUCache[TokenKey, CheckoutToken] = TLRUCache(
            maxsize=max_entries, ttu=_expires, timer=clock
        )

    def get(self, key: TokenKey) -> CheckoutToken | None:
        return self._cache.get(key)

    def put(self, key: TokenKey, token: CheckoutToken) -> None:
        self._cache[key] = token

    def discard(self, key: TokenKey, token: CheckoutToken | None = None) -> bool:
        current = self._cache.get(key)
        if current is None or (token is not None and current is not token):
            return False
        del self._cache[key]
        return True

    def keys_of_customer(self, customer_id: str) -> list[TokenKey]:
        return [key for key in list(self._cache.keys()) if key.customer_id == customer_id]

    def items(self) -> Iterator[tuple[TokenKey, CheckoutToken]]:
        return iter(list(self._cache.items()))

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

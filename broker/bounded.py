"""Trimming the insertion-ordered dicts that serve as the broker's bounded caches."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ABSENT: Final = object()  # what Memo's dict.get answers for a key it has not remembered


def trim_target(bound: int) -> int:
    """How many entries a cache past its bound keeps: a little fewer than the bound, so
    that trims stay amortised O(1); never none, so the newest entry always stays."""
    return max(1, bound - max(1, bound // 64))


def trimmed(entries: dict[K, V], keep: int, live: Callable[[V], bool]) -> dict[K, V]:
    """The newest *keep* entries for which *live* holds, as a new dict, oldest first.

    Rebuilt in one pass rather than deleted from the front: each deleted front entry
    leaves a hole that every later ``next(iter(entries))`` walks again, which turns
    one-at-a-time eviction quadratic at a million keys.
    """
    kept = [(key, value) for key, value in entries.items() if live(value)]
    return dict(kept[-keep:] if len(kept) > keep else kept) if keep > 0 else {}


class Memo(Generic[K, V]):
    """``compute(key)``, remembered for the first *size* distinct keys and computed
    afresh for any key past those, so a caller sending endless new keys costs time,
    never memory. For the few names that repeat on every request: an ``lru_cache``
    call costs several dict lookups' worth of bookkeeping. An exception is never
    remembered: that key is judged (and refused) every time. *keep*, when given,
    decides which keys may be remembered at all (say, only short ones: callers
    choose them); it runs only when a key is computed, never on a hit."""

    def __init__(
        self, compute: Callable[[K], V], size: int, keep: Callable[[K], bool] | None = None
    ) -> None:
        self._compute = compute
        self._size = size
        self._keep = keep
        self._values: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        found = self._values.get(key, _ABSENT)  # one lookup: a tuple key hashes afresh
        if found is not _ABSENT:
            return cast(V, found)
        value = self._compute(key)
        if len(self._values) < self._size and (self._keep is None or self._keep(key)):
            self._values[key] = value
        return value

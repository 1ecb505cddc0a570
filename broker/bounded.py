"""The broker's bounded caches: trimming insertion-ordered dicts, and ``memo``, the one
way the request path remembers a judgement (a field name's verdict, a target's)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ABSENT: Final = object()  # what Memo's dict.get answers for a key it has not remembered
# Whether this module (and so the request path, compiled with it) runs compiled.
_COMPILED: Final = not __file__.endswith(".py")


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


def memo(
    compute: Callable[[K], V], size: int, keep: Callable[[K], bool] | None = None
) -> Memo[K, V]:
    """*compute*, remembered for at most *size* keys (and only those *keep* accepts):
    the fastest bounded memo of the build that runs, with the same answers on both.
    Compiled, that is ``Memo``, whose hit is a native call and one dict lookup. On
    plain Python, a Python method call costs more than the lookup it guards, so there
    it is the ``__getitem__`` of a dict whose ``__missing__`` computes: a hit runs in
    C alone, and Python code runs only for a key not remembered."""
    if _COMPILED:
        return Memo(compute, size, keep)
    return cast("Memo[K, V]", _remembering_dict(compute, size, keep).__getitem__)


def _remembering_dict(
    compute: Callable[[K], V], size: int, keep: Callable[[K], bool] | None
) -> dict[K, V]:
    def missing(values: dict[K, V], key: K) -> V:
        value = compute(key)  # an exception leaves nothing behind
        if len(values) < size and (keep is None or keep(key)):
            values[key] = value
        return value

    # Made with type(), not a class statement: mypyc compiles no subclass of dict, and
    # only plain Python uses this one.
    remembering = type("RememberingDict", (dict,), {"__slots__": (), "__missing__": missing})
    values: dict[K, V] = remembering()
    return values

"""SlidingWindowLimiter: at most N admitted calls per client in any trailing second."""

from __future__ import annotations

from collections import deque


class SlidingWindowLimiter:
    """A sliding log, not fixed buckets: a burst straddling a second boundary is caught.

    Only admitted calls enter the log, so the guarantee is the vendor's ("no more
    than N per second get through") and a client that backs off is served again
    as soon as its oldest admitted call leaves the window.
    """

    def __init__(self, per_second: float | None, *, window: float = 1.0) -> None:
        self._limit = per_second
        self._window = window
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> float | None:
        """None if the call may proceed; otherwise seconds until a slot frees."""
        if self._limit is None:
            return None
        log = self._admitted.setdefault(key, deque())
        while log and log[0] <= now - self._window:
            log.popleft()
        if len(log) + 1 > self._limit:
            return log[0] + self._window - now
        log.append(now)
        return None

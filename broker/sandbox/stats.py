"""Stats: the counters ``GET /_sandbox/stats`` reports, and the peak mint rate."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

MINT_TIMES_KEPT = 10_000
_WINDOW = 1.0


@dataclass(slots=True)
class Stats:
    oauth_tokens_issued: int = 0
    tokens_issued: int = 0
    mints_per_key: Counter[str] = field(default_factory=Counter)
    mint_times: deque[float] = field(default_factory=lambda: deque(maxlen=MINT_TIMES_KEPT))
    max_mints_in_any_second: int = 0
    requests_per_path: Counter[str] = field(default_factory=Counter)
    unauthorized_served: int = 0
    expired_tokens_seen: int = 0
    rate_limited_served: int = 0
    ownership_checks: int = 0
    # Monotonic times of the mints in the trailing second, for the peak above.
    _recent_mints: deque[float] = field(default_factory=deque)

    def record_mint(
        self, customer_id: str, invoice_id: str, *, wall: float, monotonic: float
    ) -> None:
        self.tokens_issued += 1
        self.mints_per_key[f"{customer_id}/{invoice_id}"] += 1
        self.mint_times.append(wall)
        # Every window that holds a maximum ends at some mint, so checking the
        # window ending at each mint finds the peak.
        recent = self._recent_mints
        recent.append(monotonic)
        while recent[0] <= monotonic - _WINDOW:
            recent.popleft()
        self.max_mints_in_any_second = max(self.max_mints_in_any_second, len(recent))

    def record_request(self, method: str, path: str) -> None:
        self.requests_per_path[f"{method} {path}"] += 1

    def record_status(self, status: int) -> None:
        if status == 401:
            self.unauthorized_served += 1
        elif status == 429:
            self.rate_limited_served += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "oauth_tokens_issued": self.oauth_tokens_issued,
            "tokens_issued": self.tokens_issued,
            "mints_per_key": dict(self.mints_per_key),
            "mint_times": list(self.mint_times),
            "max_mints_in_any_second": self.max_mints_in_any_second,
            "requests_per_path": dict(self.requests_per_path),
            "unauthorized_served": self.unauthorized_served,
            "expired_tokens_seen": self.expired_tokens_seen,
            "rate_limited_served": self.rate_limited_served,
            "ownership_checks": self.ownership_checks,
        }

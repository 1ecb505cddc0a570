"""SandboxSettings: how one sandbox upstream behaves (credentials, lifetimes, limits)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

# pyjwt warns (and our tests turn warnings into errors) below the HS256 key size.
MIN_SIGNING_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSettings:
    """Everything that varies between sandbox instances; the demo defaults work as-is.

    ``rate_limit_per_second`` applies to partner-credentialed calls (OAuth, mints,
    partner GETs) per client_id over a sliding window of ``rate_limit_window`` seconds
    (the vendor's is one second); ``None`` means unlimited. A shorter window tolerates
    that much jitter in when a well-paced client's calls arrive, which a test of such a
    client on a loaded machine needs. ``synthesize_unknown`` lets a mint for an unknown
    customer or invoice create it, so load tests can use any number of distinct keys.
    """

    client_id: str = "sandbox-client"
    client_secret: str = field(default="sandbox-secret", repr=False)
    partner_id: str = "partner_sandbox"
    token_ttl: float = 300.0
    oauth_ttl: int = 3600
    rate_limit_per_second: float | None = None
    rate_limit_window: float = 1.0
    synthesize_unknown: bool = True
    signing_secret: bytes = field(
        default_factory=lambda: secrets.token_bytes(MIN_SIGNING_SECRET_BYTES),
        repr=False,
    )

    def __post_init__(self) -> None:
        problems = []
        if not self.client_id:
            problems.append("client_id: must not be empty")
        if self.token_ttl <= 0:
            problems.append("token_ttl: must be positive")
        if self.oauth_ttl <= 0:
            problems.append("oauth_ttl: must be positive")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second < 1:
            problems.append("rate_limit_per_second: must be at least 1")
        if not 0 < self.rate_limit_window <= 1:
            problems.append("rate_limit_window: must be more than 0 and at most 1 second")
        if len(self.signing_secret) < MIN_SIGNING_SECRET_BYTES:
            problems.append(f"signing_secret: needs at least {MIN_SIGNING_SECRET_BYTES} bytes")
        if problems:
            raise ValueError("; ".join(problems))

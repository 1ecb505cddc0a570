"""Upstream credentials as values: the checkout JWT, its key, lifetime rules and fingerprint."""

from __future__ import annotations

import hashlib
import re
from typing import Final, NewType

import jwt

# The share of a token's lifetime kept as a margin before expiry, at most (the README's
# `tokens.refresh_margin`): a 3-second token keeps most of its life, a 1-hour token is
# renewed a minute early.
MARGIN_SHARE = 0.2
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


# What one checkout JWT is scoped to: "customer_id/invoice_id", one string. A key is
# kept per cached token, per scheduled renewal and per cached session (up to a hundred
# thousand and more of each), where a (customer_id, invoice_id) tuple took a tuple and
# two strings. IDs match ID_PATTERN, which has no '/', and ``token_key`` refuses one, so
# the join is injective and the first '/' always splits it back.
TokenKey = NewType("TokenKey", str)
KEY_SEPARATOR: Final = "/"


def token_key(customer_id: str, invoice_id: str) -> TokenKey:
    """The key of (*customer_id*, *invoice_id*); ValueError if either holds a '/'."""
    if KEY_SEPARATOR in customer_id or KEY_SEPARATOR in invoice_id:
        raise ValueError("an id in a token key must not contain '/'")
    return TokenKey(customer_id + KEY_SEPARATOR + invoice_id)


def key_ids(key: TokenKey) -> tuple[str, str]:
    """(customer_id, invoice_id) of *key*."""
    customer_id, _, invoice_id = key.partition(KEY_SEPARATOR)
    return customer_id, invoice_id


def customer_of(key: TokenKey) -> str:
    """The customer_id of *key* (up to its '/': "cus_1/…" is never "cus_10"'s)."""
    return key.partition(KEY_SEPARATOR)[0]


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token: safe for logs, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def margin_for(lifetime: float, refresh_margin: float) -> float:
    return min(refresh_margin, max(lifetime, 0.0) * MARGIN_SHARE)


# CheckoutToken.state: minted for waiting requests, or ahead of need and not served
# yet (its first lookup counts as "refreshed_ahead"); then served from the cache.
FRESH: Final = 0
FRESH_AHEAD: Final = 1
IN_USE: Final = 2


class CheckoutToken:
    """A checkout JWT and the times that govern its use.

    ``forward_until`` is the last moment it may be sent upstream; ``refresh_at`` is
    when a key still in use gets a new token in the background.

    One per cached key, so a plain class rather than a dataclass: compiled, mypyc
    lays a dataclass out 8 bytes larger (88, a 96-byte allocation, against 80). Its
    repr never shows the token. Compared by identity (the store discards "this exact
    token").
    """

    __slots__ = ("expires_at", "forward_until", "refresh_at", "state", "value")

    def __init__(
        self,
        value: str,
        expires_at: float,
        forward_until: float,
        refresh_at: float,
        state: int = FRESH,
    ) -> None:
        self.value = value
        self.expires_at = expires_at
        self.forward_until = forward_until
        self.refresh_at = refresh_at
        # Where it is in its life (one small int rather than three flags). There may be
        # a million of these: every field and float is counted (the time it was obtained
        # only shapes the margins, in ``create``; its age is the JWT's ``iat``).
        self.state = state

    def __repr__(self) -> str:
        return (
            f"CheckoutToken(expires_at={self.expires_at!r}, forward_until={self.forward_until!r},"
            f" refresh_at={self.refresh_at!r}, state={self.state!r})"
        )

    @property
    def refreshed_ahead(self) -> bool:
        return self.state == FRESH_AHEAD

    @property
    def in_use(self) -> bool:
        """Served from the cache after the request(s) that waited for its mint: the
        key is in use, and gets a new token ahead of expiry."""
        return self.state == IN_USE

    @classmethod
    def create(
        cls,
        value: str,
        *,
        expires_at: float,
        now: float,
        refresh_margin: float,
        jitter: float = 0.0,
        refreshed_ahead: bool = False,
    ) -> CheckoutToken:
        """Derive the forwarding deadline and refresh point; ``jitter`` is in [0, 1)."""
        lifetime = expires_at - now
        margin = margin_for(lifetime, refresh_margin)
        forward_until = expires_at - margin
        # Start renewing a little before the deadline (up to another margin, jittered
        # so that keys minted together do not all renew in the same instant).
        refresh_at = forward_until - margin * (0.5 + 0.5 * jitter)
        return cls(
            value=value,
            expires_at=expires_at,
            forward_until=forward_until,
            refresh_at=max(refresh_at, now),
            state=FRESH_AHEAD if refreshed_ahead else FRESH,
        )

    def forwardable(self, now: float) -> bool:
        return now < self.forward_until


def unverified_claims(token: str) -> dict[str, object] | None:
    """The JWT's claims without verifying the signature, or None for an opaque token.

    The broker cannot verify the vendor's signature (it holds no key); the claims are
    only used to tighten expiry and to catch a token minted for the wrong key.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


def effective_expiry(token: str, expires_at: float) -> tuple[float, dict[str, object] | None]:
    """The earlier of ``expires_at`` and the JWT's own ``exp``, and the claims."""
    claims = unverified_claims(token)
    if claims is not None:
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = min(expires_at, float(exp))
    return expires_at, claims

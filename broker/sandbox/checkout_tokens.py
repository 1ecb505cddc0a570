"""CheckoutTokens: mint and verify the HS256 checkout JWTs, and upstream-side revocation."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeGuard

import jwt

_ALGORITHM = "HS256"
_CLAIMS = ("partner_id", "client_id", "customer_id", "invoice_id", "iat", "exp", "jti")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutGrant:
    """What a verified checkout JWT allows: one customer's one invoice, until expiry."""

    customer_id: str
    invoice_id: str
    issued_at: float
    expires_at: float
    jti: str


class Rejection(StrEnum):
    MALFORMED = "malformed"  # not a JWT, bad signature, missing or mistyped claims
    FOREIGN = "foreign"  # genuine signature, but another partner or client
    EXPIRED = "expired"
    REVOKED = "revoked"


class TokenRejected(Exception):
    def __init__(self, reason: Rejection) -> None:
        super().__init__(reason.value)
        self.reason = reason


class CheckoutTokens:
    """Times are unix seconds (``time.time()``), the clock JWT claims are written in."""

    def __init__(self, *, secret: bytes, partner_id: str, client_ids: set[str], ttl: float) -> None:
        self._secret = secret
        self._partner_id = partner_id
        # The partner's clients, as PartnerCredentials keeps them (shared, not copied).
        self._client_ids = client_ids
        self._ttl = ttl
        self._revoked_before: dict[tuple[str, str], float] = {}

    def mint(
        self, customer_id: str, invoice_id: str, now: float, client_id: str
    ) -> tuple[str, CheckoutGrant]:
        # exp stays fractional (RFC 7519 NumericDate allows it): rounding to whole
        # seconds would either outlive the TTL or cost a short token up to a second.
        grant = CheckoutGrant(
            customer_id=customer_id,
            invoice_id=invoice_id,
            issued_at=now,
            expires_at=now + self._ttl,
            jti=secrets.token_hex(16),
        )
        claims = {
            "partner_id": self._partner_id,
            "client_id": client_id,
            "customer_id": customer_id,
            "invoice_id": invoice_id,
            "iat": grant.issued_at,
            "exp": grant.expires_at,
            "jti": grant.jti,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), grant

    def verify(self, token: str, now: float) -> CheckoutGrant:
        """The grant *token* carries, or raise TokenRejected saying why not."""
        try:
            # Expiry is checked below, precisely: pyjwt truncates a fractional exp.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": list(_CLAIMS), "verify_exp": False},
            )
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(Rejection.MALFORMED) from exc
        grant = _grant(claims)
        if claims["partner_id"] != self._partner_id or claims["client_id"] not in self._client_ids:
            raise TokenRejected(Rejection.FOREIGN)
        if grant.expires_at <= now:
            raise TokenRejected(Rejection.EXPIRED)
        key = (grant.customer_id, grant.invoice_id)
        if grant.issued_at <= self._revoked_before.get(key, -math.inf):
            raise TokenRejected(Rejection.REVOKED)
        return grant

    def revoke(self, customer_id: str, invoice_id: str, now: float) -> None:
        """Reject every token for this key issued up to *now*; later mints still work."""
        self._revoked_before[(customer_id, invoice_id)] = now


def _grant(claims: Mapping[str, object]) -> CheckoutGrant:
    customer_id, invoice_id, jti = (
        claims["customer_id"],
        claims["invoice_id"],
        claims["jti"],
    )
    issued_at, expires_at = claims["iat"], claims["exp"]
    if not (
        isinstance(customer_id, str)
        and isinstance(invoice_id, str)
        and isinstance(jti, str)
        and _is_number(issued_at)
        and _is_number(expires_at)
    ):
        raise TokenRejected(Rejection.MALFORMED)
    return CheckoutGrant(
        customer_id=customer_id,
        invoice_id=invoice_id,
        issued_at=float(issued_at),
        expires_at=float(expires_at),
        jti=jti,
    )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)

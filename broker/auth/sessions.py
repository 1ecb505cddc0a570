"""Broker session tokens: issued to the partner backend, verified on every proxied call.

A session token is an ES256 JWT that the broker signs (``kid`` in the header); the
algorithm is pinned, never read from the token. Verified claims are cached by the
token's digest until the token expires, so a hot session costs one hash, not one
signature check, per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from broker.bounded import trim_target, trimmed
from broker.config.model import SessionSettings
from broker.credentials import TokenKey, key_ids, token_key, valid_id
from broker.errors import Unauthenticated

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti", "customer_id", "invoice_id")
# The partner account a session belongs to; a token without it (issued before partners
# existed) belongs to the single account, "default".
PARTNER_CLAIM: Final = "partner"
DEFAULT_PARTNER: Final = "default"
# A session token is ~500 bytes; anything far larger is not ours and not worth parsing.
MAX_TOKEN_LENGTH: Final = 4096
VERIFIED_CACHE_SIZE = 100_000


class Session:
    """A verified session: only what requests need, since up to VERIFIED_CACHE_SIZE of
    these stay cached (the claims ``jti`` and ``client_id`` are checked, not kept).

    A plain class rather than a frozen dataclass: compiled, mypyc lays a dataclass out
    8 bytes larger (88, a 96-byte allocation, against 80). ``Final`` keeps it read-only
    (mypy checks it; compiled, so does the runtime)."""

    __slots__ = ("digest", "expires_at", "issued_at", "key", "partner")

    def __init__(
        self, key: TokenKey, partner: str, digest: bytes, issued_at: float, expires_at: float
    ) -> None:
        self.key: Final = key
        self.partner: Final = partner
        # The verified-cache key (BLAKE2b of the token): also names the session for the
        # per-session rate limit, one token one bucket, without keeping the jti string.
        self.digest: Final = digest
        self.issued_at: Final = issued_at
        self.expires_at: Final = expires_at

    def __repr__(self) -> str:
        return (
            f"Session(key={self.key!r}, partner={self.partner!r},"
            f" issued_at={self.issued_at!r}, expires_at={self.expires_at!r})"
        )


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str = field(repr=False)
    expires_at: int


class AuthFailure(Unauthenticated):
    """An ``Unauthenticated`` that names its reason (the auth-failure metric's label, and
    the request_finished line's ``reason``); *key* is the session's, when it was valid
    but is refused (revoked), so that the line says whose it was."""

    def __init__(self, reason: str, key: TokenKey | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


# Most specific first: InvalidSignatureError is a DecodeError.
_INVALID_TOKEN_REASONS: Final = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.DecodeError, "malformed"),
)


def invalid_token_reason(error: jwt.InvalidTokenError) -> str:
    """Why PyJWT refused a token, as an AuthFailure reason (a small fixed vocabulary:
    it labels a metric)."""
    for kind, reason in _INVALID_TOKEN_REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid"


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: stable, derived from the key, no bookkeeping."""
    jwk = _public_jwk_fields(public_key)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


# Keys a reload dropped from the configuration, by kid: (key, verified until when).
Retired = Mapping[str, tuple[ec.EllipticCurvePublicKey, float]]


class SessionAuthority:
    """Issues and verifies session tokens; the first key signs, all keys verify.

    *retired*: keys an earlier configuration held and this one does not (a reload that
    rotated the signing key): they keep verifying, and stay in the JWKS, until sessions
    they signed have expired, so that a rotation never logs anyone out.
    """

    def __init__(
        self,
        settings: SessionSettings,
        clock: Callable[[], float] = time.time,
        max_verified: int = VERIFIED_CACHE_SIZE,
        retired: Retired | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._signing_key = settings.signing_key
        self._signing_kid = key_id(settings.signing_key.public_key())
        public_keys = [settings.signing_key.public_key(), *settings.verify_keys]
        self._verify_keys = {key_id(key): key for key in public_keys}
        now = clock()
        self._retired_until = {
            kid: until
            for kid, (key, until) in (retired or {}).items()
            if kid not in self._verify_keys and now < until
        }
        for kid in self._retired_until:
            self._verify_keys[kid] = (retired or {})[kid][0]
        # Verified claims by token digest, oldest first (sessions live alike, so that is
        # also soonest-expiring first); expiry is checked on every hit.
        self._verified: dict[bytes, Session] = {}
        self._verified_bound = max_verified

    def issue(self, key: TokenKey, partner: str, client_id: str) -> IssuedSession:
        # Millisecond iat: a revocation "before now" must not catch a session issued
        # in the same second just after it.
        now = round(self._clock(), 3)
        expires_at = int(now) + self._settings.ttl
        customer_id, invoice_id = key_ids(key)
        claims = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "sub": customer_id,
            "customer_id": customer_id,
            "invoice_id": invoice_id,
            "client_id": client_id,
            "iat": now,
            "exp": expires_at,
            "jti": secrets.token_urlsafe(16),
        }
        if partner != DEFAULT_PARTNER:  # the single account's tokens stay as they were
            claims[PARTNER_CLAIM] = partner
        token = jwt.encode(
            claims, self._signing_key, algorithm=ALGORITHM, headers={"kid": self._signing_kid}
        )
        return IssuedSession(token=token, expires_at=expires_at)

    def verify(self, token: str) -> Session:
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthFailure("token_too_long")
        # 120 bits of BLAKE2b: no collision at any cache size (birthday bound 2^60), and
        # a 15-byte bytes object takes a 48-byte allocation where 16 bytes take 64.
        digest = hashlib.blake2b(token.encode(), digest_size=15).digest()
        session = self._verified.get(digest)
        if session is not None:
            if self._clock() < session.expires_at + self._settings.leeway:
                return session
            del self._verified[digest]
        session = self._verify_signature(token, digest)
        self._verified[digest] = session
        if len(self._verified) > self._verified_bound:
            now, leeway = self._clock(), self._settings.leeway
            keep = trim_target(self._verified_bound)
            self._verified = trimmed(self._verified, keep, lambda s: now < s.expires_at + leeway)
        return session

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        keys = []
        for kid, key in self._verify_keys.items():
            if self._retired(kid):
                continue
            keys.append({**_public_jwk_fields(key), "kid": kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": keys}

    def retiring(self, until: float) -> dict[str, tuple[ec.EllipticCurvePublicKey, float]]:
        """Every key that verifies now, to be kept until *until* by the authority a
        reload makes (those it keeps configured it verifies anyway)."""
        kept = {kid: (key, until) for kid, key in self._verify_keys.items()}
        for kid, retired_until in self._retired_until.items():
            # Retired by an earlier reload: it signed nothing since, so its own end stands.
            kept[kid] = (self._verify_keys[kid], retired_until)
        return {kid: kept[kid] for kid in kept if not self._retired(kid)}

    def _retired(self, kid: str) -> bool:
        """Whether *kid* was retired by a reload and its overlap is over."""
        until = self._retired_until.get(kid)
        return until is not None and self._clock() >= until

    def _verify_signature(self, token: str, digest: bytes) -> Session:
        if not canonical_compact_jws(token):
            # One session, one spelling: the digest of the exact string names its cache
            # entry and its rate-limit bucket, so a re-spelt token (padding, other
            # trailing bits) must not pass as another session.
            raise AuthFailure("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed") from None
        kid = header.get("kid")
        public_key = self._verify_keys.get(kid) if isinstance(kid, str) else None
        if public_key is not None and self._retired(str(kid)):
            public_key = None
        if header.get("alg") != ALGORITHM or public_key is None:
            raise AuthFailure("unknown_key")
        if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
            raise AuthFailure("unsupported_header")  # we never set these; never follow them
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(invalid_token_reason(exc)) from None
        return _session_from_claims(claims, digest)


def canonical_compact_jws(token: str) -> bool:
    """Whether *token* is three base64url segments, unpadded, each exactly as its bytes
    encode (base64 decoders ignore stray trailing bits: "AB" and "AC" decode alike)."""
    segments = token.split(".")
    if len(segments) != 3 or not token.isascii():
        return False
    for segment in segments:
        if not segment or segment.strip(_BASE64URL):
            return False
        try:
            decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except ValueError:
            return False
        if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != segment:
            return False
    return True


_BASE64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _session_from_claims(claims: dict[str, object], digest: bytes) -> Session:
    customer_id, invoice_id = claims["customer_id"], claims["invoice_id"]
    client_id, jti = claims.get("client_id", ""), claims["jti"]
    partner = claims.get(PARTNER_CLAIM, DEFAULT_PARTNER)
    iat, exp = claims["iat"], claims["exp"]
    if (
        not valid_id(customer_id)
        or not valid_id(invoice_id)
        or claims["sub"] != customer_id
        or not isinstance(client_id, str)
        or not valid_id(partner)
        or not isinstance(jti, str)
        or isinstance(iat, bool)
        or not isinstance(iat, int | float)
        or isinstance(exp, bool)
        or not isinstance(exp, int)
    ):
        raise AuthFailure("invalid_claims")
    return Session(
        key=token_key(str(customer_id), str(invoice_id)),
        # Interned: a hundred thousand cached sessions share one string per partner.
        partner=sys.intern(str(partner)),
        digest=digest,
        issued_at=float(iat),
        expires_at=float(exp),
    )


class ApiKeys:
    """API keys, each naming who holds it (a partner account), compared in constant time."""

    def __init__(self, keys: tuple[str, ...], holder: str = "") -> None:
        # Compare digests so that every comparison has the same length and cost.
        self._digests = [(hashlib.sha256(key.encode()).digest(), holder) for key in keys]

    @classmethod
    def of(cls, holders: dict[str, tuple[str, ...]]) -> ApiKeys:
        """The keys of several holders: ``{holder: its keys}``."""
        keys = cls(())
        for holder, held in holders.items():
            keys._digests.extend((hashlib.sha256(k.encode()).digest(), holder) for k in held)
        return keys

    def holder(self, presented: str) -> str | None:
        """Who holds *presented*, or None when no one does."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for known, holder in self._digests:  # no early exit: timing tells no position
            if hmac.compare_digest(digest, known):
                found = holder
        return found

    def check(self, presented: str) -> bool:
        return self.holder(presented) is not None


def _public_jwk_fields(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

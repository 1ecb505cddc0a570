"""Browser-direct callers: verify the signed-in user's JWT from the partner's IdP.

Algorithms are pinned per key (those of ``auth.jwt.algorithms`` the key can verify,
else the key's default: RS256 for RSA, the curve's for EC, EdDSA), never read from
the token header alone; ``jku``/``x5u``/``jwk``/``x5c`` headers are never followed;
``iss`` and ``aud`` are compared exactly; claim types are checked here because pyjwt
accepts a numeric string for ``exp``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.auth.sessions import AuthFailure, invalid_token_reason
from broker.config.checks import key_algorithms
from broker.config.model import JwtAuthSettings
from broker.credentials import valid_id
from broker.observability.logs import get_logger

log = get_logger("broker.auth.identity")

MAX_IDP_TOKEN_LENGTH = 8192
MAX_JWKS_BYTES = 256 * 1024
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
_NUMERIC_CLAIMS = ("exp", "iat", "nbf")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    # A public key object, a PyJWK's key or a shared secret: what jwt.decode takes. (Not
    # `object`: mypyc cannot resolve that annotation in a compiled dataclass.)
    key: Any = field(repr=False)  # an HS256 key is the shared secret itself
    algorithms: frozenset[str]


class IdentityVerifier:
    """Turns an IdP token into the customer ID it speaks for, or raises AuthFailure."""

    def __init__(
        self,
        settings: JwtAuthSettings,
        http: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._static: VerificationKey | None = None
        self._jwks: dict[str | None, VerificationKey] = {}
        self._jwks_fetched_at = float("-inf")
        self._jwks_fetch: asyncio.Task[None] | None = None
        if settings.hs256_secret:
            self._static = VerificationKey(settings.hs256_secret, frozenset({"HS256"}))
        elif settings.public_key:
            public_key = load_pem_public_key(settings.public_key.encode())
            self._static = VerificationKey(public_key, self._pinned(public_key, None))

    async def verify(self, token: str) -> str:
        if len(token) > MAX_IDP_TOKEN_LENGTH:
            raise AuthFailure("token_too_long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed") from None
        if any(name in header for name in _FORBIDDEN_HEADERS):
            raise AuthFailure("unsupported_header")
        key = await self._key_for(header.get("kid"))
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in key.algorithms:
            raise AuthFailure("algorithm_not_allowed")
        settings = self._settings
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": list(settings.required_claims)},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(invalid_token_reason(exc)) from None
        except jwt.PyJWTError:
            # InvalidKeyError: the key does not fit the algorithm (pinning should have
            # refused it already); still the caller's bad token, never a 500.
            raise AuthFailure("algorithm_not_allowed") from None
        for name in _NUMERIC_CLAIMS:
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise AuthFailure("invalid_claims")
        customer = claims.get(settings.customer_claim)
        if not isinstance(customer, str) or not valid_id(customer):
            raise AuthFailure("invalid_claims")
        return customer

    async def _key_for(self, kid: object) -> VerificationKey:
        if self._static is not None:
            return self._static
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("unknown_key")
        stale = self._clock() - self._jwks_fetched_at > self._settings.jwks_cache_ttl
        key = self._jwks.get(kid)
        if key is None or stale:
            # Refetch on an unknown kid (keys rotate), but at a bounded rate so that
            # random kids cannot make the broker hammer the IdP.
            since = self._clock() - self._jwks_fetched_at
            if stale or since >= self._settings.jwks_min_refresh_interval:
                await self._refresh_jwks()
            key = self._jwks.get(kid)
        if key is None:
            raise AuthFailure("unknown_key")
        return key

    async def _refresh_jwks(self) -> None:
        if self._jwks_fetch is None:
            self._jwks_fetch = asyncio.get_running_loop().create_task(self._fetch_jwks())
        task = self._jwks_fetch
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._jwks_fetch = None

    async def _fetch_jwks(self) -> None:
        self._jwks_fetched_at = self._clock()  # failures count too: no retry storm
        try:
            async with self._http().get(self._settings.jwks_url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"JWKS answered {response.status}")
                raw = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise ValueError("JWKS too large")
            keys = self._parse_jwks(json.loads(raw))
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKError) as exc:
            log.warning("idp_jwks_fetch_failed", error=type(exc).__name__)
            return
        self._jwks = keys
        log.info("idp_jwks_fetched", keys=len(keys))

    def _parse_jwks(self, document: object) -> dict[str | None, VerificationKey]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str | None, VerificationKey] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":
                continue  # a symmetric key in a public JWKS is never trusted
            try:
                jwk = jwt.PyJWK.from_dict(entry)
            except jwt.PyJWKError:
                continue
            # A key that verifies nothing is left out: one with private parts (never
            # trusted in a public document), or one whose `alg` it cannot verify.
            algorithms = self._pinned(jwk.key, entry.get("alg"))
            if algorithms:
                keys[entry.get("kid")] = VerificationKey(jwk.key, algorithms)
        return keys

    def _pinned(self, key: object, declared: object) -> frozenset[str]:
        """The algorithms *key* verifies: the configured ones it can verify, else its
        default (RS256 for an RSA key, its curve's for an EC key, EdDSA); *declared*
        (a JWK's own ``alg``) narrows them to that one."""
        fitting = key_algorithms(key)
        if isinstance(declared, str):
            fitting = tuple(a for a in fitting if a == declared)
        if self._settings.algorithms:
            return frozenset(fitting).intersection(self._settings.algorithms)
        return frozenset(fitting[:1])

"""Semantic checks of configuration values, each appending to one shared problem list."""

from __future__ import annotations

import base64
import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from yarl import URL

if TYPE_CHECKING:
    from broker.config.model import AdminSettings, IpNetwork, JwtAuthSettings

_N = TypeVar("_N", bound=float)
MIN_API_KEY_LENGTH = 16
MIN_ADMIN_KEY_LENGTH = 32
MIN_HS256_SECRET_BYTES = 32
# What a public key can verify (RFC 7518 §3, RFC 8037): an RSA key any of these, its
# default first; an EC key only the algorithm of its curve (pyjwt refuses another with
# InvalidKeyError); an Ed25519 or Ed448 key EdDSA.
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = frozenset({*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA"})
_ROUTE_PAIR = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9._~{}/-]+)$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")

# Stands in for a missing key so that validation can go on collecting problems;
# a Settings holding it is never returned.
_PLACEHOLDER_KEY = ec.generate_private_key(ec.SECP256R1())
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")


class Checker:
    """Semantic checks that append to one shared problem list and return a value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def required(self, name: str, value: str) -> str:
        if not value:
            self.problems.append(f"{name}: required")
        return value

    def in_range(self, name: str, value: _N, low: float, high: float) -> _N:
        if not low <= value <= high:
            self.problems.append(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def choice(self, name: str, value: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.problems.append(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def path(self, name: str, value: str) -> str:
        if not _PATH.match(value) or "//" in value or "/../" in value + "/":
            self.problems.append(f"{name}: must be an absolute URL path, got {value!r}")
        return value

    def namespace(self, value: str) -> str:
        # A declared partner's keys live under "<namespace>:partner=<id>": with "=" in
        # a namespace, one broker's default keys could be another's partner's.
        if "=" in value:
            self.problems.append(f"cache.namespace: must not contain '=', got {value!r}")
        return value

    def prefixes(self, values: list[str]) -> tuple[str, ...]:
        if not values:
            self.problems.append("upstream.proxy_prefixes: at least one prefix is required")
        for value in values:
            if not value.endswith("/") or len(value) < 3:
                self.problems.append(
                    f"upstream.proxy_prefixes: {value!r} must look like '/checkout/'"
                )
            self.path("upstream.proxy_prefixes", value)
        return tuple(values)

    def base_url(self, value: str, allow_insecure_http: bool, where: str = "upstream") -> URL:
        name = f"{where}.base_url"
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            self.problems.append(f"{name}: must be an http(s) URL, got {value!r}")
        elif url.scheme == "http" and not allow_insecure_http:
            self.problems.append(
                f"{name}: https is required (set upstream.allow_insecure_http"
                " = true only for a local sandbox)"
            )
        if url.query_string or url.fragment or url.user or url.password:
            self.problems.append(f"{name}: must not carry credentials or a query")
        return url.with_path(url.path.rstrip("/"))

    def networks(self, name: str, values: list[str]) -> tuple[IpNetwork, ...]:
        networks: list[IpNetwork] = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.problems.append(f"{name}: {value!r} is not an IP address or CIDR block")
        return tuple(networks)

    def trusted_proxies(self, values: list[str]) -> tuple[IpNetwork, ...]:
        return self.networks("server.trusted_proxies", values)

    def redis_url(self, value: str) -> str:
        if URL(value).scheme not in {"redis", "rediss", "unix"}:
            self.problems.append("cache.redis_url: must be a redis://, rediss:// or unix:// URL")
        return value

    def encryption_keys(
        self, current: str, previous: list[str], *, required: bool
    ) -> tuple[bytes, ...]:
        if not current:
            if required:
                self.problems.append(
                    'cache.encryption_key: required with backend = "redis" (32 random'
                    " bytes, base64; e.g. `openssl rand -base64 32`)"
                )
            return ()
        keys = []
        for name, value in [("encryption_key", current)] + [
            ("decryption_keys", v) for v in previous
        ]:
            try:
                key = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                key = b""
            if len(key) != 32:
                self.problems.append(f"cache.{name}: must be 32 bytes, base64-encoded")
            keys.append(key)
        return tuple(keys)

    def origins(self, values: list[str]) -> tuple[str, ...]:
        for value in values:
            if value == "*" or not _ORIGIN.match(value):
                self.problems.append(
                    f"cors.allowed_origins: {value!r} must be an exact origin like"
                    " 'https://shop.example.com' (no wildcard, no path)"
                )
        return tuple(values)

    def route_pairs(self, values: list[str]) -> tuple[str, ...]:
        for value in values:
            match = _ROUTE_PAIR.match(value)
            if match is None or "//" in value or "/." in value:
                self.problems.append(
                    f"routes.allow: {value!r} must look like 'POST /checkout/fees/{{id}}'"
                )
        return tuple(values)

    def jwt_auth(self, settings: JwtAuthSettings, *, allow_insecure_http: bool) -> None:
        sources = [bool(settings.jwks_url), bool(settings.public_key), bool(settings.hs256_secret)]
        if sum(sources) != 1:
            self.problems.append(
                "auth.jwt: set exactly one of jwks_url, public_key_file, hs256_secret"
            )
        if not settings.issuer:
            self.problems.append("auth.jwt.issuer: required")
        if not settings.audience:
            self.problems.append("auth.jwt.audience: required")
        if not settings.customer_claim:
            self.problems.append("auth.jwt.customer_claim: required")
        if settings.jwks_url:
            url = URL(settings.jwks_url)
            if url.scheme != "https" and not (url.scheme == "http" and allow_insecure_http):
                self.problems.append("auth.jwt.jwks_url: must be an https URL")
        if settings.hs256_secret:
            if len(settings.hs256_secret) < MIN_HS256_SECRET_BYTES:
                self.problems.append(
                    f"auth.jwt.hs256_secret: at least {MIN_HS256_SECRET_BYTES} bytes"
                )
            if set(settings.algorithms) - {"HS256"}:
                self.problems.append("auth.jwt.algorithms: an hs256_secret verifies HS256 only")
        elif set(settings.algorithms) - ASYMMETRIC_ALGORITHMS:
            self.problems.append(
                "auth.jwt.algorithms: only asymmetric algorithms with a public key or JWKS"
                f" ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        if settings.public_key:
            self._public_key_algorithms(settings.public_key, settings.algorithms)

    def _public_key_algorithms(self, pem: str, configured: tuple[str, ...]) -> None:
        # Found here, not by the broker refusing every token: a key that verifies no
        # algorithm, or a pinned algorithm the key can never verify.
        key = load_pem_public_key_or_none(pem)
        if key is None:
            self.problems.append("auth.jwt.public_key_file: not a readable PEM public key")
            return
        fitting = key_algorithms(key)
        if not fitting:
            self.problems.append(
                "auth.jwt.public_key_file: must be an RSA, EC (P-256, P-384, P-521),"
                " Ed25519 or Ed448 public key"
            )
            return
        # Those outside ASYMMETRIC_ALGORITHMS have a problem of their own (jwt_auth).
        unfit = [a for a in configured if a in ASYMMETRIC_ALGORITHMS and a not in fitting]
        if unfit:
            self.problems.append(
                f"auth.jwt.algorithms: {', '.join(unfit)} can never verify with the key in"
                f" auth.jwt.public_key_file (it verifies {', '.join(fitting)})"
            )

    def admin(self, settings: AdminSettings) -> None:
        if settings.enabled and len(settings.api_key) < MIN_ADMIN_KEY_LENGTH:
            self.problems.append(
                f"admin.api_key: required with admin enabled (at least {MIN_ADMIN_KEY_LENGTH}"
                " chars)"
            )

    def admin_workers(self, admin: AdminSettings, *, workers: int, backend: str) -> None:
        """The admin API changes the memory of the one worker that answers it (a
        revocation, a promote; the listing reads it): with several workers, only a
        shared backend lets a revocation hold on all of them. Workers 0 is one per core."""
        if admin.enabled and workers != 1 and backend != "redis":
            self.problems.append(
                "admin.enabled with server.workers > 1 needs a shared backend"
                ' (cache.backend = "redis"): each worker has its own revocations (or set'
                " server.workers = 1; 0 is one per core)"
            )

    def metrics_token(self, value: str) -> str:
        if value and len(value) < MIN_ADMIN_KEY_LENGTH:
            self.problems.append(
                f"metrics.bearer_token: at least {MIN_ADMIN_KEY_LENGTH} characters"
                " (`openssl rand -hex 32`)"
            )
        return value

    def api_keys(self, values: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
        if not values:
            self.problems.append(f"{where}: required (set {where} or api_keys_file)")
        if any(len(value) < MIN_API_KEY_LENGTH for value in values):
            self.problems.append(
                f"{where}: every key must be at least {MIN_API_KEY_LENGTH} characters"
            )
        return tuple(values)

    def signing_key(self, pem: str) -> ec.EllipticCurvePrivateKey:
        placeholder = _PLACEHOLDER_KEY
        if not pem:
            self.problems.append(
                "sessions.signing_key: required (set signing_key_file; `token-broker keygen`)"
            )
            return placeholder
        try:
            key = load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            self.problems.append("sessions.signing_key: not a readable unencrypted PEM key")
            return placeholder
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            self.problems.append("sessions.signing_key: must be an EC P-256 key (ES256)")
            return placeholder
        return key

    def verify_keys(self, paths: list[str]) -> tuple[ec.EllipticCurvePublicKey, ...]:
        keys: list[ec.EllipticCurvePublicKey] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                self.problems.append(f"sessions.verify_key_files: cannot read {path!r} ({exc})")
                continue
            public = _public_key(data)
            if public is None:
                self.problems.append(
                    f"sessions.verify_key_files: {path!r} is not an EC P-256 PEM key"
                )
            else:
                keys.append(public)
        return tuple(keys)


def _public_key(data: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        if b"PRIVATE KEY" in data:
            private = load_pem_private_key(data, password=None)
            key: object = private.public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return key
    return None


def key_algorithms(key: object) -> tuple[str, ...]:
    """The JWS algorithms *key* verifies, the one it defaults to first; none for a
    private key or a key of another kind."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        return (algorithm,) if algorithm else ()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def load_pem_public_key_or_none(pem: str) -> object | None:
    try:
        return load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return None

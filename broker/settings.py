"""Typed, immutable settings and ``load_settings``: parse once, validate everything."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from yarl import URL

from broker.config_source import Key, RawConfig, read_document

_N = TypeVar("_N", int, float)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_API_KEY_LENGTH = 16

SCHEMA: tuple[Key, ...] = (
    Key("server", "host", "str", "0.0.0.0"),  # noqa: S104 - a gateway listens publicly
    Key("server", "port", "int", 8080),
    Key("server", "shutdown_timeout", "float", 15.0),
    Key("server", "drain_delay", "float", 0.0),
    Key("server", "workers", "int", 1),
    Key("server", "trusted_proxies", "list", []),
    Key("upstream", "base_url", "str", "https://public-api.alternativepayments.io"),
    Key("upstream", "allow_insecure_http", "bool", False),
    Key("upstream", "client_id", "str", ""),
    Key("upstream", "client_secret", "str", "", secret=True),
    Key("upstream", "token_path", "str", "/oauth/token"),
    Key("upstream", "checkout_init_path", "str", "/v1/checkout-auth/init"),
    Key("upstream", "proxy_prefixes", "list", ["/checkout/"]),
    Key("upstream", "rate_limit_per_second", "float", 5.0),
    Key("upstream", "rate_limit_max_wait", "float", 2.0),
    Key("upstream", "connect_timeout", "float", 5.0),
    Key("upstream", "read_timeout", "float", 30.0),
    Key("upstream", "max_connections", "int", 100),
    Key("sessions", "api_keys", "list", [], secret=True),
    Key("sessions", "signing_key", "str", "", secret=True),
    Key("sessions", "verify_key_files", "list", []),
    Key("sessions", "issuer", "str", "token-broker"),
    Key("sessions", "audience", "str", "alternative-checkout"),
    Key("sessions", "ttl", "int", 900),
    Key("sessions", "leeway", "int", 5),
    Key("tokens", "refresh_margin", "float", 60.0),
    Key("tokens", "max_entries", "int", 100_000),
    Key("limits", "max_body_bytes", "int", 65_536),
    Key("logging", "format", "str", "auto"),
    Key("logging", "level", "str", "info"),
    Key("metrics", "port", "int", 0),
    Key("cache", "backend", "str", "memory"),
    Key("cache", "redis_url", "str", "redis://127.0.0.1:6379/0", secret=True),
    Key("cache", "encryption_key", "str", "", secret=True),
    Key("cache", "decryption_keys", "list", [], secret=True),
    Key("cache", "namespace", "str", "token-broker"),
    Key("cache", "redis_timeout", "float", 0.25),
    Key("cache", "lease_ttl", "float", 5.0),
)
CACHE_BACKENDS = ("memory", "redis")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 15.0
    drain_delay: float = 0.0
    workers: int = 1
    trusted_proxies: tuple[IpNetwork, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    base_url: URL
    client_id: str
    client_secret: str = field(repr=False)
    token_path: str = "/oauth/token"  # noqa: S105 - a URL path, not a secret
    checkout_init_path: str = "/v1/checkout-auth/init"
    proxy_prefixes: tuple[str, ...] = ("/checkout/",)
    rate_limit_per_second: float = 5.0
    rate_limit_max_wait: float = 2.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    signing_key: ec.EllipticCurvePrivateKey = field(repr=False)
    verify_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    issuer: str = "token-broker"
    audience: str = "alternative-checkout"
    ttl: int = 900
    leeway: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    refresh_margin: float = 60.0
    max_entries: int = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    backend: str = "memory"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # AES-256-GCM keys for tokens at rest in Redis; the first encrypts, all decrypt.
    encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    namespace: str = "token-broker"
    redis_timeout: float = 0.25
    lease_ttl: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    upstream: UpstreamSettings
    sessions: SessionSettings
    server: ServerSettings = ServerSettings()
    tokens: TokenSettings = TokenSettings()
    cache: CacheSettings = CacheSettings()
    max_body_bytes: int = 65_536
    log_format: str = "auto"
    log_level: str = "info"
    metrics_port: int = 0


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read *path* (TOML), let ``BROKER_*`` variables override it, validate it all."""
    document: dict[str, Any] = {}
    problems: list[str] = []
    if path is not None:
        document, problems = read_document(path)
    raw = RawConfig(SCHEMA)
    raw.load(document, environ)
    problems.extend(raw.problems)
    if problems:  # wrong types make the semantic checks below meaningless
        raise ConfigError(problems)
    return _build(raw.get, problems)


def redacted_values(path: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The effective configuration as nested dicts, with every secret redacted."""
    document = read_document(path)[0] if path is not None else {}
    raw = RawConfig(SCHEMA)
    raw.load(document, environ)
    effective: dict[str, Any] = {}
    for key in SCHEMA:
        value = raw.get(key.dotted)
        if key.secret:
            value = _redact(value)
        section = effective
        for part in key.section.split("."):
            section = section.setdefault(part, {})
        section[key.name] = value
    return effective


def _redact(value: object) -> object:
    if isinstance(value, list):
        return [f"<redacted, {len(value)} set>"] if value else []
    return "<redacted>" if value else ""


def _build(get: Any, problems: list[str]) -> Settings:
    check = _Checker(problems)
    server = ServerSettings(
        host=get("server.host"),
        port=check.in_range("server.port", get("server.port"), 0, 65535),
        shutdown_timeout=check.in_range(
            "server.shutdown_timeout", get("server.shutdown_timeout"), 0.0, 3600.0
        ),
        drain_delay=check.in_range("server.drain_delay", get("server.drain_delay"), 0, 600),
        workers=check.in_range("server.workers", get("server.workers"), 0, 256),
        trusted_proxies=check.networks("server.trusted_proxies", get("server.trusted_proxies")),
    )
    upstream = UpstreamSettings(
        base_url=check.base_url(get("upstream.base_url"), get("upstream.allow_insecure_http")),
        client_id=check.required("upstream.client_id", get("upstream.client_id")),
        client_secret=check.required("upstream.client_secret", get("upstream.client_secret")),
        token_path=check.path("upstream.token_path", get("upstream.token_path")),
        checkout_init_path=check.path(
            "upstream.checkout_init_path", get("upstream.checkout_init_path")
        ),
        proxy_prefixes=check.prefixes(get("upstream.proxy_prefixes")),
        rate_limit_per_second=check.in_range(
            "upstream.rate_limit_per_second", get("upstream.rate_limit_per_second"), 0.01, 10_000
        ),
        rate_limit_max_wait=check.in_range(
            "upstream.rate_limit_max_wait", get("upstream.rate_limit_max_wait"), 0.0, 60.0
        ),
        connect_timeout=check.in_range(
            "upstream.connect_timeout", get("upstream.connect_timeout"), 0.01, 300.0
        ),
        read_timeout=check.in_range(
            "upstream.read_timeout", get("upstream.read_timeout"), 0.01, 3600.0
        ),
        max_connections=check.in_range(
            "upstream.max_connections", get("upstream.max_connections"), 1, 100_000
        ),
    )
    sessions = SessionSettings(
        signing_key=check.signing_key(get("sessions.signing_key")),
        verify_keys=check.verify_keys(get("sessions.verify_key_files")),
        api_keys=check.api_keys(get("sessions.api_keys")),
        issuer=check.required("sessions.issuer", get("sessions.issuer")),
        audience=check.required("sessions.audience", get("sessions.audience")),
        ttl=check.in_range("sessions.ttl", get("sessions.ttl"), 1, 86_400),
        leeway=check.in_range("sessions.leeway", get("sessions.leeway"), 0, 300),
    )
    tokens = TokenSettings(
        refresh_margin=check.in_range(
            "tokens.refresh_margin", get("tokens.refresh_margin"), 0.0, 3600.0
        ),
        max_entries=check.in_range("tokens.max_entries", get("tokens.max_entries"), 1, 10**8),
    )
    backend = check.choice("cache.backend", get("cache.backend"), CACHE_BACKENDS)
    cache = CacheSettings(
        backend=backend,
        redis_url=check.redis_url(get("cache.redis_url")) if backend == "redis" else "",
        encryption_keys=check.encryption_keys(
            get("cache.encryption_key"), get("cache.decryption_keys"), required=backend == "redis"
        ),
        namespace=check.required("cache.namespace", get("cache.namespace")),
        redis_timeout=check.in_range("cache.redis_timeout", get("cache.redis_timeout"), 0.01, 10.0),
        lease_ttl=check.in_range("cache.lease_ttl", get("cache.lease_ttl"), 0.5, 120.0),
    )
    settings = Settings(
        cache=cache,
        server=server,
        upstream=upstream,
        sessions=sessions,
        tokens=tokens,
        max_body_bytes=check.in_range(
            "limits.max_body_bytes", get("limits.max_body_bytes"), 0, 64 * 2**20
        ),
        log_format=check.choice("logging.format", get("logging.format"), LOG_FORMATS),
        log_level=check.choice("logging.level", get("logging.level").lower(), LOG_LEVELS),
        metrics_port=check.in_range("metrics.port", get("metrics.port"), 0, 65535),
    )
    if problems:
        raise ConfigError(problems)
    return settings


# Stands in for a missing key so that validation can go on collecting problems;
# a Settings holding it is never returned.
_PLACEHOLDER_KEY = ec.generate_private_key(ec.SECP256R1())
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")


class _Checker:
    """Semantic checks that append to one shared problem list and return a value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def required(self, name: str, value: str) -> str:
        if not value:
            self.problems.append(f"{name}: required")
        return value

    def in_range(self, name: str, value: _N, low: _N, high: _N) -> _N:
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

    def base_url(self, value: str, allow_insecure_http: bool) -> URL:
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            self.problems.append(f"upstream.base_url: must be an http(s) URL, got {value!r}")
        elif url.scheme == "http" and not allow_insecure_http:
            self.problems.append(
                "upstream.base_url: https is required (set upstream.allow_insecure_http"
                " = true only for a local sandbox)"
            )
        if url.query_string or url.fragment or url.user or url.password:
            self.problems.append("upstream.base_url: must not carry credentials or a query")
        return url.with_path(url.path.rstrip("/"))

    def networks(self, name: str, values: list[str]) -> tuple[IpNetwork, ...]:
        networks: list[IpNetwork] = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.problems.append(f"{name}: {value!r} is not an IP address or CIDR block")
        return tuple(networks)

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

    def api_keys(self, values: list[str]) -> tuple[str, ...]:
        if not values:
            self.problems.append(
                "sessions.api_keys: required (set sessions.api_keys or api_keys_file)"
            )
        if any(len(value) < MIN_API_KEY_LENGTH for value in values):
            self.problems.append(
                f"sessions.api_keys: every key must be at least {MIN_API_KEY_LENGTH} characters"
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

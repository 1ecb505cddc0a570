"""Typed, immutable settings and ``load_settings``: parse once, validate everything."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from broker.config_source import Key, RawConfig, read_document
from broker.settings_checks import Checker

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Get = Callable[[str], Any]

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
    Key("upstream", "max_connections", "int", 256),
    Key("upstream", "transport", "str", "aiohttp"),
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
    Key("limits", "header_timeout", "float", 10.0),
    Key("limits", "body_timeout", "float", 10.0),
    Key("limits", "ip_requests_per_second", "float", 50.0),
    Key("limits", "ip_burst", "int", 100),
    Key("limits", "session_requests_per_second", "float", 20.0),
    Key("limits", "session_burst", "int", 40),
    Key("limits", "init_requests_per_second", "float", 5.0),
    Key("limits", "init_burst", "int", 20),
    Key("cors", "allowed_origins", "list", []),
    Key("cors", "max_age", "int", 600),
    Key("routes", "allow", "list", []),
    Key("routes", "allow_any", "bool", False),
    Key("auth.jwt", "enabled", "bool", False),
    Key("auth.jwt", "issuer", "str", ""),
    Key("auth.jwt", "audience", "str", ""),
    Key("auth.jwt", "jwks_url", "str", ""),
    Key("auth.jwt", "public_key", "str", "", secret=False),
    Key("auth.jwt", "hs256_secret", "str", "", secret=True),
    Key("auth.jwt", "algorithms", "list", []),
    Key("auth.jwt", "customer_claim", "str", "sub"),
    Key("auth.jwt", "required_claims", "list", ["exp", "iat", "iss", "aud", "sub"]),
    Key("auth.jwt", "leeway", "int", 30),
    Key("auth.jwt", "jwks_cache_ttl", "float", 300.0),
    Key("auth.jwt", "jwks_min_refresh_interval", "float", 30.0),
    Key("auth.jwt", "ownership_cache_ttl", "float", 30.0),
    Key("admin", "enabled", "bool", False),
    Key("admin", "host", "str", "127.0.0.1"),
    Key("admin", "port", "int", 8090),
    Key("admin", "api_key", "str", "", secret=True),
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
TRANSPORTS = ("aiohttp", "lean")


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
    max_connections: int = 256
    # The proxy path's HTTP client: "aiohttp", or "lean" (httptools, see lean_transport).
    transport: str = "aiohttp"


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
class LimitSettings:
    max_body_bytes: int = 65_536
    # Seconds to receive a request's headers (from connect, or from the previous
    # response on a kept-alive connection) and its body: slow clients are cut off.
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    ip_requests_per_second: float = 50.0
    ip_burst: int = 100
    session_requests_per_second: float = 20.0
    session_burst: int = 40
    init_requests_per_second: float = 5.0
    init_burst: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsSettings:
    allowed_origins: tuple[str, ...] = ()
    max_age: int = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSettings:
    # Extra "METHOD /path/{id}" pairs beyond the SDK's; allow_any forwards anything
    # under the proxy prefixes (the allowlist off).
    allow: tuple[str, ...] = ()
    allow_any: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuthSettings:
    """Browser-direct sessions: the signed-in user's JWT from the partner's IdP."""

    enabled: bool = False
    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    public_key: str = ""
    hs256_secret: bytes = field(default=b"", repr=False)
    algorithms: tuple[str, ...] = ()
    customer_claim: str = "sub"
    required_claims: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub")
    leeway: int = 30
    jwks_cache_ttl: float = 300.0
    jwks_min_refresh_interval: float = 30.0
    ownership_cache_ttl: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8090
    api_key: str = field(default="", repr=False)


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
    limits: LimitSettings = LimitSettings()
    cors: CorsSettings = CorsSettings()
    routes: RouteSettings = RouteSettings()
    jwt_auth: JwtAuthSettings = JwtAuthSettings()
    admin: AdminSettings = AdminSettings()
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


def _build(get: Get, problems: list[str]) -> Settings:
    check = Checker(problems)
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
        transport=check.choice("upstream.transport", get("upstream.transport"), TRANSPORTS),
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
        limits=_limits(check, get),
        cors=CorsSettings(
            allowed_origins=check.origins(get("cors.allowed_origins")),
            max_age=check.in_range("cors.max_age", get("cors.max_age"), 0, 86_400),
        ),
        routes=RouteSettings(
            allow=check.route_pairs(get("routes.allow")), allow_any=get("routes.allow_any")
        ),
        jwt_auth=_jwt_auth(check, get),
        admin=_admin(check, get),
        log_format=check.choice("logging.format", get("logging.format"), LOG_FORMATS),
        log_level=check.choice("logging.level", get("logging.level").lower(), LOG_LEVELS),
        metrics_port=check.in_range("metrics.port", get("metrics.port"), 0, 65535),
    )
    if problems:
        raise ConfigError(problems)
    return settings


def _limits(check: Checker, get: Get) -> LimitSettings:
    def rate(name: str) -> float:
        value: float = get(f"limits.{name}")
        return check.in_range(f"limits.{name}", value, 0.01, 100_000.0)

    def count(name: str) -> int:
        value: int = get(f"limits.{name}")
        return check.in_range(f"limits.{name}", value, 1, 1_000_000)

    return LimitSettings(
        max_body_bytes=check.in_range(
            "limits.max_body_bytes", get("limits.max_body_bytes"), 0, 64 * 2**20
        ),
        header_timeout=check.in_range(
            "limits.header_timeout", get("limits.header_timeout"), 0.5, 300.0
        ),
        body_timeout=check.in_range("limits.body_timeout", get("limits.body_timeout"), 0.5, 300.0),
        ip_requests_per_second=rate("ip_requests_per_second"),
        ip_burst=count("ip_burst"),
        session_requests_per_second=rate("session_requests_per_second"),
        session_burst=count("session_burst"),
        init_requests_per_second=rate("init_requests_per_second"),
        init_burst=count("init_burst"),
    )


def _jwt_auth(check: Checker, get: Get) -> JwtAuthSettings:
    enabled = get("auth.jwt.enabled")
    settings = JwtAuthSettings(
        enabled=enabled,
        issuer=get("auth.jwt.issuer"),
        audience=get("auth.jwt.audience"),
        jwks_url=get("auth.jwt.jwks_url"),
        public_key=get("auth.jwt.public_key"),
        hs256_secret=get("auth.jwt.hs256_secret").encode(),
        algorithms=tuple(get("auth.jwt.algorithms")),
        customer_claim=get("auth.jwt.customer_claim"),
        required_claims=tuple(get("auth.jwt.required_claims")),
        leeway=check.in_range("auth.jwt.leeway", get("auth.jwt.leeway"), 0, 300),
        jwks_cache_ttl=check.in_range(
            "auth.jwt.jwks_cache_ttl", get("auth.jwt.jwks_cache_ttl"), 1.0, 86_400.0
        ),
        jwks_min_refresh_interval=check.in_range(
            "auth.jwt.jwks_min_refresh_interval",
            get("auth.jwt.jwks_min_refresh_interval"),
            0.0,
            3600.0,
        ),
        ownership_cache_ttl=check.in_range(
            "auth.jwt.ownership_cache_ttl", get("auth.jwt.ownership_cache_ttl"), 0.0, 3600.0
        ),
    )
    if enabled:
        check.jwt_auth(settings, allow_insecure_http=get("upstream.allow_insecure_http"))
    return settings


def _admin(check: Checker, get: Get) -> AdminSettings:
    enabled = get("admin.enabled")
    api_key = get("admin.api_key")
    if enabled and len(api_key) < 32:
        check.problems.append("admin.api_key: required with admin enabled (at least 32 chars)")
    return AdminSettings(
        enabled=enabled,
        host=get("admin.host"),
        port=check.in_range("admin.port", get("admin.port"), 0, 65535),
        api_key=api_key,
    )

"""Typed, immutable settings and ``load_settings``: parse once, validate everything.

Each configuration key is declared once, as a field of the dataclass that holds it
(``setting``/``built``, see ``broker.config.schema``): default, doc, secrecy, range or
choices. ``SCHEMA``, the builder's checks of single keys and the tests that hold
``config/broker.toml`` and the README's table to it all derive from those fields.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from broker.config.checks import Checker
from broker.config.schema import NO_DEFAULT, build, built, key, schema, setting
from broker.config.sources import Key, RawConfig, read_document

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
CACHE_BACKENDS = ("memory", "redis")
TRANSPORTS = ("aiohttp", "lean")
_REDIS_URL = "redis://127.0.0.1:6379/0"
# Without a [partners.<id>] table, [upstream] and [sessions] describe the one account.
DEFAULT_PARTNER = "default"
WITHOUT_PARTNERS = "without [partners]"
# A partner id names metrics labels and Redis keys: short, lower case, no separators.
PARTNER_ID = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


def _utf8(_check: Checker, value: str) -> bytes:
    return value.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    SECTION: ClassVar[str] = "server"

    # All interfaces: a gateway (and the image, with the documented defaults) must be
    # reachable from outside its host; `serve --sandbox` listens on loopback.
    host: str = setting("0.0.0.0", doc="listen address")  # noqa: S104 - a gateway listens publicly
    port: int = setting(8080, minimum=0, maximum=65535, doc="listen port")
    shutdown_timeout: float = setting(
        15.0, minimum=0.0, maximum=3600.0, doc="seconds SIGTERM waits for in-flight requests"
    )
    drain_delay: float = setting(
        0.0,
        minimum=0,
        maximum=600,
        doc="seconds `/readyz` reports draining before the listener closes",
    )
    workers: int = setting(
        1,
        minimum=0,
        maximum=256,
        doc="processes sharing the port (SO_REUSEPORT); 0 = one per core",
    )
    trusted_proxies: tuple[IpNetwork, ...] = setting(
        (), parse=Checker.trusted_proxies, doc="peers whose `X-Forwarded-For` is believed"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    SECTION: ClassVar[str] = "upstream"

    base_url: URL = built(  # noqa: RUF009 - a dataclasses.field with its key
        key(
            "https://public-api.alternativepayments.io",
            doc="https required unless `allow_insecure_http`",
        ),
        key(False, name="allow_insecure_http", doc="allow an http upstream (sandbox only)"),
    )
    client_id: str = setting("", required=WITHOUT_PARTNERS, doc="partner OAuth client id")
    client_secret: str = setting(
        "", secret=True, required=WITHOUT_PARTNERS, doc="partner OAuth client secret"
    )
    secondary_client_id: str = setting(
        "", doc="a second credential, tried when the upstream rejects the first (rotation)"
    )
    secondary_client_secret: str = setting("", secret=True, doc="its secret")
    token_path: str = setting(
        "/oauth/token",
        parse=lambda check, value: check.path("upstream.token_path", value),
        doc="OAuth token endpoint",
    )
    checkout_init_path: str = setting(
        "/v1/checkout-auth/init",
        parse=lambda check, value: check.path("upstream.checkout_init_path", value),
        doc="mint endpoint (some environments: `/checkout-auth/init`)",
    )
    proxy_prefixes: tuple[str, ...] = setting(
        ("/checkout/",), parse=Checker.prefixes, doc="forwarded prefixes (covers `/checkout/v1/`)"
    )
    rate_limit_per_second: float = setting(
        5.0, minimum=0.01, maximum=10_000, doc="budget for calls with the partner credentials"
    )
    rate_limit_max_wait: float = setting(
        2.0,
        minimum=0.0,
        maximum=60.0,
        doc="seconds a request may wait for that budget before 503",
    )
    connect_timeout: float = setting(
        5.0, minimum=0.01, maximum=300.0, doc="seconds to connect upstream"
    )
    read_timeout: float = setting(
        30.0, minimum=0.01, maximum=3600.0, doc="seconds without a byte from upstream (504)"
    )
    max_connections: int = setting(
        256,
        minimum=1,
        maximum=100_000,
        doc="upstream keep-alive pool size per process (one connection per concurrent call)",
    )
    pool_wait: float = setting(
        1.0,
        minimum=0.0,
        maximum=60.0,
        doc="seconds a proxied call may wait for a free upstream connection before 503",
    )
    max_connections_per_customer: int = setting(
        32,
        minimum=1,
        maximum=100_000,
        doc="upstream connections one customer's calls may hold at once (more get 503)",
    )
    # The proxy path's HTTP client (broker/upstream/lean.py); aiohttp's stays the fallback.
    transport: str = setting(
        "lean",
        choices=TRANSPORTS,
        doc="proxy-path HTTP client: `lean` (a keep-alive HTTP/1.1 pool on httptools/llhttp,"
        " less CPU per request), or `aiohttp` (the fallback)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    SECTION: ClassVar[str] = "sessions"

    api_keys: tuple[str, ...] = setting(
        (),
        secret=True,
        required=WITHOUT_PARTNERS,
        doc="keys the partner backend presents; or `api_keys_file`",
    )
    signing_key: ec.EllipticCurvePrivateKey = setting(  # noqa: RUF009 - as above
        "",
        secret=True,
        required=True,
        parse=Checker.signing_key,
        doc="ES256 PEM; usually `signing_key_file`",
        attribute_default=NO_DEFAULT,
    )
    verify_keys: tuple[ec.EllipticCurvePublicKey, ...] = setting(
        (),
        name="verify_key_files",
        paths=True,
        parse=Checker.verify_keys,
        doc="older keys that still verify (rotation)",
    )
    issuer: str = setting("token-broker", required=True, doc="`iss` of session tokens")
    audience: str = setting("alternative-checkout", required=True, doc="`aud` of session tokens")
    ttl: int = setting(900, minimum=1, maximum=86_400, doc="seconds a session token lives")
    leeway: int = setting(5, minimum=0, maximum=300, doc="seconds of clock skew accepted")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    SECTION: ClassVar[str] = "tokens"

    refresh_margin: float = setting(
        60.0,
        minimum=0.0,
        maximum=3600.0,
        doc="seconds before expiry a checkout JWT stops being forwarded (capped at a fifth"
        " of its lifetime)",
    )
    max_entries: int = setting(
        100_000, minimum=1, maximum=10**8, doc="checkout JWTs cached per process"
    )
    max_lifetime: float = setting(
        86_400.0,
        minimum=1.0,
        maximum=30 * 86_400.0,
        doc="longest token lifetime believed from the upstream (longer ones are clamped, logged)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSettings:
    SECTION: ClassVar[str] = "limits"

    max_body_bytes: int = setting(
        65_536, minimum=0, maximum=64 * 2**20, doc="larger request bodies get 413"
    )
    # Counted from the connect, or from the previous response on a kept-alive
    # connection: slow clients are cut off.
    header_timeout: float = setting(
        10.0,
        minimum=0.5,
        maximum=300.0,
        doc="seconds to send a request's headers (from connect, or the previous response)",
    )
    body_timeout: float = setting(
        10.0, minimum=0.5, maximum=300.0, doc="seconds to send a request body (408 past it)"
    )
    ip_requests_per_second: float = setting(
        50.0, minimum=0.01, maximum=100_000.0, doc="per-client-IP token bucket on the proxy (429)"
    )
    ip_burst: int = setting(100, minimum=1, maximum=1_000_000, doc="its burst")
    session_requests_per_second: float = setting(
        20.0, minimum=0.01, maximum=100_000.0, doc="per-session token bucket on the proxy"
    )
    session_burst: int = setting(40, minimum=1, maximum=1_000_000, doc="its burst")
    init_requests_per_second: float = setting(
        5.0,
        minimum=0.01,
        maximum=100_000.0,
        doc="per-IP bucket on session issuing for callers without a valid API key",
    )
    init_burst: int = setting(20, minimum=1, maximum=1_000_000, doc="its burst")


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsSettings:
    SECTION: ClassVar[str] = "cors"

    allowed_origins: tuple[str, ...] = setting(
        (),
        parse=Checker.origins,
        doc="exact origins allowed to call from a browser; never a wildcard",
    )
    max_age: int = setting(600, minimum=0, maximum=86_400, doc="seconds a preflight may be cached")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSettings:
    SECTION: ClassVar[str] = "routes"

    allow: tuple[str, ...] = setting(
        (),
        parse=Checker.route_pairs,
        doc='extra `"METHOD /checkout/path/{id}"` pairs beyond the SDK\'s',
    )
    allow_any: bool = setting(False, doc="forward anything under the prefixes (allowlist off)")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuthSettings:
    """Browser-direct sessions: the signed-in user's JWT from the partner's IdP."""

    SECTION: ClassVar[str] = "auth.jwt"

    enabled: bool = setting(False, doc="browser-direct sessions with the user's IdP JWT")
    issuer: str = setting("", required="when enabled", doc="`iss`, compared exactly")
    audience: str = setting("", required="when enabled", doc="`aud`, compared exactly")
    jwks_url: str = setting("", doc="IdP JWKS (one key source of three)")
    public_key: str = setting("", doc="PEM public key; usually `public_key_file`")
    hs256_secret: bytes = setting(
        "",
        secret=True,
        parse=_utf8,
        doc="HS256 secret, at least 32 bytes (secret)",
        attribute_default=b"",
    )
    algorithms: tuple[str, ...] = setting((), doc="pinned algorithms; empty = from each key's type")
    customer_claim: str = setting("sub", required="when enabled", doc="claim naming the customer")
    required_claims: tuple[str, ...] = setting(
        ("exp", "iat", "iss", "aud", "sub"), doc="claims that must be present"
    )
    leeway: int = setting(30, minimum=0, maximum=300, doc="seconds of clock skew (at most 300)")
    jwks_cache_ttl: float = setting(
        300.0, minimum=1.0, maximum=86_400.0, doc="seconds a fetched JWKS is trusted"
    )
    jwks_min_refresh_interval: float = setting(
        30.0,
        minimum=0.0,
        maximum=3600.0,
        doc="an unknown `kid` refetches at most this often",
    )
    ownership_cache_ttl: float = setting(
        30.0, minimum=0.0, maximum=3600.0, doc="seconds an invoice's owner is remembered"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    SECTION: ClassVar[str] = "admin"

    enabled: bool = setting(False, doc="the admin listener")
    host: str = setting("127.0.0.1", doc="its address")
    port: int = setting(8090, minimum=0, maximum=65535, doc="its port")
    api_key: str = setting(
        "",
        secret=True,
        required="when enabled",
        doc="at least 32 chars; or `api_key_file`",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    SECTION: ClassVar[str] = "cache"

    backend: str = setting("memory", choices=CACHE_BACKENDS, doc="`memory` or `redis`")
    # "" unless the backend is Redis.
    redis_url: str = built(
        key(_REDIS_URL, secret=True, doc="secret (may hold a password); `rediss://` for TLS"),
        attribute_default=_REDIS_URL,
    )
    # AES-256-GCM keys for tokens at rest in Redis; the first encrypts, all decrypt.
    encryption_keys: tuple[bytes, ...] = built(
        key(
            "",
            name="encryption_key",
            secret=True,
            required="with redis",
            doc="AES-256-GCM key, 32 bytes base64",
        ),
        key((), name="decryption_keys", secret=True, doc="older keys still accepted (secret)"),
        attribute_default=(),
    )
    namespace: str = setting(
        "token-broker",
        required=True,
        parse=lambda check, value: check.namespace(value),
        doc="prefix of every Redis key",
    )
    redis_timeout: float = setting(
        0.25, minimum=0.01, maximum=10.0, doc="seconds; a slower Redis counts as down"
    )
    lease_ttl: float = setting(
        5.0, minimum=0.5, maximum=120.0, doc="seconds a replica may hold a key's mint lease"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """An OAuth client credential; its secret never in a repr."""

    client_id: str
    client_secret: str = dataclasses.field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartnerSettings:
    """One partner account, ``[partners.<id>]``: its upstream, its OAuth credentials (a
    secondary one for rotation), its rate budget and the partner-backend API keys that
    select it. Without any such table, ``[upstream]`` and ``[sessions]`` make the one
    account, ``default``: today's single-account configuration."""

    SECTION: ClassVar[str] = "partners.<id>"

    id: str = built(attribute_default=DEFAULT_PARTNER)  # the table's name
    base_url: URL = built(  # noqa: RUF009 - a dataclasses.field with its key
        key("", doc="its upstream (https); `upstream.base_url` when empty"),
    )
    client_id: str = setting(
        "", required=True, doc="its OAuth client id", attribute_default=NO_DEFAULT
    )
    client_secret: str = setting(
        "",
        secret=True,
        required=True,
        doc="its OAuth client secret; or `client_secret_file`",
        attribute_default=NO_DEFAULT,
    )
    secondary_client_id: str = setting("", doc="a second credential, tried when the first fails")
    secondary_client_secret: str = setting("", secret=True, doc="its secret")
    rate_limit_per_second: float = setting(
        5.0,
        minimum=0.01,
        maximum=10_000,
        doc="its budget for calls with its credentials (the vendor counts per key)",
    )
    api_keys: tuple[str, ...] = setting(
        (),
        secret=True,
        required=True,
        doc="partner-backend API keys that select it; or `api_keys_file`",
    )

    @property
    def credentials(self) -> tuple[Credential, ...]:
        """The primary credential, then the secondary one if configured."""
        primary = Credential(client_id=self.client_id, client_secret=self.client_secret)
        if not self.secondary_client_id:
            return (primary,)
        secondary = Credential(
            client_id=self.secondary_client_id, client_secret=self.secondary_client_secret
        )
        return (primary, secondary)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """What the OTEL_* variables do not say (they choose the exporter, the endpoint, the
    sampler and the service name: README, Tracing)."""

    SECTION: ClassVar[str] = "tracing"

    trust_incoming: bool = setting(
        False,
        doc="a caller's W3C `traceparent` becomes the parent span; else only a span link",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings
    sessions: SessionSettings
    tokens: TokenSettings = TokenSettings()
    limits: LimitSettings = LimitSettings()
    cors: CorsSettings = CorsSettings()
    routes: RouteSettings = RouteSettings()
    jwt_auth: JwtAuthSettings = JwtAuthSettings()
    admin: AdminSettings = AdminSettings()
    log_format: str = setting(
        "auto",
        name="logging.format",
        choices=LOG_FORMATS,
        doc="`json`, `console`, or `auto` (console on a TTY)",
    )
    log_level: str = setting(
        "info",
        name="logging.level",
        choices=LOG_LEVELS,
        lower=True,
        doc="`debug`, `info`, `warning`, `error`",
    )
    metrics_host: str = setting(
        "127.0.0.1", name="metrics.host", doc="the address of the `/metrics` listener"
    )
    metrics_port: int = setting(
        0,
        name="metrics.port",
        minimum=0,
        maximum=65535,
        doc="its own listener for `/metrics` (bind it privately); 0 = none",
    )
    metrics_bearer_token: str = setting(
        "",
        name="metrics.bearer_token",
        secret=True,
        parse=Checker.metrics_token,
        doc="with it, `/metrics` answers only this bearer, on the main port too (32+ chars)",
    )
    cache: CacheSettings = CacheSettings()
    tracing: TracingSettings = TracingSettings()

    # The [partners.<id>] tables; none in a single-account configuration.
    declared_partners: tuple[PartnerSettings, ...] = built(attribute_default=())

    @property
    def partners(self) -> tuple[PartnerSettings, ...]:
        """The partner accounts: the declared ones, or the one [upstream] and [sessions]
        make (derived each time, so a ``replace`` of either is seen)."""
        if self.declared_partners:
            return self.declared_partners
        return (single_partner(self.upstream, self.sessions),)


SCHEMA: tuple[Key, ...] = schema(Settings)
# The keys of one [partners.<id>] table, with "<id>" as its section's last part.
PARTNER_SCHEMA: tuple[Key, ...] = schema(PartnerSettings)


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read *path* (TOML), let ``BROKER_*`` variables override it, validate it all.

    Relative paths in the file (``<key>_file``, ``verify_key_files``) are read from the
    file's directory; relative paths in the environment (``BROKER_..._FILE``), from the
    working directory, as every other program reads a path it is given.
    """
    document: dict[str, Any] = {}
    problems: list[str] = []
    if path is not None:
        document, problems = read_document(path)
    document, tables = _partner_tables(document, problems)
    raw = RawConfig(SCHEMA)
    raw.load(document, environ, _directory(path))
    problems.extend(raw.problems)
    partners = [(partner_id, _partner_raw(partner_id, table, path)) for partner_id, table in tables]
    for _, partner_raw in partners:
        problems.extend(partner_raw.problems)
    if problems:  # wrong types make the semantic checks below meaningless
        raise ConfigError(problems)
    return _build(raw, partners, problems)


def redacted_values(path: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The effective configuration as nested dicts, with every secret redacted."""
    document = read_document(path)[0] if path is not None else {}
    document, tables = _partner_tables(document, [])
    raw = RawConfig(SCHEMA)
    raw.load(document, environ, _directory(path))
    effective: dict[str, Any] = {}
    sources: list[tuple[tuple[Key, ...], RawConfig]] = [(SCHEMA, raw)]
    for partner_id, table in tables:
        partner_raw = _partner_raw(partner_id, table, path)
        sources.append((partner_raw.schema, partner_raw))
    for keys, values in sources:
        for declared in keys:
            value: object = values.get(declared.dotted)
            if declared.secret:
                value = _redact(value)
            section = effective
            for part in declared.section.split("."):
                section = section.setdefault(part, {})
            section[declared.name] = value
    return effective


def unknown_environment(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(name, the closest setting's variable or None) for each ``BROKER_*`` variable in
    *environ* that no key reads: a typo there would otherwise be ignored silently."""
    return RawConfig(SCHEMA).unknown_environment(environ)


def _directory(path: Path | None) -> Path | None:
    # Not resolved: a config file reached through a symlink (a Kubernetes ConfigMap)
    # names paths beside the link, not beside its target.
    return None if path is None else path.absolute().parent


def _redact(value: object) -> object:
    if isinstance(value, list):
        return [f"<redacted, {len(value)} set>"] if value else []
    return "<redacted>" if value else ""


def _partner_tables(
    document: dict[str, Any], problems: list[str]
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The document without its ``[partners]`` table, and that table's partners."""
    if "partners" not in document:
        return document, []
    rest = {name: value for name, value in document.items() if name != "partners"}
    declared = document["partners"]
    if not isinstance(declared, dict) or not declared:
        problems.append("[partners]: expected one [partners.<id>] table per partner account")
        return rest, []
    tables = []
    for partner_id, table in declared.items():
        if not PARTNER_ID.fullmatch(partner_id):
            problems.append(
                f"[partners.{partner_id}]: a partner id is 1-32 characters of a-z, 0-9, _"
                " and -, starting with a letter"
            )
        elif not isinstance(table, dict):
            problems.append(f"partners.{partner_id}: expected a table")
        else:
            tables.append((partner_id, table))
    return rest, tables


class _PartnerRaw(RawConfig):
    """One partner's keys, from its table only: ids are the operator's words, so they
    make no environment variable names (its secrets come from ``<key>_file`` paths)."""

    def __init__(self, partner_id: str) -> None:
        self.partner_id = partner_id
        self.schema = tuple(
            dataclasses.replace(k, section=f"partners.{partner_id}") for k in PARTNER_SCHEMA
        )
        super().__init__(self.schema)


def _partner_raw(partner_id: str, table: dict[str, Any], path: Path | None) -> _PartnerRaw:
    raw = _PartnerRaw(partner_id)
    raw.load({"partners": {partner_id: table}}, {}, _directory(path))
    return raw


def _partner(
    raw: _PartnerRaw, check: Checker, upstream_url: URL, insecure_http: bool
) -> PartnerSettings:
    where = f"partners.{raw.partner_id}"
    url = raw.text(f"{where}.base_url")
    partner = build(
        PartnerSettings,
        raw,
        check,
        section=where,
        id=raw.partner_id,
        base_url=check.base_url(url, insecure_http, where=where) if url else upstream_url,
    )
    check.api_keys(partner.api_keys, f"{where}.api_keys")
    _check_secondary(check, where, partner.secondary_client_id, partner.secondary_client_secret)
    return partner


def _check_secondary(check: Checker, where: str, client_id: str, secret: str) -> None:
    if bool(client_id) != bool(secret):
        check.problems.append(
            f"{where}.secondary_client_id: give both it and secondary_client_secret, or neither"
        )


def _single_partner(
    upstream: UpstreamSettings, sessions: SessionSettings, check: Checker
) -> PartnerSettings:
    """Today's configuration: one account, named ``default``, from [upstream]/[sessions]."""
    for name, value in (
        ("upstream.client_id", upstream.client_id),
        ("upstream.client_secret", upstream.client_secret),
    ):
        if not value:
            check.problems.append(f"{name}: required")
    check.api_keys(sessions.api_keys, "sessions.api_keys")
    _check_secondary(
        check, "upstream", upstream.secondary_client_id, upstream.secondary_client_secret
    )
    return single_partner(upstream, sessions)


def single_partner(upstream: UpstreamSettings, sessions: SessionSettings) -> PartnerSettings:
    return PartnerSettings(
        id=DEFAULT_PARTNER,
        base_url=upstream.base_url,
        client_id=upstream.client_id,
        client_secret=upstream.client_secret,
        secondary_client_id=upstream.secondary_client_id,
        secondary_client_secret=upstream.secondary_client_secret,
        rate_limit_per_second=upstream.rate_limit_per_second,
        api_keys=sessions.api_keys,
    )


def _check_partners(
    partners: list[PartnerSettings],
    upstream: UpstreamSettings,
    sessions: SessionSettings,
    check: Checker,
) -> None:
    for name, value in (
        ("upstream.client_id", upstream.client_id),
        ("upstream.client_secret", upstream.client_secret),
        ("upstream.secondary_client_id", upstream.secondary_client_id),
        ("sessions.api_keys", sessions.api_keys),
    ):
        if value:
            check.problems.append(
                f"{name}: with [partners.<id>] tables, each partner names its own (move it"
                " into one of them)"
            )
    owners: dict[str, str] = {}
    for partner in partners:
        for api_key in partner.api_keys:
            other = owners.setdefault(api_key, partner.id)
            if other != partner.id:
                check.problems.append(
                    f"partners.{partner.id}.api_keys: a key of partners.{other} too (a key"
                    " selects one partner)"
                )


def _build(
    raw: RawConfig, declared: list[tuple[str, _PartnerRaw]], problems: list[str]
) -> Settings:
    """Every key checked on its own by ``build``; here, what spans several keys."""
    check = Checker(problems)
    insecure_http = raw.flag("upstream.allow_insecure_http")
    upstream = build(
        UpstreamSettings,
        raw,
        check,
        base_url=check.base_url(raw.text("upstream.base_url"), insecure_http),
    )
    sessions = build(SessionSettings, raw, check)
    partners = [
        _partner(partner_raw, check, upstream.base_url, insecure_http)
        for _, partner_raw in declared
    ]
    if partners:
        _check_partners(partners, upstream, sessions, check)
    else:
        partners = [_single_partner(upstream, sessions, check)]
    redis = raw.text("cache.backend") == "redis"
    cache = build(
        CacheSettings,
        raw,
        check,
        redis_url=check.redis_url(raw.text("cache.redis_url")) if redis else "",
        encryption_keys=check.encryption_keys(
            raw.text("cache.encryption_key"), raw.strings("cache.decryption_keys"), required=redis
        ),
    )
    jwt_auth = build(JwtAuthSettings, raw, check)
    if jwt_auth.enabled:
        check.jwt_auth(jwt_auth, allow_insecure_http=insecure_http)
    admin = build(AdminSettings, raw, check)
    check.admin(admin)
    settings = build(
        Settings,
        raw,
        check,
        upstream=upstream,
        sessions=sessions,
        cache=cache,
        jwt_auth=jwt_auth,
        admin=admin,
        declared_partners=tuple(partners) if declared else (),
    )
    check.admin_workers(admin, workers=settings.server.workers, backend=cache.backend)
    if problems:
        raise ConfigError(problems)
    return settings

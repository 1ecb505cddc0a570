"""``token-broker doctor --config FILE``: the configuration checked against the world.

Each check prints one line, ``✓`` (passed), ``✗`` (failed, with a hint saying what to
change) or ``-`` (skipped: not configured, or it needs a check that failed first):

- configuration: the file loads (else every problem, and nothing else runs), and no
  ``BROKER_*`` variable is ignored;
- TLS to the upstream (https only): the handshake, the protocol, the certificate's end;
- partner token: an OAuth token obtained with the configured credentials, its latency
  and lifetime;
- init path: ``upstream.checkout_init_path`` answers the partner token as the upstream's
  init endpoint does (with ``--customer``/``--invoice``: mints a checkout JWT for them);
- clock: this machine's clock against the upstream's ``Date`` header;
- session keys: the signing key, and with ``--broker URL`` that broker's JWKS holds it;
- IdP JWKS (``[auth.jwt]`` with ``jwks_url``): fetched, with usable signing keys;
- Redis (``cache.backend = "redis"``): a round trip, version 7 or later, not a
  cluster, and what the namespace holds.

The exit status is 0 when nothing failed, 1 when the configuration does not load, 4 when
any other check failed. No line ever holds a secret or a token: the calls go through
the broker's own ``PartnerApi``, whose errors carry only statuses, and the Redis URL
is shown without its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import json
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import aiohttp
import jwt
from prometheus_client import CollectorRegistry
from yarl import URL

from broker import __version__
from broker.auth.sessions import key_id
from broker.config.model import ConfigError, Settings, load_settings, unknown_environment
from broker.credentials import ID_PATTERN, token_key, valid_id
from broker.errors import BrokerError, CredentialsRejected, GatewayTimeout, NotFound
from broker.observability.metrics import Metrics
from broker.upstream.partner_api import PartnerApi, PartnerTokenRejected, UpstreamRateLimited

EXIT_OK, EXIT_CONFIG, EXIT_CHECK_FAILED = 0, 1, 4
PASSED, FAILED, SKIPPED = "✓", "✗", "-"
USER_AGENT: Final = f"token-broker/{__version__} (doctor)"
# Beyond this, expiry times the upstream sends are misread by this machine.
CLOCK_TOLERANCE: Final = 5.0
# A certificate ending sooner than this is mentioned (the check still passes: it is
# the upstream's to renew).
CERTIFICATE_NOTICE_DAYS: Final = 14
MINIMUM_REDIS: Final = (7, 0)
# The customer of the init path's probe when no --customer/--invoice is given.
PROBE_CUSTOMER: Final = "cus_token_broker_doctor"
# How many namespace keys are counted at most (SCAN is cheap, but a shared Redis may
# hold millions of keys).
NAMESPACE_SCAN_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class Result:
    mark: str
    name: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        hint = f" -> {self.hint}" if self.hint and self.mark == FAILED else ""
        return f"{self.mark} {self.name}: {self.detail}{hint}"


def passed(name: str, detail: str) -> Result:
    return Result(PASSED, name, detail)


def failed(name: str, detail: str, hint: str) -> Result:
    return Result(FAILED, name, detail, hint)


def skipped(name: str, detail: str) -> Result:
    return Result(SKIPPED, name, detail)


@dataclass(slots=True)
class DateSample:
    """An upstream answer's ``Date`` and the local times around its request."""

    sent: float
    received: float
    date: float

    @property
    def skew(self) -> float:
        """Upstream clock minus ours. ``Date`` has whole seconds (floored), so the
        upstream's time was in [date, date + 1): its middle against the round trip's."""
        return self.date + 0.5 - (self.sent + self.received) / 2

    @property
    def uncertainty(self) -> float:
        return 0.5 + (self.received - self.sent) / 2


@dataclass(slots=True)
class Doctor:
    settings: Settings
    http: aiohttp.ClientSession
    timeout: float
    customer: str | None = None
    invoice: str | None = None
    broker: str | None = None
    dates: list[DateSample] = field(default_factory=list)
    partner_token: str | None = None

    @property
    def api(self) -> PartnerApi:
        # The first partner account: the one a single-account configuration describes.
        partner = self.settings.partners[0]
        metrics = Metrics.create(CollectorRegistry())
        return PartnerApi(self.http, self.settings.upstream, partner, metrics)

    async def run(self, out: Callable[[Result], None]) -> None:
        checks: dict[str, Callable[[], Awaitable[Result]]] = {
            "upstream TLS": self.tls,
            "partner token": self.partner,
            "init path": self.init_path,
            "clock": self.clock,
            "session keys": self.session_keys,
            "IdP JWKS": self.idp_jwks,
            "Redis": self.redis,
        }
        for name, check in checks.items():
            try:
                async with asyncio.timeout(self.timeout):
                    result = await check()
            except TimeoutError:
                result = failed(name, f"no answer within {self.timeout:g} s",
                                "raise --timeout, or check the network path")  # fmt: skip
            out(result)

    async def tls(self) -> Result:
        url = self.settings.upstream.base_url
        name = "upstream TLS"
        if url.scheme != "https":
            return skipped(name, f"{_origin(url)} is plain http (upstream.allow_insecure_http)")
        context = ssl.create_default_context()
        host, port = url.raw_host or "", url.port or 443
        try:
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return failed(name, f"{_origin(url)}'s certificate does not verify"
                          f" ({exc.verify_message})",
                          "the upstream must present a certificate this machine's CA store"
                          " trusts (SSL_CERT_FILE names another store)")  # fmt: skip
        except (OSError, ssl.SSLError) as exc:
            return failed(name, f"no TLS connection to {_origin(url)} ({_os_reason(exc)})",
                          "check upstream.base_url and the network path to it")  # fmt: skip
        try:
            tls = writer.get_extra_info("ssl_object")
            version = tls.version() if tls is not None else "TLS"
            certificate = writer.get_extra_info("peercert") or {}
        finally:
            writer.close()
            await _closed(writer)
        ends = certificate.get("notAfter")
        if not isinstance(ends, str):
            return passed(name, f"{version} to {_origin(url)}, certificate verified")
        days = (ssl.cert_time_to_seconds(ends) - time.time()) / 86_400
        end = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(ends), datetime.UTC)
        soon = " (soon)" if days < CERTIFICATE_NOTICE_DAYS else ""
        return passed(
            name,
            f"{version} to {_origin(url)}, certificate verified, valid until"
            f" {end:%Y-%m-%d} ({days:.0f} days{soon})",
        )

    async def partner(self) -> Result:
        upstream = self.settings.upstream
        name = "partner token"
        started = time.perf_counter()
        try:
            answer = await self.api.fetch_oauth_token()
        except CredentialsRejected as exc:
            return failed(name, f"the upstream refused the credentials ({exc.detail})",
                          "check upstream.client_id and upstream.client_secret (they are per"
                          " environment: demo credentials fail in production)")  # fmt: skip
        except BrokerError as exc:
            return failed(name, _upstream_failure(exc, upstream.token_path),
                          _upstream_hint(exc, "upstream.token_path"))  # fmt: skip
        elapsed = time.perf_counter() - started
        self.partner_token = answer.access_token
        return passed(
            name,
            f"obtained from {upstream.token_path} in {elapsed * 1000:.0f} ms;"
            f" lives {answer.expires_in:g} s",
        )

    async def init_path(self) -> Result:
        path = self.settings.upstream.checkout_init_path
        name = "init path"
        if self.partner_token is None:
            return skipped(name, f"{path} needs a partner token")
        if self.customer is not None and self.invoice is not None:
            return await self._mint(self.customer, self.invoice)
        # Without an invoice_id the init endpoint refuses the request (400, "invalid
        # invoice id"): it exists and took the partner token, and nothing is minted. A
        # path that is not the init endpoint answers 404.
        status = await self._probe(path, {"customer_id": PROBE_CUSTOMER})
        if status in {200, 400, 422}:
            return passed(name, f"{path} answers a request without invoice_id with {status},"
                          " as the init endpoint does; give --customer and --invoice to mint"
                          " a checkout JWT")  # fmt: skip
        if status == 404:
            other = _other_init_path(path)
            if await self._probe(other, {"customer_id": PROBE_CUSTOMER}) in {200, 400, 422}:
                return failed(name, f"{path} answered 404 where {other} answers as the init"
                              " endpoint",
                              f'set upstream.checkout_init_path = "{other}"')  # fmt: skip
            return failed(name, f"{path} answered 404: no init endpoint there",
                          "check upstream.checkout_init_path and upstream.base_url")  # fmt: skip
        return failed(name, f"{path} answered {status} to a partner token", _status_hint(status))

    async def _mint(self, customer_id: str, invoice_id: str) -> Result:
        path = self.settings.upstream.checkout_init_path
        name = "init path"
        assert self.partner_token is not None  # noqa: S101 - checked by the caller
        if not valid_id(customer_id) or not valid_id(invoice_id):
            return failed(name, "--customer and --invoice must be ids the broker accepts",
                          f"give ids matching {ID_PATTERN.pattern}")  # fmt: skip
        key = token_key(customer_id, invoice_id)
        started = time.perf_counter()
        try:
            minted = await self.api.mint_checkout_token(self.partner_token, key)
        except NotFound as exc:
            other = _other_init_path(path)
            ids = {"customer_id": customer_id, "invoice_id": invoice_id}
            if await self._probe(other, ids) == 200:
                return failed(name, f"{path} answered {_status(exc)} where {other} minted",
                              f'set upstream.checkout_init_path = "{other}"')  # fmt: skip
            return failed(name, f"{path} answered {_status(exc)} for {key}",
                          "check that this customer owns this invoice in"
                          " this environment (IDs differ between demo and production)")  # fmt: skip
        except PartnerTokenRejected:
            return failed(name, f"{path} refused the partner token (401)",
                          _status_hint(401))  # fmt: skip
        except BrokerError as exc:
            return failed(name, _upstream_failure(exc, path),
                          _upstream_hint(exc, "upstream.checkout_init_path"))  # fmt: skip
        elapsed = time.perf_counter() - started
        lives = minted.expires_at - time.time()
        return passed(
            name,
            f"{path} minted a checkout JWT for {key} in"
            f" {elapsed * 1000:.0f} ms; it lives {lives:.0f} s",
        )

    async def _probe(self, path: str, ids: dict[str, str]) -> int:
        """The status *path* answers a mint request for *ids* (0: no answer); the body,
        which may hold a token, is read and dropped."""
        url = _join(self.settings.upstream.base_url, path)
        headers = {
            "Authorization": f"Bearer {self.partner_token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        body = json.dumps(ids)
        try:
            async with self.http.post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError:
            return 0

    async def clock(self) -> Result:
        name = "clock"
        if not self.dates:
            return skipped(name, "no upstream answer carried a Date header")
        sample = min(self.dates, key=lambda s: s.received - s.sent)  # the tightest
        skew, uncertainty = sample.skew, sample.uncertainty
        detail = (
            f"the upstream's clock is {abs(skew):.1f} s {'ahead of' if skew >= 0 else 'behind'}"
            f" this machine's (±{uncertainty:.1f} s, from its Date header)"
        )
        if abs(skew) - uncertainty > CLOCK_TOLERANCE:
            return failed(name, detail, "synchronise this machine's clock (NTP): the"
                          " upstream's expiry times are read against it")  # fmt: skip
        return passed(name, detail)

    async def session_keys(self) -> Result:
        sessions = self.settings.sessions
        name = "session keys"
        kid = key_id(sessions.signing_key.public_key())
        more = f"; {len(sessions.verify_keys)} older keys verify" if sessions.verify_keys else ""
        local = f"signs ES256 with kid {kid}{more}"
        if self.broker is None:
            return passed(name, f"{local} (give --broker URL to check a running broker's JWKS)")
        url = self.broker.rstrip("/") + "/.well-known/jwks.json"
        try:
            async with self.http.get(url, allow_redirects=False) as response:
                status = response.status
                document = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, ValueError) as exc:
            return failed(name, f"{url}: {_client_reason(exc)}",
                          "check --broker: the running broker's address")  # fmt: skip
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            return failed(name, f"{url} answered {status} without a JWKS",
                          "check --broker: the running broker's address")  # fmt: skip
        kids = [k.get("kid") for k in document["keys"] if isinstance(k, dict)]
        if kid not in kids:
            return failed(name, f"{url} does not publish kid {kid} (it has"
                          f" {', '.join(map(str, kids)) or 'none'})",
                          "that broker signs with another key: deploy this configuration's"
                          " sessions.signing_key_file, or check --config")  # fmt: skip
        return passed(name, f"{local}; {url} publishes it")

    async def idp_jwks(self) -> Result:  # noqa: PLR0911 - one return per outcome
        jwt_auth = self.settings.jwt_auth
        name = "IdP JWKS"
        if not jwt_auth.enabled:
            return skipped(name, "browser-direct sessions are off (auth.jwt.enabled)")
        if not jwt_auth.jwks_url:
            source = "auth.jwt.public_key" if jwt_auth.public_key else "auth.jwt.hs256_secret"
            return skipped(name, f"the IdP's key is configured ({source})")
        url = jwt_auth.jwks_url
        started = time.perf_counter()
        try:
            async with self.http.get(url, allow_redirects=False) as response:
                status = response.status
                raw = await response.read()
        except aiohttp.ClientError as exc:
            return failed(name, f"{url}: {_client_reason(exc)}", "check auth.jwt.jwks_url")
        elapsed = time.perf_counter() - started
        if status != 200:
            return failed(name, f"{url} answered {status}", "check auth.jwt.jwks_url")
        kinds = _usable_keys(raw)
        if kinds is None:
            return failed(name, f"{url} did not answer a JWKS", "check auth.jwt.jwks_url")
        if not kinds:
            return failed(name, f"{url} holds no usable signing key (symmetric keys and"
                          " non-signing keys are never trusted)",
                          "check auth.jwt.jwks_url")  # fmt: skip
        return passed(
            name,
            f"{len(kinds)} signing keys ({', '.join(sorted(set(kinds)))}) from {url}"
            f" in {elapsed * 1000:.0f} ms",
        )

    async def redis(self) -> Result:
        cache = self.settings.cache
        name = "Redis"
        if cache.backend != "redis":
            return skipped(name, "not used (cache.backend = memory)")
        shown = _without_credentials(cache.redis_url)
        try:
            from redis.asyncio import Redis  # noqa: PLC0415 - the [redis] extra
            from redis.exceptions import RedisError  # noqa: PLC0415
        except ImportError:
            return failed(name, "the redis package is not installed",
                          "install token-broker[redis]")  # fmt: skip
        client = Redis.from_url(
            cache.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        try:
            started = time.perf_counter()
            await client.ping()
            round_trip = time.perf_counter() - started
            server = await client.info("server")
            cluster = await client.info("cluster")
            keys = await _count_keys(client, cache.namespace)
        except (RedisError, OSError) as exc:
            reason = str(exc).replace(URL(cache.redis_url).password or "\0", "***")
            return failed(name, f"{shown}: {type(exc).__name__} ({reason})",
                          "check cache.redis_url, and that Redis answers there")  # fmt: skip
        finally:
            await client.aclose()
        version = str(server.get("redis_version", "0"))
        if _version(version) < MINIMUM_REDIS:
            return failed(name, f"{shown} runs Redis {version}",
                          "Redis 7.0 or later is required")  # fmt: skip
        if str(cluster.get("cluster_enabled", "0")) == "1":
            return failed(name, f"{shown} is a Redis Cluster node",
                          "use a single Redis node (or a managed one): Cluster is not"
                          " supported")  # fmt: skip
        held = (
            "empty: no broker has used it yet"
            if keys == 0
            else f"{keys}{'+' if keys >= NAMESPACE_SCAN_LIMIT else ''} keys"
        )
        return passed(
            name,
            f"{shown}: Redis {version}, round trip {round_trip * 1000:.1f} ms; namespace"
            f" {cache.namespace!r}: {held}",
        )


def run_doctor(
    path: Path,
    environ: Mapping[str, str],
    *,
    customer: str | None = None,
    invoice: str | None = None,
    broker: str | None = None,
    timeout: float = 10.0,
) -> int:
    """Print one line per check; the exit status (see the module's doc)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # the marks on an ASCII terminal
    results: list[Result] = []

    def out(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    try:
        settings = load_settings(path, environ)
    except ConfigError as exc:
        out(failed("configuration", f"{path}: {len(exc.problems)} problems",
                   f"token-broker check-config {path}"))  # fmt: skip
        for problem in exc.problems:
            print(f"    {problem}")
        return EXIT_CONFIG
    out(passed("configuration", f"{path} loads"))
    ignored = unknown_environment(environ)
    for name, closest in ignored:
        out(failed("environment", f"{name} is not a setting, so it is ignored",
                   f"did you mean {closest}?" if closest else "unset it"))  # fmt: skip
    asyncio.run(_examine(settings, out, customer, invoice, broker, timeout))
    failures = sum(r.mark == FAILED for r in results)
    checks = sum(r.mark != SKIPPED for r in results)
    if failures:
        print(f"token-broker doctor: {failures} of {checks} checks failed")
        return EXIT_CHECK_FAILED
    print(f"token-broker doctor: all {checks} checks passed")
    return EXIT_OK


async def _examine(
    settings: Settings,
    out: Callable[[Result], None],
    customer: str | None,
    invoice: str | None,
    broker: str | None,
    timeout: float,  # noqa: ASYNC109 - each check's bound, not this coroutine's
) -> None:
    dates: list[DateSample] = []
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, settings.upstream.connect_timeout)
        ),
        trace_configs=[_date_recorder(settings.upstream.base_url, dates)],
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # as the broker: HTTP(S)_PROXY does not reroute its calls
    ) as http:
        doctor = Doctor(settings, http, timeout, customer, invoice, broker, dates)
        await doctor.run(out)


def _date_recorder(upstream: URL, dates: list[DateSample]) -> aiohttp.TraceConfig:
    """Records the ``Date`` of every upstream answer, with the local send and receive
    times: what the clock check compares."""
    trace = aiohttp.TraceConfig()
    origin = _origin(upstream)

    async def started(_session: object, context: SimpleNamespace, _params: object) -> None:
        context.sent = time.time()

    async def ended(
        _session: object, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        received = time.time()
        value = params.response.headers.get("Date")
        if _origin(params.url) != origin or value is None:
            return
        try:
            date = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return
        dates.append(DateSample(sent=context.sent, received=received, date=date))

    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    return trace


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def _count_keys(client: Any, namespace: str) -> int:
    pattern = namespace.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    pattern = pattern.replace("[", "\\[") + ":*"
    count = 0
    async for _ in client.scan_iter(match=pattern, count=1000):
        count += 1
        if count >= NAMESPACE_SCAN_LIMIT:
            break
    return count


def _usable_keys(raw: bytes) -> list[str] | None:
    """The key types of *raw*'s signing keys the broker would use, None if *raw* is
    not a JWKS (the same rules as ``broker.auth.identity``)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return None
    kinds = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue
        try:
            jwt.PyJWK.from_dict(entry)
        except jwt.PyJWKError:
            continue
        kinds.append(str(entry.get("alg") or entry.get("kty")))
    return kinds


def _origin(url: URL) -> str:
    return str(url.origin())


def _join(base: URL, path: str) -> URL:
    return URL(str(base).rstrip("/") + path, encoded=True)


def _other_init_path(path: str) -> str:
    """The other spelling some environments serve (with or without ``/v1``)."""
    return path.removeprefix("/v1") if path.startswith("/v1/") else "/v1" + path


def _status(exc: BrokerError) -> str:
    """The upstream status a partner call's error names ("init answered 404")."""
    detail = exc.detail or ""
    return detail.rsplit(" ", 1)[-1] if "answered" in detail else exc.code


def _upstream_failure(exc: BrokerError, path: str) -> str:
    if isinstance(exc, UpstreamRateLimited):
        return f"{path} answered 429 (rate limited)"
    if isinstance(exc, GatewayTimeout):
        return f"{path} did not answer in time"
    return f"{path}: {exc.detail or exc.code}"


def _upstream_hint(exc: BrokerError, path_key: str) -> str:
    detail = exc.detail or ""
    if "unreachable" in detail:
        return "check upstream.base_url and the network path to it"
    if isinstance(exc, UpstreamRateLimited):
        return "other clients share this API key's 5 calls per second: retry shortly"
    if isinstance(exc, GatewayTimeout):
        return "check upstream.base_url, upstream.connect_timeout and read_timeout"
    return f"check upstream.base_url and {path_key}"


def _status_hint(status: int) -> str:
    if status == 0:
        return "check upstream.base_url and the network path to it"
    if status == 401:
        return "the partner token is not accepted there: check upstream.base_url"
    if status in {404, 405}:
        return "check upstream.checkout_init_path"
    if 300 <= status < 400:
        return "the upstream redirects: check upstream.base_url (scheme and host)"
    return "check upstream.base_url and upstream.checkout_init_path"


def _client_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable ({_os_reason(exc.os_error)})"
    return type(exc).__name__


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _without_credentials(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme == "unix":
        return f"unix:{parsed.path}"
    return str(parsed.with_user(None).with_password(None).with_query(None))


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        parts.append(int(part) if part.isdigit() else 0)
    return tuple(parts)

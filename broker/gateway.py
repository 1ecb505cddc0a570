"""The gateway's long-lived collaborators, created once per app and closed with it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from broker.auth.identity import IdentityVerifier
from broker.auth.ownership import Ownership
from broker.auth.revocations import Revocations
from broker.auth.sessions import ApiKeys, AuthFailure, Session, SessionAuthority
from broker.config.model import Settings
from broker.errors import BrokerError
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.proxy.allowlist import RouteTable
from broker.proxy.cors import CorsPolicy
from broker.proxy.forwarder import Forwarder, TracedForwarder
from broker.proxy.targets import ProxyTargets
from broker.proxy.throttle import TokenBuckets
from broker.tokens.budget import RateBudget, SlidingWindowBudget
from broker.tokens.checkout import CheckoutTokens
from broker.tokens.partner import PartnerToken
from broker.tokens.store import MemoryTokenStore, TokenStore
from broker.upstream.calls import open_session
from broker.upstream.lean import LeanTransport
from broker.upstream.partner_api import PartnerApi
from broker.upstream.traced import TracedTransport
from broker.upstream.transport import AiohttpTransport, UpstreamTransport

if TYPE_CHECKING:
    from broker.redis.backend import RedisBackend

log = get_logger("broker.gateway")


@dataclass(frozen=True, slots=True)
class Connected:
    """What exists only while the app runs: the client session and the token tiers."""

    http: aiohttp.ClientSession
    api: PartnerApi
    partner: PartnerToken
    tokens: CheckoutTokens
    ownership: Ownership
    transport: UpstreamTransport
    forwarder: Forwarder
    shared: RedisBackend | None = None  # with [cache] backend = "redis"


class Gateway:
    """Stored once under ``gateway_key``; runtime state lives inside, never in app keys."""

    def __init__(
        self, settings: Settings, metrics: Metrics, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # None when tracing is off: each place a span would start tests it, nothing more.
        self.tracing = tracing
        self.sessions = SessionAuthority(settings.sessions)
        self.api_keys = ApiKeys(settings.sessions.api_keys)
        self.cors = CorsPolicy(settings.cors)
        # Every proxied URL starts with the origin: made once, not per request.
        self.targets = ProxyTargets(
            str(settings.upstream.base_url).rstrip("/"),
            settings.upstream.proxy_prefixes,
            RouteTable(settings.routes.allow, allow_any=settings.routes.allow_any),
        )
        limits = settings.limits
        self.ip_throttle = TokenBuckets(limits.ip_requests_per_second, limits.ip_burst)
        self.session_throttle = TokenBuckets(
            limits.session_requests_per_second, limits.session_burst
        )
        self.init_throttle = TokenBuckets(limits.init_requests_per_second, limits.init_burst)
        # Revoked sessions must stay refused for as long as they could be presented.
        self.revocations = Revocations(settings.sessions.ttl + settings.sessions.leeway)
        self.identity = (
            IdentityVerifier(settings.jwt_auth, lambda: self.connected.http)
            if settings.jwt_auth.enabled
            else None
        )
        self.draining = False
        self._connected: Connected | None = None
        self._warmup: asyncio.Task[None] | None = None

    @property
    def connected(self) -> Connected:
        if self._connected is None:
            raise RuntimeError("the gateway is not started")
        return self._connected

    # What handlers call: collaborators, each named, rather than the Connected record.
    @property
    def forwarder(self) -> Forwarder:
        return self.connected.forwarder

    @property
    def ownership(self) -> Ownership:
        return self.connected.ownership

    @property
    def token_store(self) -> TokenStore:
        return self.connected.tokens.store

    async def start(self) -> None:
        settings = self.settings.upstream
        shared = await self._open_shared()
        budget: RateBudget = (
            SlidingWindowBudget(settings.rate_limit_per_second) if shared is None else shared.budget
        )
        http = open_session(settings)
        api = PartnerApi(
            http,
            settings,
            self.metrics,
            max_lifetime=self.settings.tokens.max_lifetime,
            tracing=self.tracing,
        )
        partner = PartnerToken(
            api,
            budget,
            self.metrics,
            max_wait=settings.rate_limit_max_wait,
            share=None if shared is None else shared.partner_cache,
        )
        tokens = CheckoutTokens(
            coordinator=None if shared is None else shared.coordinator,
            store=MemoryTokenStore(self.settings.tokens.max_entries),
            api=api,
            partner=partner,
            budget=budget,
            metrics=self.metrics,
            refresh_margin=self.settings.tokens.refresh_margin,
            max_wait=settings.rate_limit_max_wait,
            tracing=self.tracing,
        )
        tokens.start()
        if shared is not None:
            shared.on_eviction(tokens.evict_customer)
        ownership = Ownership(
            api,
            partner,
            budget,
            ttl=self.settings.jwt_auth.ownership_cache_ttl,
            max_wait=settings.rate_limit_max_wait,
        )
        transport: UpstreamTransport = (
            LeanTransport(settings)
            if settings.transport == "lean"
            else AiohttpTransport(
                http,
                max_connections=settings.max_connections,
                pool_wait=settings.pool_wait,
                max_per_holder=settings.max_connections_per_customer,
            )
        )
        self._connected = Connected(
            http=http,
            api=api,
            partner=partner,
            tokens=tokens,
            ownership=ownership,
            transport=transport,
            forwarder=self._forwarder(tokens, transport),
            shared=shared,
        )
        # Fetch the partner token now so that readiness tells the truth from the start.
        self._warmup = asyncio.get_running_loop().create_task(partner.probe())

    def _forwarder(self, tokens: CheckoutTokens, transport: UpstreamTransport) -> Forwarder:
        tracing = self.tracing
        if tracing is None:
            return Forwarder(tokens, transport, self.metrics)
        # Chosen once: with tracing off the proxy path has nothing to test per request.
        traced = TracedTransport(transport, self.settings.upstream.transport, tracing)
        return TracedForwarder(tokens, traced, self.metrics, tracing)

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        if self._connected is not None:
            await self._connected.tokens.close()
            await self._connected.partner.close()
            await self._connected.transport.close()
            await self._connected.http.close()
            if self._connected.shared is not None:
                await self._connected.shared.close()
            self._connected = None
        if self.tracing is not None:
            # Exports what is buffered: blocking network I/O, off the event loop.
            await asyncio.to_thread(self.tracing.close)

    async def _open_shared(self) -> RedisBackend | None:
        cache, upstream = self.settings.cache, self.settings.upstream
        if cache.backend != "redis":
            return None
        # Imported here: redis is an optional extra, needed only for this backend.
        from broker.redis.backend import open_redis_backend  # noqa: PLC0415

        return await open_redis_backend(
            cache,
            self.metrics,
            rate=upstream.rate_limit_per_second,
            refresh_margin=self.settings.tokens.refresh_margin,
            mint_timeout=(
                upstream.rate_limit_max_wait + upstream.connect_timeout + upstream.read_timeout
            ),
            tracing=self.tracing,
        )

    async def authenticate(self, token: str) -> Session:
        """The session behind a browser's bearer token, unless invalid or revoked."""
        session = self.sessions.verify(token)
        customer_id = session.key.customer_id
        if self.revocations.revoked(customer_id, session.issued_at):
            raise AuthFailure("revoked", session.key)
        shared = None if self._connected is None else self._connected.shared
        if shared is not None:
            # Read on every request, so a revocation on any replica holds on the next one.
            before = await shared.revoked_before(customer_id)
            if before is not None and session.issued_at <= before:
                raise AuthFailure("revoked", session.key)
        return session

    async def revoke_customer(self, customer_id: str, before: float) -> int:
        """Evict the customer's checkout JWTs and refuse their sessions issued so far."""
        self.revocations.revoke(customer_id, before)
        evicted = self.connected.tokens.evict_customer(customer_id)
        shared = self.connected.shared
        if shared is not None:
            # Every replica; a ServiceUnavailable (503) tells the operator if not shared.
            until = before + self.settings.sessions.ttl + self.settings.sessions.leeway
            await shared.revoke_sessions(customer_id, before, until)
            await shared.publish_eviction(customer_id)
        return evicted

    def readiness_notes(self) -> list[str]:
        """What readiness should say about a mode that still serves (answered with 200)."""
        shared = None if self._connected is None else self._connected.shared
        note = None if shared is None else shared.health_note()
        return [] if note is None else [note]

    async def readiness_problems(self) -> list[str]:
        """Why this instance should not get traffic now; empty when ready."""
        if self.draining:
            return ["shutting down"]
        if self._connected is None:
            return ["not started"]
        partner = self._connected.partner
        await partner.probe()
        if partner.has_valid_token():
            return []
        error = partner.last_error
        if partner.credentials_rejected:
            return ["partner credentials rejected by the upstream token endpoint"]
        if isinstance(error, BrokerError):
            return [f"partner token unavailable ({error.code})"]
        return ["partner token not yet obtained"]

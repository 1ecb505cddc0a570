"""The gateway's long-lived collaborators, created once per app and closed with it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from broker.checkout_tokens import CheckoutTokens
from broker.cors import CorsPolicy
from broker.errors import BrokerError
from broker.identity import IdentityVerifier
from broker.logs import get_logger
from broker.metrics import Metrics
from broker.ownership import Ownership
from broker.partner_api import PartnerApi
from broker.partner_token import PartnerToken
from broker.rate_budget import SlidingWindowBudget
from broker.revocations import Revocations
from broker.routes import RouteTable
from broker.sessions import ApiKeys, AuthFailure, Session, SessionAuthority
from broker.settings import Settings
from broker.throttle import TokenBuckets
from broker.token_store import MemoryTokenStore
from broker.upstream import open_session

log = get_logger("broker.gateway")


@dataclass(frozen=True, slots=True)
class Connected:
    """What exists only while the app runs: the client session and the token tiers."""

    http: aiohttp.ClientSession
    api: PartnerApi
    partner: PartnerToken
    tokens: CheckoutTokens
    ownership: Ownership


class Gateway:
    """Stored once under ``gateway_key``; runtime state lives inside, never in app keys."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sessions = SessionAuthority(settings.sessions)
        self.api_keys = ApiKeys(settings.sessions.api_keys)
        self.routes = RouteTable(settings.routes.allow, allow_any=settings.routes.allow_any)
        self.cors = CorsPolicy(settings.cors)
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

    async def start(self) -> None:
        settings = self.settings.upstream
        http = open_session(settings)
        api = PartnerApi(http, settings, self.metrics)
        budget = SlidingWindowBudget(settings.rate_limit_per_second)
        partner = PartnerToken(api, budget, self.metrics, max_wait=settings.rate_limit_max_wait)
        tokens = CheckoutTokens(
            store=MemoryTokenStore(self.settings.tokens.max_entries),
            api=api,
            partner=partner,
            budget=budget,
            metrics=self.metrics,
            refresh_margin=self.settings.tokens.refresh_margin,
            max_wait=settings.rate_limit_max_wait,
        )
        tokens.start()
        ownership = Ownership(
            api,
            partner,
            budget,
            ttl=self.settings.jwt_auth.ownership_cache_ttl,
            max_wait=settings.rate_limit_max_wait,
        )
        self._connected = Connected(
            http=http, api=api, partner=partner, tokens=tokens, ownership=ownership
        )
        # Fetch the partner token now so that readiness tells the truth from the start.
        self._warmup = asyncio.get_running_loop().create_task(partner.probe())

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        if self._connected is not None:
            await self._connected.tokens.close()
            await self._connected.partner.close()
            await self._connected.http.close()
            self._connected = None

    def authenticate(self, token: str) -> Session:
        """The session behind a browser's bearer token, unless invalid or revoked."""
        session = self.sessions.verify(token)
        if self.revocations.revoked(session.key.customer_id, session.issued_at):
            raise AuthFailure("revoked")
        return session

    async def revoke_customer(self, customer_id: str, before: float) -> int:
        """Evict the customer's checkout JWTs and refuse their sessions issued so far."""
        self.revocations.revoke(customer_id, before)
        return self.connected.tokens.evict_customer(customer_id)

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

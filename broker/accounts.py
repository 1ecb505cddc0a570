"""One partner account at run time: its upstream calls, token tiers, budget and forwarder.

Everything a partner's sessions are served with hangs off its ``Account``, and nothing
is shared between accounts but the HTTP client session and the metrics registry: each
has its own token cache, rate budget, transport and (with Redis) key names. So a
session of one partner cannot be served with another's token: no lookup path leads
from one account to another's cache.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import aiohttp

from broker.auth.ownership import Ownership
from broker.config.model import DEFAULT_PARTNER, PartnerSettings, Settings
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.proxy.allowlist import RouteTable
from broker.proxy.forwarder import Forwarder
from broker.proxy.targets import ProxyTargets
from broker.tokens.budget import RateBudget, SlidingWindowBudget
from broker.tokens.checkout import CheckoutTokens
from broker.tokens.partner import PartnerToken
from broker.tokens.store import MemoryTokenStore
from broker.upstream.lean import LeanTransport
from broker.upstream.partner_api import PartnerApi
from broker.upstream.traced import TracedTransport
from broker.upstream.transport import AiohttpTransport, UpstreamTransport

if TYPE_CHECKING:
    from broker.redis.backend import RedisBackend


def targets_for(settings: Settings, partner: PartnerSettings) -> ProxyTargets:
    """Where *partner*'s proxied calls go; every proxied URL starts with its origin."""
    return ProxyTargets(
        str(partner.base_url).rstrip("/"),
        settings.upstream.proxy_prefixes,
        RouteTable(settings.routes.allow, allow_any=settings.routes.allow_any),
    )


def redis_namespace(settings: Settings, partner: PartnerSettings) -> str:
    """``default`` keeps the names of a single-account broker however many partners
    are declared: a reload that adds or removes one must not move its keys (and with
    them the revocations every replica reads), and replicas of an older version share
    them during an upgrade. Another partner's keys name it: ``partner=<id>`` is no fixed
    key word and ``=`` is in no customer id, so no key or SCAN pattern of one account
    matches another's."""
    namespace = settings.cache.namespace
    if partner.id == DEFAULT_PARTNER:
        return namespace
    return f"{namespace}:partner={partner.id}"


class Account:
    """A partner account's collaborators, made by ``open_account``, closed with it."""

    def __init__(
        self,
        settings: PartnerSettings,
        *,
        identity: tuple[object, ...],
        metrics: Metrics,
        api: PartnerApi,
        partner_token: PartnerToken,
        tokens: CheckoutTokens,
        ownership: Ownership,
        targets: ProxyTargets,
        transport: UpstreamTransport,
        shared: RedisBackend | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.id = settings.id
        self.settings = settings
        # What must stay the same for a reload to keep this account (and its tokens).
        self.identity = identity
        self.metrics = metrics
        self.api = api
        self.partner_token = partner_token
        self.tokens = tokens
        self.ownership = ownership
        self.targets = targets
        self.transport = transport
        self.forwarder = _forwarder(tokens, transport, metrics, tracing)
        self.shared = shared

    def __repr__(self) -> str:
        return f"Account(id={self.id!r})"

    @property
    def token_identity(self) -> tuple[object, ...]:
        """What this account's checkout JWTs are valid for: an account rebuilt with the
        same may take them over."""
        client_ids = frozenset(c.client_id for c in self.settings.credentials)
        return (self.id, self.settings.base_url, client_ids)

    def adopt(self, settings: PartnerSettings) -> None:
        """A reload changed only what an account reads per call: its credentials."""
        self.settings = settings
        self.api.set_credentials(settings.credentials)

    def readiness_note(self) -> str | None:
        if self.api.on_secondary:
            return (
                f"partner {self.id}: using its secondary credential (the upstream refused"
                " the primary); promote it or fix the primary"
            )
        note = None if self.shared is None else self.shared.health_note()
        return None if note is None else f"partner {self.id}: {note}"

    async def close(self) -> None:
        await self.tokens.close()
        await self.partner_token.close()
        await self.transport.close()
        if self.shared is not None:
            await self.shared.close()


def _forwarder(
    tokens: CheckoutTokens,
    transport: UpstreamTransport,
    metrics: Metrics,
    tracing: Tracing | None,
) -> Forwarder:
    if tracing is None:
        return Forwarder(tokens, transport, metrics)
    # A wrapper chosen once: with tracing off the transport is called as it is.
    name = "lean" if isinstance(transport, LeanTransport) else "aiohttp"
    return Forwarder(tokens, TracedTransport(transport, name, tracing), metrics, tracing)


def identity_of(settings: Settings, partner: PartnerSettings) -> tuple[object, ...]:
    """What an account is made from, secrets aside: equal identities, same account."""
    upstream = dataclasses.replace(
        settings.upstream, client_id="", client_secret="", secondary_client_id="",
        secondary_client_secret="", rate_limit_per_second=0.0,
    )  # fmt: skip
    client_ids = frozenset(credential.client_id for credential in partner.credentials)
    return (
        partner.id,
        partner.base_url,
        client_ids,
        partner.rate_limit_per_second,
        upstream,
        settings.routes,
        settings.tokens,
        settings.cache,
        settings.jwt_auth.ownership_cache_ttl,
        redis_namespace(settings, partner),
    )


async def open_account(
    settings: Settings,
    partner: PartnerSettings,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    tracing: Tracing | None = None,
) -> Account:
    upstream = settings.upstream
    counted = metrics.for_partner(partner.id)
    shared = await _open_shared(settings, partner, counted, tracing)
    budget: RateBudget = (
        SlidingWindowBudget(partner.rate_limit_per_second) if shared is None else shared.budget
    )
    api = PartnerApi(
        http,
        upstream,
        partner,
        counted,
        max_lifetime=settings.tokens.max_lifetime,
        tracing=tracing,
    )
    partner_token = PartnerToken(
        api,
        budget,
        counted,
        max_wait=upstream.rate_limit_max_wait,
        share=None if shared is None else shared.partner_cache,
    )
    tokens = CheckoutTokens(
        coordinator=None if shared is None else shared.coordinator,
        store=MemoryTokenStore(settings.tokens.max_entries),
        api=api,
        partner=partner_token,
        budget=budget,
        metrics=counted,
        refresh_margin=settings.tokens.refresh_margin,
        max_wait=upstream.rate_limit_max_wait,
        tracing=tracing,
    )
    tokens.start()
    if shared is not None:
        shared.on_eviction(tokens.evict_customer)
    ownership = Ownership(
        api,
        partner_token,
        budget,
        ttl=settings.jwt_auth.ownership_cache_ttl,
        max_wait=upstream.rate_limit_max_wait,
    )
    transport: UpstreamTransport = (
        LeanTransport(upstream, base_url=partner.base_url)
        if upstream.transport == "lean"
        else AiohttpTransport(
            http,
            max_connections=upstream.max_connections,
            pool_wait=upstream.pool_wait,
            max_per_holder=upstream.max_connections_per_customer,
        )
    )
    return Account(
        partner,
        identity=identity_of(settings, partner),
        metrics=counted,
        api=api,
        partner_token=partner_token,
        tokens=tokens,
        ownership=ownership,
        targets=targets_for(settings, partner),
        transport=transport,
        shared=shared,
        tracing=tracing,
    )


async def _open_shared(
    settings: Settings, partner: PartnerSettings, metrics: Metrics, tracing: Tracing | None
) -> RedisBackend | None:
    cache, upstream = settings.cache, settings.upstream
    if cache.backend != "redis":
        return None
    # Imported here: redis is an optional extra, needed only for this backend.
    from broker.redis.backend import open_redis_backend  # noqa: PLC0415

    return await open_redis_backend(
        dataclasses.replace(cache, namespace=redis_namespace(settings, partner)),
        metrics,
        rate=partner.rate_limit_per_second,
        refresh_margin=settings.tokens.refresh_margin,
        mint_timeout=(
            upstream.rate_limit_max_wait + upstream.connect_timeout + upstream.read_timeout
        ),
        tracing=tracing,
    )

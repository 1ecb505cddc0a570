"""The token tiers without a network or a wall clock: a fake partner API and virtual time.

``broker.tokens`` sees the upstream only through the two ``PartnerApi`` calls it makes
(the OAuth token, the checkout JWT mint) and time only through the clocks it is given
and the event loop's timers. ``FakePartnerApi`` answers those two calls the way the
sandbox does (short-lived JWTs, refused credentials, 429s, stalled mints) and counts
what it was asked, in the sandbox's own terms; ``VirtualTimeLoop`` is an event loop
whose clock jumps to the next timer whenever nothing is ready. Together a 15-second
scenario takes milliseconds and runs the same way every time. Nothing of aiohttp,
PyJWT or redis is replaced: the fake stands where the upstream would be.

Write a test as ``@in_virtual_time async def test_...`` and build the tiers with
``async with token_tier(...) as tier``, exactly as the gateway assembles them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

import asyncio
import contextlib
import functools
import itertools
import selectors
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec

import jwt
from prometheus_client import CollectorRegistry

from broker.config.model import Credential
from broker.credentials import TokenKey, customer_of, key_ids
from broker.errors import BrokerError, CredentialsRejected
from broker.observability.metrics import Metrics
from broker.tokens.budget import SlidingWindowBudget
from broker.tokens.checkout import CheckoutTokens
from broker.tokens.partner import PartnerToken
from broker.tokens.store import MemoryTokenStore
from broker.upstream.partner_api import (
    MintedToken,
    OAuthToken,
    PartnerApi,
    PartnerTokenRejected,
    UpstreamRateLimited,
)

P = ParamSpec("P")
# Where virtual time starts: small enough that float steps stay finer than asyncio's
# clock resolution (1 ns), so a timer is due exactly when the clock reaches it.
VIRTUAL_START = 1_000_000.0
SIGNING_SECRET = b"fake-partner-api-signing-secret!"  # HS256, 32 bytes
# Real seconds a virtual-time test may take: one that spins (a retry loop that never
# lets time pass) fails instead of hanging the suite.
REAL_TIME_LIMIT = 30.0


# -- virtual time -----------------------------------------------------------------------


class _VirtualClock:
    def __init__(self, now: float) -> None:
        self.now = now


class _SkippingSelector(selectors.BaseSelector):
    """Real readiness, no real waiting: when nothing is ready, the clock moves on by the
    timeout the loop asked for (to its next timer) instead of sleeping through it."""

    def __init__(self, clock: _VirtualClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock
        self._real_deadline = time.monotonic() + REAL_TIME_LIMIT

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if time.monotonic() > self._real_deadline:
            raise RuntimeError(f"virtual time: still running after {REAL_TIME_LIMIT} real s")
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer and nothing ready: in real time this would hang forever.
            raise RuntimeError("virtual time: every task waits and no timer is left")
        self._clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``sleep``, ``wait_for`` and every timer take no
    real time, and ``loop.time()`` is the clock the code under test is given."""

    def __init__(self, start: float = VIRTUAL_START) -> None:
        self._virtual = _VirtualClock(start)
        super().__init__(_SkippingSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.now


def in_virtual_time(
    test: Callable[P, Coroutine[Any, Any, None]],
) -> Callable[P, None]:
    """Run an ``async def`` test on a fresh ``VirtualTimeLoop`` (fixtures still work)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(test(*args, **kwargs))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    return run


# -- the partner API --------------------------------------------------------------------


class FakePartnerApi(PartnerApi):
    """The upstream's token endpoints as the token tiers call them, plus what its
    checkout endpoints would say to a forwarded token (``serve``).

    Faults are plain attributes, switched like the sandbox's ``/_sandbox/faults``:
    ``reject_credentials`` (403 on the OAuth token, 401 to partner tokens on a mint),
    ``rate_limited`` (429 with that Retry-After on every mint), ``stall`` (customer ->
    seconds a mint for them hangs). Counters keep the sandbox's names.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        token_ttl: float = 300.0,
        oauth_ttl: float = 3600.0,
    ) -> None:
        # Not PartnerApi.__init__: no HTTP session, no URLs; only the interface is kept
        # (a subclass, so that the compiled CheckoutTokens accepts it as its api).
        self._clock = clock
        self.partner_id = "default"
        self._credentials = (Credential(client_id="fake-client", client_secret="fake-secret"),)
        self._active = 0
        self._client_ids = frozenset({"fake-client"})
        self.token_ttl = token_ttl
        self.oauth_ttl = oauth_ttl
        self.reject_credentials = False
        self.rate_limited: float | None = None
        self.stall: dict[str, float] = {}
        self.oauth_fetches = 0
        self.mint_calls = 0
        self.tokens_issued = 0
        self.mints_per_key: Counter[str] = Counter()
        self.expired_tokens_seen = 0
        self.unauthorized_served = 0
        self._serial = itertools.count(1)
        self._partner_tokens: set[str] = set()
        self._issued: dict[str, tuple[TokenKey, float]] = {}

    async def fetch_oauth_token(self) -> OAuthToken:
        self.oauth_fetches += 1
        if self.reject_credentials:
            raise CredentialsRejected("token endpoint answered 403", retry_after=5.0)
        token = f"partner-token-{next(self._serial)}"
        self._partner_tokens.add(token)
        return OAuthToken(access_token=token, expires_in=self.oauth_ttl)

    async def mint_checkout_token(self, bearer: str, key: TokenKey) -> MintedToken:
        self.mint_calls += 1
        if self.reject_credentials or bearer not in self._partner_tokens:
            raise PartnerTokenRejected("init answered 401 to the partner token")
        if self.rate_limited is not None:
            raise UpstreamRateLimited("upstream answered 429", retry_after=self.rate_limited)
        if stall := self.stall.get(customer_of(key)):
            await asyncio.sleep(stall)
        now = self._clock()
        expires_at = now + self.token_ttl
        customer_id, invoice_id = key_ids(key)
        claims = {
            "customer_id": customer_id,
            "invoice_id": invoice_id,
            "iat": now,
            "exp": expires_at,  # fractional, as the sandbox's
            "jti": f"fake-{next(self._serial)}",
        }
        token = jwt.encode(claims, SIGNING_SECRET, algorithm="HS256")
        self._issued[token] = (key, expires_at)
        self.tokens_issued += 1
        self.mints_per_key[key] += 1
        return MintedToken(token=token, expires_at=expires_at)

    def serve(self, token: str) -> int:
        """The status a checkout endpoint answers to a call forwarded with *token*: 200
        for a live token this API minted, else 401 (counted as the sandbox counts)."""
        issued = self._issued.get(token)
        if issued is not None and self._clock() < issued[1]:
            return 200
        if issued is not None:
            self.expired_tokens_seen += 1
        self.unauthorized_served += 1
        return 401


# -- the tiers, assembled as the gateway assembles them ---------------------------------


@dataclass
class TokenTier:
    api: FakePartnerApi
    partner: PartnerToken
    tokens: CheckoutTokens
    registry: CollectorRegistry

    def lookups(self, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "broker_token_lookups_total",
            {"partner": "default", "tier": "checkout", "outcome": outcome},
        )
        return value or 0.0

    def cache_entries(self) -> float | None:
        return self.registry.get_sample_value("broker_token_cache_entries", {"partner": "default"})

    async def forward(self, key: TokenKey) -> int:
        """What a forwarded call for *key* gets: the upstream's status for the token the
        tiers hand out, or the broker's own error status when they have none."""
        try:
            lookup = await self.tokens.get(key)
        except BrokerError as exc:
            return exc.status
        return self.api.serve(lookup.token.value)


@contextlib.asynccontextmanager
async def token_tier(
    *,
    token_ttl: float = 300.0,
    refresh_margin: float = 60.0,
    rate_limit_per_second: float = 1000.0,
    max_wait: float = 2.0,
    max_entries: int = 100_000,
) -> AsyncIterator[TokenTier]:
    """Partner token, checkout tokens, store and budget over a ``FakePartnerApi``, on
    the running loop's clock (defaults: the tests' ``make_settings``)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), "use @in_virtual_time"
    clock = loop.time
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    api = FakePartnerApi(clock, token_ttl=token_ttl)
    budget = SlidingWindowBudget(rate_limit_per_second, clock=clock)
    partner = PartnerToken(api, budget, metrics, max_wait=max_wait, clock=clock)
    tokens = CheckoutTokens(
        store=MemoryTokenStore(max_entries, clock=clock),
        api=api,
        partner=partner,
        budget=budget,
        metrics=metrics,
        refresh_margin=refresh_margin,
        max_wait=max_wait,
        clock=clock,
    )
    tokens.start()
    try:
        yield TokenTier(api=api, partner=partner, tokens=tokens, registry=registry)
    finally:
        await tokens.close()
        await partner.close()

"""The vendor's rate budget holds in every sequence: generated schedules of cold keys
arriving, the partner OAuth token expiring while idle, slow OAuth answers and failing
mints; whatever happens, no window of one second holds more than `rate` partner calls
(OAuth fetches and mints together, as the vendor counts them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from broker.credentials import TokenKey, token_key
from broker.errors import BrokerError
from broker.observability.metrics import Metrics
from broker.tokens.budget import SlidingWindowBudget
from broker.tokens.checkout import CheckoutTokens
from broker.tokens.partner import PartnerToken
from broker.tokens.store import MemoryTokenStore
from broker.upstream.partner_api import (
    MintedToken,
    OAuthToken,
    PartnerTokenRejected,
    TransientUpstreamError,
)
from tests.tokens.fakes import FakePartnerApi, VirtualTimeLoop

# The vendor measures any one second; the budget keeps a guard window above it.
VENDOR_WINDOW = 1.0


class CountingPartnerApi(FakePartnerApi):
    """Records when each partner call reaches the upstream; answers slowly or fails on
    the calls the schedule names."""

    def __init__(self, clock: Callable[[], float], *, oauth_latency: float) -> None:
        super().__init__(clock, token_ttl=60.0)
        self.calls: list[float] = []
        self.oauth_latency = oauth_latency
        self.failing_mints: dict[int, str] = {}
        self._mints = 0

    async def fetch_oauth_token(self) -> OAuthToken:
        self.calls.append(self._clock())
        await asyncio.sleep(self.oauth_latency)
        return await super().fetch_oauth_token()

    async def mint_checkout_token(self, bearer: str, key: TokenKey) -> MintedToken:
        self.calls.append(self._clock())
        self._mints += 1
        failure = self.failing_mints.get(self._mints)
        if failure == "5xx":
            raise TransientUpstreamError("upstream answered 503", retry_after=1.0)
        if failure == "401":
            raise PartnerTokenRejected("init answered 401 to the partner token")
        self.mint_calls -= 1  # counted by the parent once
        return await super().mint_checkout_token(bearer, key)


def busiest_window(times: list[float]) -> int:
    times = sorted(times)
    return max(
        (sum(1 for t in times[i:] if t - start < VENDOR_WINDOW) for i, start in enumerate(times)),
        default=0,
    )


arrival = st.tuples(st.floats(0.0, 4.0), st.integers(0, 40))
schedules = st.fixed_dictionaries(
    {
        "rate": st.sampled_from([2.0, 3.0, 5.0]),
        "oauth_ttl": st.floats(0.5, 5.0),
        "oauth_latency": st.floats(0.0, 0.8),
        "idle": st.floats(0.0, 6.0),
        "arrivals": st.lists(arrival, min_size=1, max_size=40),
        "failures": st.dictionaries(
            st.integers(1, 40), st.sampled_from(["5xx", "401"]), max_size=8
        ),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules)
def test_no_second_ever_holds_more_than_rate_partner_calls(schedule: dict[str, object]) -> None:
    loop = VirtualTimeLoop()
    try:
        calls = loop.run_until_complete(_run(schedule))
    finally:
        loop.close()
    rate = schedule["rate"]
    assert isinstance(rate, float)
    assert busiest_window(calls) <= rate, sorted(calls)


def test_a_burst_of_cold_keys_after_the_oauth_token_expired_while_idle() -> None:
    """The issue's sequence: 5/s, OAuth token expired while idle, a slow OAuth answer,
    then a burst of cold keys (11 mints landed within one second before the fix)."""
    schedule: dict[str, object] = {
        "rate": 5.0,
        "oauth_ttl": 2.0,
        "oauth_latency": 0.5,
        "idle": 5.0,
        "arrivals": [(0.0, n) for n in range(20)],
        "failures": {},
    }
    loop = VirtualTimeLoop()
    try:
        calls = loop.run_until_complete(_run(schedule))
    finally:
        loop.close()
    assert busiest_window(calls) <= 5, sorted(calls)


async def _run(schedule: dict[str, object]) -> list[float]:
    rate, oauth_ttl, latency, idle = (
        float(schedule[name])  # type: ignore[arg-type]
        for name in ("rate", "oauth_ttl", "oauth_latency", "idle")
    )
    arrivals = schedule["arrivals"]
    failures = schedule["failures"]
    assert isinstance(arrivals, list)
    assert isinstance(failures, dict)
    loop = asyncio.get_running_loop()
    api = CountingPartnerApi(loop.time, oauth_latency=latency)
    api.oauth_ttl = oauth_ttl
    api.failing_mints = failures
    metrics = Metrics.create(CollectorRegistry())
    budget = SlidingWindowBudget(rate, clock=loop.time)
    # The tiers as the gateway assembles them, over the counting API.
    partner = PartnerToken(api, budget, metrics, max_wait=2.0, clock=loop.time)
    tokens = CheckoutTokens(
        store=MemoryTokenStore(1000, clock=loop.time),
        api=api,
        partner=partner,
        budget=budget,
        metrics=metrics,
        refresh_margin=60.0,
        max_wait=2.0,
        clock=loop.time,
    )
    tokens.start()
    try:
        await partner.get()  # warm: the token then expires while idle
        await asyncio.sleep(idle)

        async def arrive(delay: float, n: int) -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(BrokerError):  # 503 past the wait, a failed mint
                await tokens.get(token_key(f"cus_{n}", f"inv_{n}"))

        await asyncio.gather(*(arrive(delay, n) for delay, n in arrivals))
    finally:
        await tokens.close()
        await partner.close()
    return api.calls

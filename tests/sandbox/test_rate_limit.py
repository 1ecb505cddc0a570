"""The vendor's per-key rate limit, simulated as a sliding one-second window."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.sandbox import SandboxSettings
from broker.sandbox.ratelimit import SlidingWindowLimiter
from broker.sandbox.stats import Stats

Client = TestClient[web.Request, web.Application]
Mint = Callable[[str, str], Awaitable[str]]


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(rate_limit_per_second=3, signing_secret=b"r" * 32)


async def test_partner_calls_beyond_the_limit_get_429_with_retry_after(
    client: Client, partner_token: str
) -> None:
    headers = {"Authorization": f"Bearer {partner_token}"}
    # The OAuth call that made partner_token was the first of three.
    assert (await client.get("/customers/cus_alice", headers=headers)).status == 200
    assert (await client.get("/invoices/inv_alice_1", headers=headers)).status == 200

    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=headers,
    )

    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["code"] == "too_many_requests"
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["rate_limited_served"] == 1


async def test_checkout_calls_do_not_count_against_the_partner_limit(
    client: Client, mint: Mint
) -> None:
    token = await mint("cus_alice", "inv_alice_1")

    for _ in range(10):
        response = await client.get(
            "/checkout/invoice", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200


def test_window_slides_instead_of_resetting_on_whole_seconds() -> None:
    limiter = SlidingWindowLimiter(3)

    assert [limiter.admit("k", t) for t in (10.0, 10.5, 10.9)] == [None, None, None]
    # A fixed bucket would have reset at 11.0; the sliding window still holds three.
    assert limiter.admit("k", 11.0 - 1e-9) is not None
    assert limiter.admit("k", 11.2) is None  # 10.0 has left the window
    assert limiter.admit("k", 11.3) == pytest.approx(0.2)  # 10.5 leaves at 11.5


def test_refused_calls_do_not_extend_the_wait() -> None:
    limiter = SlidingWindowLimiter(1)
    limiter.admit("k", 0.0)

    for t in (0.1, 0.5, 0.9):
        assert limiter.admit("k", t) is not None
    assert limiter.admit("k", 1.0) is None


def test_limit_is_per_client_and_absent_when_unset() -> None:
    limiter = SlidingWindowLimiter(1)
    unlimited = SlidingWindowLimiter(None)

    assert limiter.admit("a", 0.0) is None
    assert limiter.admit("b", 0.0) is None
    assert limiter.admit("a", 0.1) is not None
    assert all(unlimited.admit("a", 0.0) is None for _ in range(100))


def test_max_mints_in_any_second_uses_a_sliding_window() -> None:
    stats = Stats()
    for t in (0.0, 0.5, 1.2, 1.3, 1.4, 2.6):
        stats.record_mint("c", "i", wall=1000 + t, monotonic=t)

    # (0.4, 1.4] holds 0.5, 1.2, 1.3 and 1.4; no whole-second bucket holds four.
    assert stats.max_mints_in_any_second == 4
    assert stats.snapshot()["mint_times"] == [1000.0, 1000.5, 1001.2, 1001.3, 1001.4, 1002.6]


def test_mint_times_keep_only_the_last_ten_thousand() -> None:
    stats = Stats()
    for n in range(10_001):
        stats.record_mint("c", "i", wall=float(n), monotonic=float(n))

    mint_times = stats.snapshot()["mint_times"]
    assert isinstance(mint_times, list)
    assert (len(mint_times), mint_times[0]) == (10_000, 1.0)
    assert stats.tokens_issued == 10_001

"""Fault injection through /_sandbox/faults: each fault, and the patch rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

Client = TestClient[web.Request, web.Application]
Mint = Callable[[str, str], Awaitable[str]]
ALICE = {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def set_faults(client: Client, **faults: object) -> dict[str, Any]:
    response = await client.post("/_sandbox/faults", json=faults)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def invoice_status(client: Client, token: str) -> int:
    return (await client.get("/checkout/invoice", headers=bearer(token))).status


async def init(client: Client, partner_token: str, customer_id: str = "cus_alice") -> int:
    invoice_id = {"cus_alice": "inv_alice_1", "cus_bob": "inv_bob_1"}[customer_id]
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": customer_id, "invoice_id": invoice_id},
        headers=bearer(partner_token),
    )
    return response.status


async def test_faults_start_switched_off(client: Client) -> None:
    response = await client.get("/_sandbox/faults")

    assert await response.json() == {
        "latency_ms": 0.0,
        "mint_latency_ms": 0.0,
        "stall_customers": [],
        "stall_seconds": 30.0,
        "error_rate": 0.0,
        "rate_limit": False,
        "retry_after": 1,
        "token_endpoint_down": False,
        "reject_credentials": False,
        "unauthorized_next": 0,
        "unauthorized_always": False,
        "redirect": False,
    }


async def test_a_patch_merges_into_the_current_faults(client: Client) -> None:
    await set_faults(client, latency_ms=5)
    merged = await set_faults(client, retry_after=9)

    assert (merged["latency_ms"], merged["retry_after"]) == (5.0, 9)


@pytest.mark.parametrize(
    ("patch", "bad"),
    [
        ({"bogus": 1}, {"bogus"}),
        ({"latency_ms": -1}, {"latency_ms"}),
        ({"latency_ms": "10"}, {"latency_ms"}),
        ({"error_rate": 1.5}, {"error_rate"}),
        ({"rate_limit": 1}, {"rate_limit"}),
        ({"unauthorized_next": 1.5}, {"unauthorized_next"}),
        ({"retry_after": True}, {"retry_after"}),
        ({"stall_customers": ["ok", "not ok"]}, {"stall_customers"}),
        ({"redirect": True, "bogus": 1, "error_rate": -0.1}, {"bogus", "error_rate"}),
    ],
)
async def test_a_bad_patch_is_400_and_changes_nothing(
    client: Client, patch: dict[str, object], bad: set[str]
) -> None:
    before = await (await client.get("/_sandbox/faults")).json()

    response = await client.post("/_sandbox/faults", json=patch)

    assert response.status == 400
    assert set((await response.json())["validation_errors"]) == bad
    assert await (await client.get("/_sandbox/faults")).json() == before


async def test_latency_delays_checkout_calls(client: Client, alice_token: str) -> None:
    await set_faults(client, latency_ms=150)

    started = time.monotonic()
    assert await invoice_status(client, alice_token) == 200
    assert time.monotonic() - started >= 0.15


async def test_mint_latency_delays_init(client: Client, partner_token: str) -> None:
    await set_faults(client, mint_latency_ms=150)

    started = time.monotonic()
    assert await init(client, partner_token) == 200
    assert time.monotonic() - started >= 0.15


async def test_stalled_customers_mints_hang_and_others_do_not(
    client: Client, partner_token: str
) -> None:
    await set_faults(client, stall_customers=["cus_bob"], stall_seconds=0.3)

    started = time.monotonic()
    assert await init(client, partner_token, "cus_alice") == 200
    alice_took = time.monotonic() - started
    assert await init(client, partner_token, "cus_bob") == 200
    bob_took = time.monotonic() - started - alice_took

    assert alice_took < 0.3 <= bob_took


async def test_reset_releases_a_stalled_mint(client: Client, partner_token: str) -> None:
    await set_faults(client, stall_customers=["cus_bob"])  # the default 30 s
    stalled = asyncio.ensure_future(init(client, partner_token, "cus_bob"))
    await asyncio.sleep(0.1)
    assert not stalled.done()

    await client.post("/_sandbox/reset")

    assert await asyncio.wait_for(stalled, timeout=2) == 200


async def test_shutdown_does_not_wait_out_a_stalled_mint(
    client: Client, partner_token: str
) -> None:
    await set_faults(client, stall_customers=["cus_bob"])
    stalled = asyncio.ensure_future(init(client, partner_token, "cus_bob"))
    await asyncio.sleep(0.1)

    started = time.monotonic()
    await client.server.close()

    assert time.monotonic() - started < 2
    assert await asyncio.wait_for(stalled, timeout=2) == 200


async def test_error_rate_one_makes_every_checkout_call_500(
    client: Client, alice_token: str
) -> None:
    await set_faults(client, error_rate=1)
    response = await client.get("/checkout/invoice", headers=bearer(alice_token))

    assert response.status == 500
    assert (await response.json())["code"] == "internal_server_error"
    await set_faults(client, error_rate=0)
    assert await invoice_status(client, alice_token) == 200


async def test_rate_limit_fault_refuses_partner_calls_with_retry_after(
    client: Client, partner_token: str, alice_token: str, oauth_headers: dict[str, str]
) -> None:
    await set_faults(client, rate_limit=True, retry_after=7)

    answers = [
        await client.post("/v1/checkout-auth/init", json=ALICE, headers=bearer(partner_token)),
        await client.get("/invoices/inv_alice_1", headers=bearer(partner_token)),
        await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=oauth_headers
        ),
    ]

    assert [(r.status, r.headers["Retry-After"]) for r in answers] == [(429, "7")] * 3
    assert await invoice_status(client, alice_token) == 200
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["rate_limited_served"] == 3


async def test_token_endpoint_down_is_503(client: Client, oauth_headers: dict[str, str]) -> None:
    await set_faults(client, token_endpoint_down=True)

    response = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=oauth_headers
    )

    assert response.status == 503
    assert (await response.json())["code"] == "service_unavailable"


async def test_rejected_credentials_refuse_new_and_existing_partner_tokens(
    client: Client, partner_token: str, oauth_headers: dict[str, str]
) -> None:
    await set_faults(client, reject_credentials=True)

    oauth = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=oauth_headers
    )
    assert oauth.status == 403
    assert await init(client, partner_token) == 401
    await set_faults(client, reject_credentials=False)
    assert await init(client, partner_token) == 200


async def test_unauthorized_next_refuses_that_many_checkout_calls(
    client: Client, alice_token: str
) -> None:
    await set_faults(client, unauthorized_next=2)

    statuses = [await invoice_status(client, alice_token) for _ in range(3)]

    assert statuses == [401, 401, 200]
    faults = await (await client.get("/_sandbox/faults")).json()
    assert faults["unauthorized_next"] == 0
    stats = await (await client.get("/_sandbox/stats")).json()
    assert (stats["unauthorized_served"], stats["expired_tokens_seen"]) == (2, 0)


async def test_unauthorized_always_refuses_even_fresh_tokens(client: Client, mint: Mint) -> None:
    await set_faults(client, unauthorized_always=True)

    fresh = await mint("cus_alice", "inv_alice_1")

    assert [await invoice_status(client, fresh) for _ in range(3)] == [401] * 3


async def test_redirect_answers_302_elsewhere(client: Client, alice_token: str) -> None:
    await set_faults(client, redirect=True)

    response = await client.get(
        "/checkout/v1/invoice", headers=bearer(alice_token), allow_redirects=False
    )

    assert response.status == 302
    assert response.headers["Location"] == "https://elsewhere.invalid/"

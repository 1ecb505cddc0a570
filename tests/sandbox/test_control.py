"""The /_sandbox/ control plane: stats, the request log, reset and invoice set-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

Client = TestClient[web.Request, web.Application]
Mint = Callable[[str, str], Awaitable[str]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_json(client: Client, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def send_raw(client: Client, request: bytes) -> bytes:
    """Write *request* to the socket as-is, so no client library re-encodes it."""
    assert client.host is not None
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()  # Connection: close ends the answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_stats_report_exactly_the_documented_counters(client: Client) -> None:
    stats = await get_json(client, "/_sandbox/stats")

    assert stats == {
        "oauth_tokens_issued": 0,
        "tokens_issued": 0,
        "mints_per_key": {},
        "mint_times": [],
        "max_mints_in_any_second": 0,
        "requests_per_path": {},
        "unauthorized_served": 0,
        "expired_tokens_seen": 0,
        "rate_limited_served": 0,
        "ownership_checks": 0,
    }


async def test_requests_are_counted_per_method_and_path_without_query(
    client: Client, alice_token: str
) -> None:
    for query in ("", "?a=1", "?b=2"):
        await client.get(f"/checkout/invoice{query}", headers=bearer(alice_token))
    await client.get("/checkout/v1/invoice", headers=bearer(alice_token))

    counts = (await get_json(client, "/_sandbox/stats"))["requests_per_path"]
    assert counts == {
        "POST /oauth/token": 1,
        "POST /v1/checkout-auth/init": 1,
        "GET /checkout/invoice": 3,
        "GET /checkout/v1/invoice": 1,
    }


async def test_request_log_keeps_path_query_headers_and_body_byte_exact(client: Client) -> None:
    body = b"caf\xc3\xa9 \xff"
    answer = await send_raw(
        client,
        b"POST /checkout/payments?a=1+2&a=%2B3&c=%7e HTTP/1.1\r\n"
        b"Host: sandbox.test\r\n"
        b"X-Dup: one\r\n"
        b"x-dup: two\r\n"
        b"Idempotency-Key: payment-inv-1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n"
        b"\r\n" + body,
    )
    assert answer.startswith(b"HTTP/1.1 401")

    [entry] = await get_json(client, "/_sandbox/requests")
    assert entry == {
        "method": "POST",
        "raw_path": "/checkout/payments?a=1+2&a=%2B3&c=%7e",
        "headers": [
            ["Host", "sandbox.test"],
            ["X-Dup", "one"],
            ["x-dup", "two"],
            ["Idempotency-Key", "payment-inv-1"],
            ["Content-Length", str(len(body))],
            ["Connection", "close"],
        ],
        "body": "café \ufffd",
    }


async def test_request_log_is_newest_last_and_limited(client: Client) -> None:
    for n in range(5):
        await client.get(f"/invoices/inv_{n}")

    default = await get_json(client, "/_sandbox/requests")
    last_two = await get_json(client, "/_sandbox/requests?limit=2")
    none = await get_json(client, "/_sandbox/requests?limit=0")

    assert [entry["raw_path"] for entry in default] == [f"/invoices/inv_{n}" for n in range(5)]
    assert [entry["raw_path"] for entry in last_two] == ["/invoices/inv_3", "/invoices/inv_4"]
    assert none == []


@pytest.mark.parametrize("limit", ["-1", "abc", "1.5"])
async def test_request_log_limit_must_be_a_count(client: Client, limit: str) -> None:
    response = await client.get(f"/_sandbox/requests?limit={limit}")

    assert response.status == 400


async def test_request_log_keeps_the_last_thousand(client: Client) -> None:
    await asyncio.gather(*(client.get(f"/customers/c{n}") for n in range(1005)))

    log = await get_json(client, "/_sandbox/requests?limit=5000")
    assert len(log) == 1000


async def test_control_plane_calls_are_neither_logged_nor_counted(client: Client) -> None:
    await client.get("/_sandbox/stats")
    await client.get("/_sandbox/faults")
    await client.post("/_sandbox/faults", json={})

    assert await get_json(client, "/_sandbox/requests") == []
    assert (await get_json(client, "/_sandbox/stats"))["requests_per_path"] == {}


async def test_reset_clears_stats_log_and_faults_but_keeps_data_and_tokens(
    client: Client, partner_token: str, mint: Mint
) -> None:
    synthetic = await mint("cus_new", "inv_new")
    await client.post("/_sandbox/faults", json={"latency_ms": 1, "rate_limit": True})

    response = await client.post("/_sandbox/reset")

    assert response.status == 200
    stats = await get_json(client, "/_sandbox/stats")
    assert (stats["tokens_issued"], stats["requests_per_path"]) == (0, {})
    assert await get_json(client, "/_sandbox/requests") == []
    faults = await get_json(client, "/_sandbox/faults")
    assert (faults["latency_ms"], faults["rate_limit"]) == (0.0, False)
    invoice = await client.get("/checkout/invoice", headers=bearer(synthetic))
    assert (await invoice.json())["id"] == "inv_new"
    partner = await client.get("/customers/cus_new", headers=bearer(partner_token))
    assert partner.status == 200


async def test_put_invoice_creates_the_customer_and_sets_currency_and_total(
    client: Client, partner_token: str
) -> None:
    response = await client.post(
        "/_sandbox/invoices",
        json={"id": "inv_x", "customer_id": "cus_x", "currency": "EUR", "total": 12.5},
    )

    assert response.status == 200
    invoice = await (await client.get("/invoices/inv_x", headers=bearer(partner_token))).json()
    assert (invoice["customer_id"], invoice["currency"], invoice["total"]) == ("cus_x", "eur", 12.5)
    customer = await client.get("/customers/cus_x", headers=bearer(partner_token))
    assert customer.status == 200


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ({}, {"id", "customer_id"}),
        ({"id": "inv x", "customer_id": "cus_x"}, {"id"}),
        ({"id": "inv_x", "customer_id": "c" * 65}, {"customer_id"}),
        ({"id": "inv_x", "customer_id": "cus_x", "currency": "dollars"}, {"currency"}),
        ({"id": "inv_x", "customer_id": "cus_x", "total": 0}, {"total"}),
        ({"id": "inv_x", "customer_id": "cus_x", "total": "NaN"}, {"total"}),
        ({"id": "inv_x", "customer_id": "cus_x", "total": 1.005}, {"total"}),
        ({"id": "inv_x", "customer_id": "cus_x", "total": True}, {"total"}),
    ],
)
async def test_put_invoice_validates_its_fields(
    client: Client, body: dict[str, object], bad: set[str]
) -> None:
    response = await client.post("/_sandbox/invoices", json=body)

    assert response.status == 400
    assert set((await response.json())["validation_errors"]) == bad

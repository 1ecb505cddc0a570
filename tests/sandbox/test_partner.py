"""Partner GET /invoices/{id} and /customers/{id}, behind the partner OAuth token."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.sandbox.partner_tokens import PartnerCredentials

Client = TestClient[web.Request, web.Application]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_invoice_has_the_partner_shape_and_counts_as_an_ownership_check(
    client: Client, partner_token: str
) -> None:
    response = await client.get("/invoices/inv_alice_2", headers=bearer(partner_token))

    assert response.status == 200
    body = await response.json()
    assert set(body) == {
        "id",
        "customer_id",
        "invoice_number",
        "status",
        "currency",
        "sub_total",
        "total",
        "due_date",
        "created_at",
        "line_items",
    }
    assert (body["customer_id"], body["status"], body["total"]) == ("cus_alice", "OVERDUE", 1274.99)
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["ownership_checks"] == 1


async def test_customer_has_name_and_email(client: Client, partner_token: str) -> None:
    response = await client.get("/customers/cus_carol", headers=bearer(partner_token))

    body = await response.json()
    assert (body["id"], body["name"], body["email"]) == (
        "cus_carol",
        "Carol Nguyen",
        "carol@example.com",
    )


@pytest.mark.parametrize("path", ["/invoices/inv_nope", "/customers/cus_nope"])
async def test_unknown_ids_are_404(client: Client, partner_token: str, path: str) -> None:
    response = await client.get(path, headers=bearer(partner_token))

    assert response.status == 404
    assert (await response.json())["code"] == "not_found"


@pytest.mark.parametrize("path", ["/invoices/inv_alice_1", "/customers/cus_alice"])
async def test_partner_routes_need_the_partner_token_not_a_checkout_jwt(
    client: Client, alice_token: str, path: str
) -> None:
    missing = await client.get(path)
    checkout = await client.get(path, headers=bearer(alice_token))

    assert (missing.status, checkout.status) == (401, 401)


def test_partner_tokens_expire_after_their_ttl() -> None:
    credentials = PartnerCredentials(client_id="c", client_secret="s", ttl=10)
    token = credentials.issue("c", now=100.0)

    assert credentials.holder(f"Bearer {token}", now=109.9) == "c"
    assert credentials.holder(f"Bearer {token}", now=110.0) is None
    assert credentials.holder(f"bearer {token}", now=100.0) == "c"  # scheme is case-blind
    assert credentials.holder(token, now=100.0) is None


def test_expired_partner_tokens_are_forgotten_when_new_ones_are_issued() -> None:
    credentials = PartnerCredentials(client_id="c", client_secret="s", ttl=10)
    old = credentials.issue("c", now=0.0)
    credentials.issue("c", now=20.0)

    # Even a clock going backwards cannot revive a token that was dropped.
    assert credentials.holder(f"Bearer {old}", now=5.0) is None

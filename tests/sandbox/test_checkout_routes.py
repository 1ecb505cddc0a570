"""The checkout endpoints the SDK calls, under /checkout and /checkout/v1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.sandbox.checkout_requests import CARD, PAYMENT, US_BANK, Client, bearer, call

Mint = Callable[[str, str], Awaitable[str]]
PREFIXES = ["/checkout", "/checkout/v1"]

# (method, path, body, keys the answer must have) for every route of upstream-api §3.
ROUTES: list[tuple[str, str, object, set[str]]] = [
    ("GET", "/preferences/theme", None, {"partner_name", "theme"}),
    ("GET", "/invoice", None, {"id", "customer_id", "sub_total", "total", "line_items"}),
    ("GET", "/invoice/pdf-link", None, {"url"}),
    ("GET", "/payment-methods", None, {"data"}),
    ("GET", "/card-form/credentials", None, {"team_id", "app_id"}),
    (
        "POST",
        "/payment-methods/card",
        CARD,
        {"id", "type", "last4", "default", "brand", "exp_month", "exp_year"},
    ),
    ("POST", "/payment-methods/bank", US_BANK, {"id", "type", "last4", "default"}),
    (
        "POST",
        "/payment-methods/pm_alice_visa/cvv",
        {"cvv_secret": "ev:Tk9D:123", "provider": "evervault"},
        {"success"},
    ),
    ("POST", "/payments", PAYMENT, {"status", "message"}),
    (
        "POST",
        "/address/autocomplete",
        {"q": "350", "country": "us", "sessiontoken": "s1"},
        {"data"},
    ),
    ("POST", "/address/details", {"id": "sbx_place_ny", "sessiontoken": "s1"}, {"data"}),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("method", "path", "body", "keys"), ROUTES)
async def test_every_checkout_route_answers_under_both_prefixes(
    client: Client,
    alice_token: str,
    prefix: str,
    method: str,
    path: str,
    body: object,
    keys: set[str],
) -> None:
    status, answer = await call(client, alice_token, method, prefix + path, body)

    assert status == 200, answer
    assert keys <= set(answer)


@pytest.mark.parametrize(("method", "path", "body", "keys"), ROUTES)
async def test_every_checkout_route_needs_a_token(
    client: Client, method: str, path: str, body: object, keys: set[str]
) -> None:
    response = await client.request(method, "/checkout" + path, json=body)

    assert response.status == 401


async def test_invoice_is_the_tokens_own_in_major_units(client: Client, mint: Mint) -> None:
    _, alice = await call(
        client, await mint("cus_alice", "inv_alice_1"), "GET", "/checkout/invoice"
    )
    _, bob = await call(client, await mint("cus_bob", "inv_bob_1"), "GET", "/checkout/invoice")

    assert alice["id"] == "inv_alice_1"
    assert alice["status"] == "UPCOMING"
    assert alice["sub_total"] == alice["total"] == 1514.0
    assert [(i["quantity"], i["amount"], i["total"]) for i in alice["line_items"]] == [
        (1, 1250.0, 1250.0),
        (12, 22.0, 264.0),
    ]
    assert alice["line_items"][0]["description"] == "Managed IT services, monthly plan"
    assert (bob["id"], bob["customer_id"], bob["currency"]) == ("inv_bob_1", "cus_bob", "cad")
    assert (bob["sub_total"], bob["total"]) == (1800.0, 2034.0)


async def test_pdf_link_is_scheme_less(client: Client, alice_token: str) -> None:
    _, body = await call(client, alice_token, "GET", "/checkout/invoice/pdf-link")

    assert body == {"url": "pay.sandbox.local/pdf/inv_alice_1"}


async def test_address_lookup_finds_and_details_places(client: Client, alice_token: str) -> None:
    search = {"q": "bremner", "country": "CA", "sessiontoken": "s"}
    _, found = await call(client, alice_token, "POST", "/checkout/address/autocomplete", search)
    [place] = found["data"]
    _, details = await call(
        client,
        alice_token,
        "POST",
        "/checkout/address/details",
        {"id": place["place_id"], "sessiontoken": "s"},
    )
    missing, _ = await call(
        client,
        alice_token,
        "POST",
        "/checkout/address/details",
        {"id": "nope", "sessiontoken": "s"},
    )

    assert place["structured_formatting"]["main_text"] == "290 Bremner Boulevard"
    components = details["data"]["result"]["address_components"]
    assert {
        "long_name": "Ontario",
        "short_name": "ON",
        "types": ["administrative_area_level_1"],
    } in components
    assert missing == 404


async def test_a_reassigned_invoice_is_no_longer_visible_to_the_old_token(
    client: Client, alice_token: str
) -> None:
    moved = await client.post(
        "/_sandbox/invoices", json={"id": "inv_alice_1", "customer_id": "cus_bob"}
    )

    assert moved.status == 200
    status, answer = await call(client, alice_token, "GET", "/checkout/invoice")
    assert (status, answer["code"]) == (404, "not_found")


@pytest.mark.parametrize("path", ["/checkout/nothing", "/checkout/v2/invoice", "/checkout/v1"])
async def test_unknown_checkout_paths_are_404_json(
    client: Client, alice_token: str, path: str
) -> None:
    status, answer = await call(client, alice_token, "GET", path)

    assert (status, answer["code"]) == (404, "not_found")


async def test_wrong_method_is_405_with_allow(client: Client, alice_token: str) -> None:
    response = await client.delete("/checkout/v1/invoice", headers=bearer(alice_token))

    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    assert (await response.json())["code"] == "method_not_allowed"

"""Payment methods and payments: per-customer data, and request validation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.sandbox.checkout_requests import ADDRESS, CA_BANK, CARD, PAYMENT, US_BANK, Client, call

Mint = Callable[[str, str], Awaitable[str]]


async def test_payment_methods_are_per_customer_and_adding_appends(
    client: Client, mint: Mint, alice_token: str
) -> None:
    bob = await mint("cus_bob", "inv_bob_1")

    assert (await call(client, bob, "GET", "/checkout/payment-methods"))[1] == {"data": []}
    _, first = await call(client, bob, "POST", "/checkout/payment-methods/bank", CA_BANK)
    _, second = await call(client, bob, "POST", "/checkout/v1/payment-methods/bank", US_BANK)
    _, listed = await call(client, bob, "GET", "/checkout/payment-methods")

    assert first | {"id": "x"} == {"id": "x", "type": "ach", "last4": "4567", "default": True}
    assert (second["last4"], second["default"]) == ("6789", False)
    assert listed == {"data": [first, second]}
    _, alice = await call(client, alice_token, "GET", "/checkout/payment-methods")
    assert [method["id"] for method in alice["data"]] == ["pm_alice_visa"]


async def test_added_card_keeps_expiry_and_trailing_digits(
    client: Client, alice_token: str
) -> None:
    _, card = await call(client, alice_token, "POST", "/checkout/payment-methods/card", CARD)

    assert (card["type"], card["last4"], card["default"]) == ("card", "1111", False)
    assert (card["exp_month"], card["exp_year"]) == (4, 2031)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {},
            {"account_data_type", "institution_name", "receiver_name", "subtype", "type"},
        ),
        (US_BANK | {"us_account_data": None}, {"us_account_data"}),
        (
            US_BANK | {"us_account_data": {"account_number": "12", "routing_number": "1"}},
            {"us_account_data.account_number", "us_account_data.routing_number"},
        ),
        (
            CA_BANK | {"ca_account_data": {}},
            {
                "ca_account_data.account_number",
                "ca_account_data.institution_code",
                "ca_account_data.transit_number",
            },
        ),
        (US_BANK | {"subtype": "brokerage", "type": "credit"}, {"subtype", "type"}),
    ],
)
async def test_bank_account_fields_are_validated(
    client: Client, alice_token: str, body: dict[str, object], errors: set[str]
) -> None:
    status, answer = await call(client, alice_token, "POST", "/checkout/payment-methods/bank", body)

    assert status == 400
    assert answer["code"] == "validation_error"
    assert set(answer["validation_errors"]) == errors


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"card_provider_token", "provider", "address"}),
        (
            {"card_provider_token": "{}", "provider": "evervault", "address": ADDRESS},
            {
                "card_provider_token.number_secret",
                "card_provider_token.holder_name_secret",
                "card_provider_token.expiry_month",
                "card_provider_token.expiry_year",
            },
        ),
        (
            {"card_provider_token": "not json", "provider": "stripe", "address": {}},
            {"card_provider_token", "provider"} | {f"address.{name}" for name in ADDRESS},
        ),
    ],
)
async def test_card_fields_are_validated(
    client: Client, alice_token: str, body: dict[str, object], errors: set[str]
) -> None:
    status, answer = await call(client, alice_token, "POST", "/checkout/payment-methods/card", body)

    assert status == 400
    assert set(answer["validation_errors"]) == errors


async def test_cvv_is_only_for_the_customers_own_cards(client: Client, mint: Mint) -> None:
    bob = await mint("cus_bob", "inv_bob_1")
    body = {"cvv_secret": "ev:123", "provider": "evervault"}

    status, answer = await call(
        client, bob, "POST", "/checkout/payment-methods/pm_alice_visa/cvv", body
    )

    assert status == 404
    assert answer["code"] == "not_found"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-5"}, "amount"),
        ({"amount": 100.5}, "amount"),
        ({"amount": "1.234"}, "amount"),
        ({"payment_date": "yesterday"}, "payment_date"),
        ({"payment_method": "cash"}, "payment_method"),
        ({"payment_method": "standard_ach"}, "payment_method"),
        ({"payment_method_id": "pm_unknown"}, "payment_method_id"),
        ({"payment_method_id": None}, "payment_method_id"),
    ],
)
async def test_payments_are_validated(
    client: Client, alice_token: str, changes: dict[str, object], field: str
) -> None:
    status, answer = await call(
        client, alice_token, "POST", "/checkout/payments", PAYMENT | changes
    )

    assert status == 400
    assert list(answer["validation_errors"]) == [field]


async def test_payment_above_the_invoice_total_is_422(client: Client, alice_token: str) -> None:
    status, answer = await call(
        client, alice_token, "POST", "/checkout/payments", PAYMENT | {"amount": "1514.01"}
    )
    exact, _ = await call(
        client, alice_token, "POST", "/checkout/payments", PAYMENT | {"amount": "1514.00"}
    )

    assert (status, answer["code"]) == (422, "unprocessable_entity")
    assert exact == 200

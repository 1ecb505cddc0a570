"""Checkout endpoints for the token's customer's payment methods: list, add, CVV.

Card data arrives Evervault-encrypted, so the sandbox cannot read a card number;
it keeps trailing digits when a test sends a plain number, and says 4242 otherwise.
"""

from __future__ import annotations

import json
import re
import secrets

from aiohttp import web

from broker.sandbox.bodies import Fields, read_object
from broker.sandbox.checkout_tokens import CheckoutGrant
from broker.sandbox.errors import not_found
from broker.sandbox.guards import checkout_endpoint
from broker.sandbox.records import PaymentMethod, payment_method_json
from broker.sandbox.state import SandboxState

_ADDRESS_FIELDS = (
    "street_address",
    "city",
    "state",
    "state_code",
    "postal_code",
    "country",
    "country_code",
)
_ACCOUNT_DIGITS = re.compile(r"\d{4,17}")
_ROUTING_DIGITS = re.compile(r"\d{9}")
_INSTITUTION_DIGITS = re.compile(r"\d{3}")
_TRANSIT_DIGITS = re.compile(r"\d{5}")
_TRAILING_DIGITS = re.compile(r"(\d{4})\D*$")


@checkout_endpoint
async def list_methods(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    methods = state.catalog.payment_methods(grant.customer_id)
    return web.json_response({"data": [payment_method_json(m) for m in methods]})


@checkout_endpoint
async def add_card(request: web.Request, state: SandboxState, grant: CheckoutGrant) -> web.Response:
    fields = Fields(await read_object(request))
    fields.text("provider", choices=("evervault",))
    address = fields.nested("address")
    for name in _ADDRESS_FIELDS:
        address.text(name)
    number, exp_month, exp_year = "", 0, 0
    # The SDK sends the encrypted card as a JSON document inside a string.
    if (token := _json_object(fields, "card_provider_token")) is not None:
        card = Fields(token, prefix="card_provider_token.", errors=fields.errors)
        number = card.text("number_secret")
        card.text("holder_name_secret")
        exp_month = card.integer("expiry_month", low=1, high=12)
        exp_year = card.integer("expiry_year", low=2000, high=2100)
    fields.check()
    last4 = match.group(1) if (match := _TRAILING_DIGITS.search(number)) else "4242"
    method = PaymentMethod(
        id=_new_method_id(),
        type="card",
        last4=last4,
        default=False,
        brand="visa",
        exp_month=exp_month,
        exp_year=exp_year,
    )
    added = state.catalog.add_payment_method(grant.customer_id, method)
    return web.json_response(payment_method_json(added))


@checkout_endpoint
async def add_bank_account(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    fields = Fields(await read_object(request))
    region = fields.text("account_data_type", choices=("us", "ca"))
    fields.text("institution_name")
    fields.text("receiver_name")
    fields.text("subtype", choices=("checkings", "savings"))
    fields.text("type", choices=("depository",))
    account_number = ""
    if region == "us":
        us = fields.nested("us_account_data")
        account_number = us.text("account_number", pattern=_ACCOUNT_DIGITS)
        us.text("routing_number", pattern=_ROUTING_DIGITS, hint="must be 9 digits")
    elif region == "ca":
        ca = fields.nested("ca_account_data")
        account_number = ca.text("account_number", pattern=_ACCOUNT_DIGITS)
        ca.text("institution_code", pattern=_INSTITUTION_DIGITS, hint="must be 3 digits")
        ca.text("transit_number", pattern=_TRANSIT_DIGITS, hint="must be 5 digits")
    fields.check()
    method = PaymentMethod(
        id=_new_method_id(), type="ach", last4=account_number[-4:], default=False
    )
    added = state.catalog.add_payment_method(grant.customer_id, method)
    return web.json_response(payment_method_json(added))


@checkout_endpoint
async def verify_cvv(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    card_id = request.match_info["card_id"]
    cards = state.catalog.payment_methods(grant.customer_id)
    if not any(m.id == card_id and m.type == "card" for m in cards):
        raise not_found("Payment method not found")
    fields = Fields(await read_object(request))
    fields.text("cvv_secret")
    fields.text("provider", choices=("evervault",))
    fields.check()
    return web.json_response({"success": True})


def _json_object(fields: Fields, name: str) -> dict[str, object] | None:
    """The JSON object encoded in string field *name*; None (and an error) if not."""
    raw = fields.text(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        fields.errors[name] = "must be a JSON object encoded as a string"
        return None
    return value


def _new_method_id() -> str:
    return f"pm_{secrets.token_hex(8)}"

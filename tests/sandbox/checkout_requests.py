"""What tests send to checkout endpoints: valid request bodies and a call helper."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

Client = TestClient[web.Request, web.Application]

ADDRESS = {
    "street_address": "350 5th Avenue",
    "city": "New York",
    "state": "New York",
    "state_code": "NY",
    "postal_code": "10118",
    "country": "United States",
    "country_code": "US",
}
CARD_TOKEN = json.dumps(
    {
        "number_secret": "ev:Tk9D:4111111111111111",
        "holder_name_secret": "ev:Tk9D:alice",
        "expiry_month": 4,
        "expiry_year": 2031,
    }
)
US_BANK = {
    "account_data_type": "us",
    "institution_name": "First Sandbox Bank",
    "receiver_name": "Alice Johnson",
    "subtype": "checkings",
    "type": "depository",
    "us_account_data": {"account_number": "000123456789", "routing_number": "110000000"},
}
CA_BANK = US_BANK | {
    "account_data_type": "ca",
    "ca_account_data": {
        "account_number": "1234567",
        "institution_code": "001",
        "transit_number": "12345",
    },
}
PAYMENT = {
    "amount": "100.50",
    "payment_date": "2026-01-15T10:00:00.000Z",
    "payment_method": "card",
    "payment_method_id": "pm_alice_visa",
}

CARD = {"card_provider_token": CARD_TOKEN, "provider": "evervault", "address": ADDRESS}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    client: Client, token: str, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, path, json=body, headers=bearer(token))
    return response.status, await response.json()

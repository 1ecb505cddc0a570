"""Checkout-token checks: only a live, genuine JWT of this partner gets through."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from broker.sandbox import SandboxSettings, create_sandbox_app

Client = TestClient[web.Request, web.Application]
Mint = Callable[[str, str], Awaitable[str]]
SECRET = b"checkout-auth-test-secret-012345"
TTL = 0.4


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(token_ttl=TTL, signing_secret=SECRET)


async def invoice_status(client: Client, token: str) -> int:
    response = await client.get("/checkout/invoice", headers={"Authorization": f"Bearer {token}"})
    return response.status


async def stats(client: Client) -> dict[str, int]:
    body: dict[str, int] = await (await client.get("/_sandbox/stats")).json()
    return body


def claims(**overrides: object) -> dict[str, object]:
    now = time.time()
    return {
        "partner_id": "partner_sandbox",
        "client_id": "sandbox-client",
        "customer_id": "cus_alice",
        "invoice_id": "inv_alice_1",
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
    } | overrides


async def test_a_fresh_token_is_accepted(client: Client, alice_token: str) -> None:
    assert await invoice_status(client, alice_token) == 200


async def test_an_expired_token_is_401_and_counted_as_expired(
    client: Client, alice_token: str
) -> None:
    await asyncio.sleep(TTL + 0.05)

    response = await client.get(
        "/checkout/invoice", headers={"Authorization": f"Bearer {alice_token}"}
    )

    assert response.status == 401
    assert await response.json() == {"code": "unauthorized", "message": "Access token expired"}
    counters = await stats(client)
    assert counters["expired_tokens_seen"] == 1
    assert counters["unauthorized_served"] == 1


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-jwt", "Basic abc", "Token abc", "Bearer a.b.c"],
)
async def test_missing_or_malformed_authorization_is_401(
    client: Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.get("/checkout/invoice", headers=headers)

    assert response.status == 401
    assert (await response.json())["code"] == "unauthorized"


FORGERIES: dict[str, Callable[[], str]] = {
    "other-key": lambda: jwt.encode(claims(), b"another-secret-of-32-bytes-000000"),
    "other-client": lambda: jwt.encode(claims(client_id="other-client"), SECRET),
    "other-partner": lambda: jwt.encode(claims(partner_id="partner_other"), SECRET),
    "mistyped-exp": lambda: jwt.encode(claims(exp="soon"), SECRET),
    "mistyped-customer": lambda: jwt.encode(claims(customer_id=7), SECRET),
    "no-jti": lambda: jwt.encode({k: v for k, v in claims().items() if k != "jti"}, SECRET),
    "issued-in-future": lambda: jwt.encode(claims(iat=time.time() + 60), SECRET),
    "alg-none": lambda: jwt.encode(claims(), key="", algorithm="none"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_foreign_or_forged_tokens_are_401_and_not_counted_as_expired(
    client: Client, forgery: str
) -> None:
    assert await invoice_status(client, FORGERIES[forgery]()) == 401
    assert (await stats(client))["expired_tokens_seen"] == 0


async def test_a_token_from_a_sandbox_of_another_client_is_401(
    client: Client, aiohttp_client: AiohttpClient
) -> None:
    other = await aiohttp_client(
        create_sandbox_app(SandboxSettings(client_id="other-client", signing_secret=SECRET))
    )
    pair = base64.b64encode(b"other-client:sandbox-secret").decode()
    oauth = await other.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {pair}"},
    )
    init = await other.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers={"Authorization": f"Bearer {(await oauth.json())['access_token']}"},
    )
    foreign = (await init.json())["token"]

    assert await invoice_status(other, foreign) == 200
    assert await invoice_status(client, foreign) == 401


async def test_a_tampered_payload_is_401(client: Client, alice_token: str) -> None:
    header, payload, signature = alice_token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded["invoice_id"] = "inv_alice_2"
    tampered = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()

    assert await invoice_status(client, f"{header}.{tampered}.{signature}") == 401


async def test_revoke_rejects_earlier_tokens_of_that_key_only(client: Client, mint: Mint) -> None:
    revoked = await mint("cus_alice", "inv_alice_1")
    other_key = await mint("cus_alice", "inv_alice_2")

    response = await client.post(
        "/_sandbox/revoke", json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    )
    assert response.status == 200
    fresh = await mint("cus_alice", "inv_alice_1")

    assert await invoice_status(client, revoked) == 401
    assert await invoice_status(client, other_key) == 200
    assert await invoice_status(client, fresh) == 200


@pytest.mark.parametrize("body", [{}, {"customer_id": "cus_alice", "invoice_id": "a b"}])
async def test_revoke_needs_valid_ids(client: Client, body: dict[str, str]) -> None:
    response = await client.post("/_sandbox/revoke", json=body)

    assert response.status == 400

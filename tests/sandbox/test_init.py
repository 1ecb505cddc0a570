"""POST /[v1/]checkout-auth/init: partner bearer in, a checkout JWT for one key out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.sandbox import SandboxSettings

Client = TestClient[web.Request, web.Application]
Mint = Callable[[str, str], Awaitable[str]]
INIT_PATHS = ["/v1/checkout-auth/init", "/checkout-auth/init"]
ALICE = {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(token_ttl=3.0, partner_id="partner_test", signing_secret=b"k" * 32)


@pytest.mark.parametrize("path", INIT_PATHS)
async def test_init_mints_a_checkout_jwt_on_both_paths(
    client: Client, partner_token: str, path: str
) -> None:
    response = await client.post(path, json=ALICE, headers=bearer(partner_token))

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"token", "expires_at"}
    assert isinstance(body["expires_at"], int)


async def test_jwt_carries_the_key_partner_and_a_precise_short_expiry(
    client: Client, partner_token: str, sandbox_settings: SandboxSettings
) -> None:
    response = await client.post(
        "/v1/checkout-auth/init", json=ALICE, headers=bearer(partner_token)
    )
    body = await response.json()

    header = jwt.get_unverified_header(body["token"])
    claims = jwt.decode(body["token"], sandbox_settings.signing_secret, algorithms=["HS256"])
    assert header["alg"] == "HS256"
    assert set(claims) == {
        "partner_id",
        "client_id",
        "customer_id",
        "invoice_id",
        "iat",
        "exp",
        "jti",
    }
    assert claims["partner_id"] == "partner_test"
    assert claims["client_id"] == "sandbox-client"
    assert (claims["customer_id"], claims["invoice_id"]) == ("cus_alice", "inv_alice_1")
    # A 3 s token lives exactly 3 s: exp is not rounded to whole seconds...
    assert claims["exp"] == claims["iat"] + 3.0
    # ...and expires_at never promises more than exp.
    assert body["expires_at"] == int(claims["exp"])


async def test_every_mint_is_a_new_token_and_is_counted(client: Client, mint: Mint) -> None:
    first = await mint("cus_alice", "inv_alice_1")
    second = await mint("cus_alice", "inv_alice_1")
    await mint("cus_bob", "inv_bob_1")

    assert first != second
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["tokens_issued"] == 3
    assert stats["mints_per_key"] == {"cus_alice/inv_alice_1": 2, "cus_bob/inv_bob_1": 1}
    assert len(stats["mint_times"]) == 3
    assert stats["mint_times"] == sorted(stats["mint_times"])


async def test_a_burst_of_mints_sets_max_mints_in_any_second(client: Client, mint: Mint) -> None:
    await asyncio.gather(*(mint("cus_burst", f"inv_burst_{n}") for n in range(5)))

    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["max_mints_in_any_second"] == 5


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer 0000", "Basic c2FuZGJveC1jbGllbnQ6c2FuZGJveC1zZWNyZXQ="],
)
async def test_init_without_a_live_partner_token_is_401(
    client: Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.post("/v1/checkout-auth/init", json=ALICE, headers=headers)

    assert response.status == 401
    assert (await response.json())["code"] == "unauthorized"


async def test_a_checkout_jwt_is_not_a_partner_token(client: Client, alice_token: str) -> None:
    response = await client.post("/v1/checkout-auth/init", json=ALICE, headers=bearer(alice_token))

    assert response.status == 401


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
async def test_body_that_is_not_a_json_object_is_400_bad_request(
    client: Client, partner_token: str, raw: bytes
) -> None:
    response = await client.post("/v1/checkout-auth/init", data=raw, headers=bearer(partner_token))

    assert response.status == 400
    assert (await response.json())["code"] == "bad_request"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"customer_id": "cus_alice"}, "invalid invoice id"),
        ({"customer_id": "cus_alice", "invoice_id": ""}, "invalid invoice id"),
        ({"customer_id": "cus_alice", "invoice_id": "inv/1"}, "invalid invoice id"),
        ({"customer_id": "cus_alice", "invoice_id": "i" * 65}, "invalid invoice id"),
        ({"customer_id": "cus_alice", "invoice_id": 7}, "invalid invoice id"),
        ({"invoice_id": "inv_alice_1"}, "invalid customer id"),
        ({"customer_id": "cus alice", "invoice_id": "inv_alice_1"}, "invalid customer id"),
        ({"customer_id": "cus_alice\n", "invoice_id": "inv_alice_1"}, "invalid customer id"),
    ],
)
async def test_missing_or_malformed_ids_are_400(
    client: Client, partner_token: str, body: dict[str, object], message: str
) -> None:
    response = await client.post("/v1/checkout-auth/init", json=body, headers=bearer(partner_token))

    assert response.status == 400
    assert await response.json() == {"code": "bad_request", "message": message}


async def test_ids_of_64_characters_are_accepted(mint: Mint) -> None:
    await mint("c" * 64, "I-_9" * 16)


async def test_another_customers_invoice_is_404(client: Client, partner_token: str) -> None:
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_bob", "invoice_id": "inv_alice_1"},
        headers=bearer(partner_token),
    )

    assert response.status == 404
    assert (await response.json())["code"] == "not_found"
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["tokens_issued"] == 0


async def test_unknown_keys_are_synthesised_for_the_requesting_customer(
    client: Client, partner_token: str, mint: Mint
) -> None:
    await mint("cus_load_1", "inv_load_1")
    await mint("cus_alice", "inv_new_for_alice")

    invoice = await client.get("/invoices/inv_load_1", headers=bearer(partner_token))
    customer = await client.get("/customers/cus_load_1", headers=bearer(partner_token))
    assert (await invoice.json())["customer_id"] == "cus_load_1"
    assert customer.status == 200
    taken = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_other", "invoice_id": "inv_load_1"},
        headers=bearer(partner_token),
    )
    assert taken.status == 404


class TestWithoutSynthesis:
    @pytest.fixture
    def sandbox_settings(self) -> SandboxSettings:
        return SandboxSettings(synthesize_unknown=False, signing_secret=b"k" * 32)

    @pytest.mark.parametrize(
        ("customer_id", "invoice_id"),
        [
            ("cus_alice", "inv_unknown"),
            ("cus_unknown", "inv_unknown"),
            ("cus_unknown", "inv_bob_1"),
        ],
    )
    async def test_unknown_customer_or_invoice_is_404(
        self, client: Client, partner_token: str, customer_id: str, invoice_id: str
    ) -> None:
        response = await client.post(
            "/v1/checkout-auth/init",
            json={"customer_id": customer_id, "invoice_id": invoice_id},
            headers=bearer(partner_token),
        )

        assert response.status == 404

    async def test_seeded_keys_still_mint(self, mint: Mint) -> None:
        for customer_id, invoice_id in [
            ("cus_alice", "inv_alice_1"),
            ("cus_alice", "inv_alice_2"),
            ("cus_bob", "inv_bob_1"),
            ("cus_carol", "inv_carol_1"),
        ]:
            await mint(customer_id, invoice_id)

"""Session tokens: issued to the partner backend, every forgery refused with 401."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.auth.sessions import key_id
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import (
    API_KEY,
    Sandbox,
    auth,
    b64url,
    hmac_signed,
    make_settings,
    signing_key,
    unsigned,
)
from tests.helpers import session_claims as claims


def sign(payload: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None) -> str:
    key = key or signing_key()
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": key_id(key.public_key())})


async def test_api_key_issues_session_with_design_claims(broker: BrokerClient) -> None:
    response = await broker.post(
        "/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(API_KEY),
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256"
    payload = jwt.decode(body["token"], options={"verify_signature": False})
    assert set(payload) == {
        "iss", "aud", "sub", "customer_id", "invoice_id", "client_id", "iat", "exp", "jti"
    }  # fmt: skip
    assert payload["exp"] == body["expires_at"]
    jwks = await (await broker.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [header["kid"]]
    assert "d" not in jwks["keys"][0]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}),
        (auth("wrong-key-wrong-key-1"), {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}),
        ({"Authorization": f"Basic {API_KEY}"}, {"customer_id": "c", "invoice_id": "i"}),
    ],
)
async def test_init_without_a_valid_api_key_is_401(
    broker: BrokerClient, headers: dict[str, str], body: dict[str, str]
) -> None:
    response = await broker.post("/v1/checkout-auth/init", json=body, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert (await response.json())["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "cus_alice"},
        {"customer_id": "cus alice", "invoice_id": "inv_1"},
        {"customer_id": "c" * 65, "invoice_id": "inv_1"},
        {"customer_id": "cus_1", "invoice_id": "../inv"},
        {"customer_id": 12, "invoice_id": "inv_1"},
        {"customer_id": "cus_1", "invoice_id": "inv\u00e9"},
        ["cus_1", "inv_1"],
    ],
)
async def test_init_with_bad_ids_is_400(broker: BrokerClient, body: object) -> None:
    response = await broker.post("/v1/checkout-auth/init", json=body, headers=auth(API_KEY))
    assert response.status == 400
    assert (await response.json())["code"] == "bad_request"


async def test_init_with_bad_json_is_400(broker: BrokerClient) -> None:
    response = await broker.post("/v1/checkout-auth/init", data=b"{nope", headers=auth(API_KEY))
    assert response.status == 400


def forged_tokens() -> dict[str, str]:
    other = ec.generate_private_key(ec.SECP256R1())
    kid = key_id(signing_key().public_key())
    good = sign(claims())
    head, payload, signature = good.split(".")
    public_pem = (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    tampered_payload = b64url(json.dumps(claims(customer_id="cus_bob", sub="cus_bob")).encode())
    now = int(time.time())
    return {
        "tampered": f"{head}.{tampered_payload}.{signature}",
        "expired": sign(claims(exp=now - 60, iat=now - 700)),
        "wrong_key": jwt.encode(claims(), other, algorithm="ES256", headers={"kid": kid}),
        "unknown_kid": sign(claims(), other),
        "wrong_audience": sign(claims(aud="someone-else")),
        "wrong_issuer": sign(claims(iss="token-broker-evil")),
        "prefix_issuer": sign(claims(iss="token-broke")),
        "alg_none": unsigned({"alg": "none", "typ": "JWT"}, claims()) + ".",
        "alg_NONE_with_kid": unsigned({"alg": "NONE", "kid": kid}, claims()) + ".",
        "hs256_with_public_key": hmac_signed({"alg": "HS256", "kid": kid}, claims(), public_pem),
        "crit_unknown": jwt.encode(
            claims(),
            signing_key(),
            algorithm="ES256",
            headers={"kid": kid, "crit": ["x"], "x": 1},
        ),
        "jku_header": jwt.encode(
            claims(),
            signing_key(),
            algorithm="ES256",
            headers={"kid": kid, "jku": "http://127.0.0.1:9/jwks"},
        ),
        "missing_invoice": sign(claims(invoice_id=None)),
        "bad_customer_id": sign(claims(customer_id="../x", sub="../x")),
        "sub_differs": sign(claims(sub="cus_bob")),
        "exp_as_string": sign({**claims(), "exp": str(now + 600)}),
        "iat_as_string": sign({**claims(), "iat": str(now)}),
        "two_segments": f"{head}.{payload}",
        "four_segments": f"{good}.{signature}",
        "garbage": "not-a-token",
        "huge": "a" * 1_000_000,
    }


@pytest.mark.parametrize("name", sorted(forged_tokens()))
async def test_forged_session_tokens_are_401_without_upstream_call(
    broker: BrokerClient, sandbox: Sandbox, name: str
) -> None:
    token = forged_tokens()[name]
    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status in {401, 400}, name
    if name != "huge":
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert await sandbox.checkout_requests() == []


@pytest.mark.forwarding
async def test_rotation_old_key_still_verifies_new_key_signs(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    old_client = await make_broker(make_settings(sandbox.url))
    old_session = await new_session(old_client)
    new_key = ec.generate_private_key(ec.SECP256R1())
    rotated = await make_broker(
        make_settings(sandbox.url, signing_key=new_key, verify_keys=(signing_key().public_key(),))
    )
    assert (await rotated.get("/checkout/invoice", headers=auth(old_session))).status == 200
    new_session_token = await new_session(rotated)
    assert jwt.get_unverified_header(new_session_token)["kid"] == key_id(new_key.public_key())
    jwks = await (await rotated.get("/.well-known/jwks.json")).json()
    assert len(jwks["keys"]) == 2


async def test_missing_session_is_401(broker: BrokerClient) -> None:
    response = await broker.get("/checkout/invoice")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

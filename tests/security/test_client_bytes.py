"""No 500 from what a client sends: undecodable bytes in Authorization, JSON bodies that
nest deeper than Python's stack or repeat a key, and a session token re-spelt."""

from __future__ import annotations

import base64
import random

import pytest

from broker.auth.sessions import canonical_compact_jws
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import API_KEY, Sandbox, auth, make_settings
from tests.security.conftest import http_request, send_to, split_responses


@pytest.fixture
async def client(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    return await make_broker(make_settings(sandbox.url))


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/checkout/invoice"), ("POST", "/v1/checkout-auth/init")]
)
@pytest.mark.parametrize(
    "value", [b"Bearer \xff\xfe", b"Bearer eyJ\x80", "Bearer é".encode(), b"\xff", b"Basic \xff"]
)
async def test_undecodable_authorization_bytes_get_a_401(
    client: BrokerClient, method: str, path: str, value: bytes
) -> None:
    raw = http_request(method, path, [("Connection", "close"), ("Content-Length", "2")], b"{}")
    raw = raw.replace(b"Connection: close", b"Authorization: " + value + b"\r\nConnection: close")
    statuses, bodies = split_responses((await send_to(client, raw)).data)
    assert statuses == [401], bodies
    assert b'"code": "unauthorized"' in bodies[0]


def generated_field_values(count: int = 64) -> list[bytes]:
    """Bytes a request parser lets through in a field value (never CR, LF or NUL), from
    a fixed seed: every high byte once, then random mixes of printable and not."""
    rng = random.Random(20)
    allowed = [b for b in range(1, 256) if b not in (10, 13, 0)]
    values = [b"Bearer " + bytes([high]) for high in range(0x80, 0x100, 3)]
    while len(values) < count:
        values.append(bytes(rng.choice(allowed) for _ in range(rng.randint(1, 40))).strip())
    return [value for value in values if value]


async def test_any_authorization_bytes_get_a_4xx(client: BrokerClient) -> None:
    for value in generated_field_values():
        for method, path in (("GET", "/checkout/invoice"), ("POST", "/v1/checkout-auth/init")):
            raw = http_request(method, path, [("Connection", "close"), ("Content-Length", "2")])
            raw = raw.replace(
                b"Connection: close", b"Authorization: " + value + b"\r\nConnection: close"
            )
            statuses, _ = split_responses((await send_to(client, raw + b"{}")).data)
            assert len(statuses) == 1, value
            assert 400 <= statuses[0] < 500, (value, statuses)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000, "not valid JSON"),
        (b'{"a":' * 50_000, "not valid JSON"),
        (b'{"customer_id": "cus_alice", "customer_id": "cus_bob", "invoice_id": "inv_alice_1"}',
         "repeats a key"),
        (b'{"invoice_id": "inv_alice_1", "invoice_id": "inv_bob_1", "customer_id": "cus_alice"}',
         "repeats a key"),
        (b'{"invoice_id": ' + b"9" * 5000 + b', "customer_id": "cus_alice"}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)  # fmt: skip
async def test_hostile_init_bodies_get_a_400(
    client: BrokerClient, body: bytes, message: str
) -> None:
    response = await client.post(
        "/v1/checkout-auth/init",
        data=body,
        headers={**auth(API_KEY), "Content-Type": "application/json"},
    )
    assert response.status in (400, 413), await response.text()
    if response.status == 400:
        assert message in (await response.json())["message"]


def respelt(token: str) -> list[str]:
    """The same token's bytes in other spellings a lenient decoder would accept."""
    header, payload, signature = token.split(".")
    padded = [
        ".".join(
            part + "=" * (-len(part) % 4) if i == n else part
            for i, part in enumerate((header, payload, signature))
        )
        for n in range(3)
    ]
    variants = [v for v in padded if v != token]
    # Flip the unused trailing bits of the signature's last character, when it has any.
    if len(signature) % 4:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(signature[-1])
        flipped = alphabet[last ^ 1]
        candidate = f"{header}.{payload}.{signature[:-1]}{flipped}"
        if _decoded(candidate.split(".")[2]) == _decoded(signature):
            variants.append(candidate)
    return variants


def _decoded(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def test_a_session_token_has_one_spelling(client: BrokerClient) -> None:
    token = await new_session(client)
    assert canonical_compact_jws(token)
    variants = respelt(token)
    assert variants
    for variant in variants:
        response = await client.get("/checkout/invoice", headers=auth(variant))
        assert response.status == 401, variant
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200

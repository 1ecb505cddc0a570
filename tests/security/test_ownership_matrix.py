"""Browser-direct sessions: 3 users x 3 customers x 3 invoices, only owned pairs pass.

Each user's IdP token names their customer (claim ``customer``, so users and
customers are distinct identities). Every other combination (a customer that is not
the caller's, an invoice of another customer, an invoice that does not exist) must
get one 404 whose bytes say nothing about which case it was, and must cost no mint
and no cache entry. API-key sessions keep working beside it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import MakeBroker, MakeSandbox, new_session
from tests.helpers import Sandbox, auth
from tests.security.conftest import (
    NOT_FOUND_BODY,
    hardened_settings,
    header_values,
    hs256_mode,
    idp_claims,
    init_with_idp,
    pem_mode,
    sample,
    sign_idp,
    unverified,
)

USERS = {"user_1": "cus_m_a", "user_2": "cus_m_b", "user_3": "cus_m_c"}
CUSTOMERS = ("cus_m_a", "cus_m_b", "cus_m_c")
# inv_m_c_1 exists so that cus_m_c is a real customer; it is not among the probes.
OWNERS = {"inv_m_a_1": "cus_m_a", "inv_m_b_1": "cus_m_b", "inv_m_c_1": "cus_m_c"}
INVOICES = ("inv_m_a_1", "inv_m_b_1", "inv_m_ghost")  # the ghost does not exist
# Headers that legitimately differ between two identical refusals.
_PER_RESPONSE = {"date", "x-request-id"}


def token_for(mode: str, user: str) -> str:
    return sign_idp(mode, idp_claims(user, customer=USERS[user]))


def comparable_headers(headers: Any) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers.items() if k.lower() not in _PER_RESPONSE)


@pytest.mark.forwarding
@pytest.mark.parametrize("mode", ["hs256", "pem"])
async def test_only_owned_pairs_get_sessions_and_refusals_are_indistinguishable(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, mode: str
) -> None:
    sandbox = await make_sandbox(synthesize_unknown=False)
    for invoice_id, customer_id in OWNERS.items():
        await sandbox.post("/_sandbox/invoices", {"id": invoice_id, "customer_id": customer_id})
    jwt_auth = (hs256_mode if mode == "hs256" else pem_mode)(customer_claim="customer")
    registry = CollectorRegistry()
    client = await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth), registry)

    cases: list[tuple[str, str | None, str]] = [
        (user, customer, invoice)
        for user, customer, invoice in itertools.product(USERS, (*CUSTOMERS, None), INVOICES)
    ]
    issued: dict[tuple[str, str | None, str], str] = {}
    refusals: list[tuple[tuple[str, str | None, str], bytes, list[tuple[str, str]]]] = []
    for user, customer, invoice in cases:
        own = USERS[user]
        response = await init_with_idp(client, token_for(mode, user), invoice, customer)
        body = await response.read()
        allowed = OWNERS.get(invoice) == own and customer in (None, own)
        case = (user, customer, invoice)
        if allowed:
            assert response.status == 200, (case, body)
            payload = await response.json()
            claims = unverified(payload["token"])
            assert (claims["customer_id"], claims["invoice_id"]) == (own, invoice), case
            assert claims["sub"] == own
            assert payload["expires_at"] == claims["exp"]
            issued[case] = payload["token"]
        else:
            assert response.status == 404, (case, body)
            assert response.headers.get("WWW-Authenticate") is None
            refusals.append((case, body, comparable_headers(response.headers)))

    # 2 owned invoices x (customer named, customer omitted) = 4 sessions; 32 refusals.
    assert len(issued) == 4
    assert len(refusals) == len(cases) - 4
    first_case, first_body, first_headers = refusals[0]
    assert json.loads(first_body) == NOT_FOUND_BODY
    for case, body, headers in refusals[1:]:
        assert body == first_body, (case, first_case)
        assert headers == first_headers, (case, first_case)

    # Nothing was minted or cached for anyone yet: init never mints.
    stats = await sandbox.stats()
    assert stats["tokens_issued"] == 0
    assert stats["mints_per_key"] == {}
    assert sample(registry, "broker_token_cache_entries") == 0
    assert sample(registry, "broker_sessions_issued_total", {"auth": "jwt"}) == len(issued)
    assert sample(registry, "broker_sessions_issued_total", {"auth": "api_key"}) == 0
    assert await sandbox.checkout_requests() == []

    # Each session reaches its own invoice with a checkout JWT for its own pair only.
    for (user, _customer, invoice), token in issued.items():
        response = await client.get(
            "/checkout/invoice", headers={**auth(token), "X-Request-Id": f"m-{user}-{invoice}"}
        )
        assert response.status == 200, await response.text()
        assert (await response.json())["id"] == invoice
    for recorded in await sandbox.checkout_requests():
        (request_id,) = header_values(recorded, "X-Request-Id")
        _, user, invoice = request_id.split("-", 2)
        (bearer,) = header_values(recorded, "Authorization")
        claims = unverified(bearer.removeprefix("Bearer "))
        assert (claims["customer_id"], claims["invoice_id"]) == (USERS[user], invoice)
    stats = await sandbox.stats()
    assert set(stats["mints_per_key"]) == {"cus_m_a/inv_m_a_1", "cus_m_b/inv_m_b_1"}
    assert stats["tokens_issued"] == 2
    assert sample(registry, "broker_token_cache_entries") == 2  # the gauge does count


@pytest.mark.forwarding
async def test_api_key_and_idp_sessions_work_side_by_side(
    sandbox: Sandbox, make_broker: MakeBroker
) -> None:
    """Both modes at once: the partner backend and the browser each get their sessions."""
    registry = CollectorRegistry()
    client = await make_broker(hardened_settings(sandbox.url, jwt_auth=hs256_mode()), registry)
    partner_session = await new_session(client, "cus_bob", "inv_bob_1")
    response = await init_with_idp(
        client, sign_idp("hs256", idp_claims("cus_alice")), "inv_alice_1"
    )
    assert response.status == 200, await response.text()
    browser_session = (await response.json())["token"]
    for token, invoice in ((partner_session, "inv_bob_1"), (browser_session, "inv_alice_1")):
        answer = await client.get("/checkout/invoice", headers=auth(token))
        assert answer.status == 200
        assert (await answer.json())["id"] == invoice
    assert sample(registry, "broker_sessions_issued_total", {"auth": "api_key"}) == 1
    assert sample(registry, "broker_sessions_issued_total", {"auth": "jwt"}) == 1
    # The IdP token is not an API key, and an API key is not an IdP token: a browser
    # presenting the partner's session or an IdP token on the proxy gets nothing.
    idp_token = sign_idp("hs256", idp_claims("cus_alice"))
    assert (await client.get("/checkout/invoice", headers=auth(idp_token))).status == 401
    assert (await init_with_idp(client, browser_session, "inv_alice_1")).status == 401, (
        "a session token is not an IdP token"
    )


async def test_idp_session_does_not_cross_customers_through_the_body(
    sandbox: Sandbox, make_broker: MakeBroker
) -> None:
    """A body customer_id of another customer is the uniform 404, even for a real pair."""
    client = await make_broker(hardened_settings(sandbox.url, jwt_auth=hs256_mode()))
    token = sign_idp("hs256", idp_claims("cus_alice"))
    response = await init_with_idp(client, token, "inv_bob_1", "cus_bob")
    assert response.status == 404
    assert await response.json() == NOT_FOUND_BODY
    also = await init_with_idp(client, token, "inv_bob_1", path="/checkout-auth/init")
    assert also.status == 404
    assert await also.read() == await response.read()
    stats = await sandbox.stats()
    assert stats["tokens_issued"] == 0


@pytest.mark.parametrize("customer_claim", [None, 12, ["cus_alice"], "../cus", "c" * 65, "cus\n"])
async def test_customer_claim_must_be_a_valid_id_string(
    sandbox: Sandbox, make_broker: MakeBroker, customer_claim: object
) -> None:
    client = await make_broker(
        hardened_settings(sandbox.url, jwt_auth=hs256_mode(customer_claim="customer"))
    )
    claims = idp_claims("user_1")
    if customer_claim is not None:
        claims["customer"] = customer_claim
    response = await init_with_idp(client, sign_idp("hs256", claims), "inv_alice_1")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert (await sandbox.stats())["tokens_issued"] == 0

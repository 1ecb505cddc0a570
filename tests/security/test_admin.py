"""The admin surface: its own application (a second listener in production) sharing
the broker's state, opened only by the admin key; metadata only, never a token;
revocation that makes a customer's live sessions 401 on their very next request;
an audit line for every call.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from broker.config.model import AdminSettings
from broker.web.access_log import AccessLogger
from tests.conftest import BrokerClient, BrokerTestServer, MakeBroker, new_session
from tests.helpers import API_KEY, Sandbox, auth
from tests.security.conftest import (
    ADMIN_KEY,
    hardened_settings,
    header_values,
    hs256_mode,
    http_request,
    idp_claims,
    init_with_idp,
    raw_exchange,
    sign_idp,
)
from tests.security.live import admin_app_factory

AdminClient = TestClient[web.Request, web.Application]
TOKENS = "/admin/v1/customers/{}/tokens"
MakeAdmin = Callable[[BrokerClient], Awaitable[AdminClient]]


@pytest.fixture
def make_admin(aiohttp_client: AiohttpClient) -> MakeAdmin:
    async def make(broker: BrokerClient) -> AdminClient:
        factory = admin_app_factory()
        assert factory is not None, "broker.web.app.create_admin_app does not exist"
        server = BrokerTestServer(factory(broker.app))  # the production runner, as serve()'s
        await server.start_server(access_log_class=AccessLogger)
        return cast(AdminClient, await aiohttp_client(server))

    return make


@pytest.fixture
async def broker(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    admin = AdminSettings(enabled=True, api_key=ADMIN_KEY)
    return await make_broker(hardened_settings(sandbox.url, admin=admin, jwt_auth=hs256_mode()))


async def checkout_jwts(sandbox: Sandbox) -> set[str]:
    """Every checkout JWT the broker has put on the wire to the upstream."""
    return {
        value.removeprefix("Bearer ")
        for request in await sandbox.checkout_requests()
        for value in header_values(request, "Authorization")
    }


def test_the_admin_factory_lives_where_the_spec_says() -> None:
    """``broker.web.app.create_admin_app(main_app)``; other tests also accept broker.web.admin."""
    module = importlib.import_module("broker.web.app")
    assert callable(getattr(module, "create_admin_app", None))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("wrong-admin-key-" + "x" * 32),
        auth(ADMIN_KEY[:-1]),
        auth(ADMIN_KEY + "x"),
        auth(ADMIN_KEY.upper()),
        auth(API_KEY),
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
        {"X-Api-Key": ADMIN_KEY},
    ],
    ids=[
        "none",
        "wrong",
        "prefix",
        "suffix",
        "case",
        "partner-key",
        "basic",
        "no-scheme",
        "header",
    ],
)
async def test_admin_without_the_admin_key_is_401(
    broker: BrokerClient, make_admin: MakeAdmin, headers: dict[str, str]
) -> None:
    admin = await make_admin(broker)
    for method in ("GET", "DELETE"):
        response = await admin.request(method, TOKENS.format("cus_alice"), headers=headers)
        assert response.status == 401, (method, await response.text())
        assert "tokens" not in await response.text()


async def test_a_browser_session_or_idp_token_does_not_open_admin(
    broker: BrokerClient, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    session = await new_session(broker)
    idp = sign_idp("hs256", idp_claims("cus_alice"))
    for token in (session, idp):
        response = await admin.delete(TOKENS.format("cus_alice"), headers=auth(token))
        assert response.status == 401
    assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200


async def test_admin_routes_are_not_served_on_the_public_listener(broker: BrokerClient) -> None:
    for method in ("GET", "DELETE"):
        response = await broker.request(method, TOKENS.format("cus_alice"), headers=auth(ADMIN_KEY))
        assert response.status in {404, 405}
        assert "tokens" not in await response.text()


async def test_the_admin_listener_answers_what_aiohttp_refuses_as_the_broker(
    broker: BrokerClient, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    assert admin.server.port is not None
    bad_key = [("Authorization", f"Bearer {ADMIN_KEY}\x01")]
    reply = await raw_exchange("127.0.0.1", admin.server.port, http_request("GET", "/", bad_key))
    assert reply.statuses == [400]
    assert reply.body_json()["code"] == "bad_request"
    assert b"Server: token-broker\r\n" in reply.data
    assert ADMIN_KEY.encode() not in reply.data


async def test_admin_get_shows_metadata_and_never_a_token(
    broker: BrokerClient, sandbox: Sandbox, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    sessions = [
        await new_session(broker, "cus_alice", "inv_alice_1"),
        await new_session(broker, "cus_alice", "inv_alice_2"),
        await new_session(broker, "cus_bob", "inv_bob_1"),
    ]
    for session in sessions:
        assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200
    upstream_tokens = await checkout_jwts(sandbox)
    assert len(upstream_tokens) == 3

    response = await admin.get(TOKENS.format("cus_alice"), headers=auth(ADMIN_KEY))
    assert response.status == 200
    text = await response.text()
    body = await response.json()
    assert set(body) == {"customer_id", "tokens"}
    assert body["customer_id"] == "cus_alice"
    assert sorted(t["invoice_id"] for t in body["tokens"]) == ["inv_alice_1", "inv_alice_2"]
    now = time.time()
    for entry in body["tokens"]:
        assert set(entry) == {"partner", "invoice_id", "expires_at", "age_s", "fingerprint"}
        assert entry["partner"] == "default"
        assert re.fullmatch(r"[0-9a-f]{12}", entry["fingerprint"])
        assert now < entry["expires_at"] < now + 3600
        assert 0 <= entry["age_s"] < 60
    for secret in (*upstream_tokens, *sessions, ADMIN_KEY, API_KEY):
        assert secret not in text
        for part in secret.split("."):  # not even a JWT segment
            assert len(part) < 12 or part not in text
    assert len({entry["fingerprint"] for entry in body["tokens"]}) == 2

    other = await admin.get(TOKENS.format("cus_carol"), headers=auth(ADMIN_KEY))
    assert await other.json() == {"customer_id": "cus_carol", "tokens": []}


async def test_revocation_makes_the_customers_sessions_401_at_once_and_only_theirs(
    broker: BrokerClient, sandbox: Sandbox, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    alice_partner = await new_session(broker, "cus_alice", "inv_alice_1")
    browser = await init_with_idp(broker, sign_idp("hs256", idp_claims("cus_alice")), "inv_alice_2")
    alice_browser = (await browser.json())["token"]
    bob = await new_session(broker, "cus_bob", "inv_bob_1")
    for session in (alice_partner, alice_browser, bob):
        assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200

    before = time.time()
    response = await admin.delete(TOKENS.format("cus_alice"), headers=auth(ADMIN_KEY))
    after = time.time()
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"customer_id", "evicted", "sessions_revoked_before"}
    assert body["customer_id"] == "cus_alice"
    assert body["evicted"] == 2
    assert before <= body["sessions_revoked_before"] <= after

    # The very next request of each of Alice's sessions is refused, on both prefixes.
    for session in (alice_partner, alice_browser):
        for path in ("/checkout/invoice", "/checkout/v1/payment-methods"):
            refused = await broker.get(path, headers=auth(session))
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert (await broker.get("/checkout/invoice", headers=auth(bob))).status == 200
    listing = await admin.get(TOKENS.format("cus_alice"), headers=auth(ADMIN_KEY))
    assert (await listing.json())["tokens"] == []
    bobs = await admin.get(TOKENS.format("cus_bob"), headers=auth(ADMIN_KEY))
    assert len((await bobs.json())["tokens"]) == 1

    # Sessions issued after the revocation work, with a freshly minted checkout JWT.
    fresh = await new_session(broker, "cus_alice", "inv_alice_1")
    assert (await broker.get("/checkout/invoice", headers=auth(fresh))).status == 200
    again = await init_with_idp(broker, sign_idp("hs256", idp_claims("cus_alice")), "inv_alice_2")
    assert (await broker.get("/checkout/invoice", headers=auth((await again.json())["token"]))).ok
    stats = await sandbox.stats()
    assert stats["mints_per_key"]["cus_alice/inv_alice_1"] == 2
    assert stats["mints_per_key"]["cus_bob/inv_bob_1"] == 1
    for session in (alice_partner, alice_browser):
        assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 401


async def test_every_admin_call_is_audit_logged_without_secrets(
    broker: BrokerClient, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    calls: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "cus_alice", auth(ADMIN_KEY)),
        ("DELETE", "cus_bob", auth(ADMIN_KEY)),
        ("GET", "cus_carol", auth("wrong-admin-key-" + "x" * 32)),
        ("DELETE", "cus_carol", {}),
    ]
    with capture_logs() as logs:
        for method, customer, headers in calls:
            await admin.request(method, TOKENS.format(customer), headers=headers)
    audits = [entry for entry in logs if entry.get("event") == "admin_audit"]
    assert len(audits) == len(calls), audits
    for entry, (_method, customer, _headers) in zip(audits, calls, strict=True):
        assert {"action", "customer_id", "outcome"} <= set(entry), entry
        assert entry["customer_id"] == customer
    assert [entry["outcome"] for entry in audits[:2]] == ["ok", "ok"]
    assert all(entry["outcome"] != "ok" for entry in audits[2:])
    assert audits[0]["action"] != audits[1]["action"]
    flat = repr(logs)
    assert ADMIN_KEY not in flat
    assert "wrong-admin-key-" not in flat


async def test_a_malformed_customer_id_is_400_with_the_key(
    broker: BrokerClient, make_admin: MakeAdmin
) -> None:
    admin = await make_admin(broker)
    response = await admin.delete(TOKENS.format("c" * 65), headers=auth(ADMIN_KEY))
    assert response.status == 400
    for customer in ("cus%00x", "cus%0ax", "cus%20x", "cus%2Fx"):
        response = await admin.delete(TOKENS.format(customer), headers=auth(ADMIN_KEY))
        assert response.status in {400, 404}, customer

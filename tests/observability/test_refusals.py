"""Every refusal's request_finished line says who asked for what and why; the answer
stays uniform (one 401 body, one 404 body), and no line holds the credential."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from broker.auth.sessions import key_id
from broker.config.model import Settings
from broker.web.keys import gateway_key
from tests.conftest import BrokerClient, LogCapture, MakeBroker, new_session
from tests.helpers import Sandbox, auth, session_claims
from tests.security.conftest import (
    hardened_settings,
    hs256_mode,
    idp_claims,
    init_with_idp,
    sign_idp,
)

UNAUTHORIZED = {
    "code": "unauthorized",
    "message": "The access token is missing, invalid or expired.",
}


def finished(logs: LogCapture, request_id: str) -> dict[str, Any]:
    [line] = [e for e in logs.events("request_finished") if e.get("request_id") == request_id]
    return line


def signed_session(settings: Settings, key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    """A session token as the broker's own key would sign it, or *key* under its kid."""
    kid = key_id(settings.sessions.signing_key.public_key())
    return jwt.encode(session_claims(**claims), key, algorithm="ES256", headers={"kid": kid})


async def test_each_401_logs_its_reason_and_answers_the_same(
    make_broker: MakeBroker, sandbox: Sandbox, logs: LogCapture
) -> None:
    settings = hardened_settings(sandbox.url)
    broker = await make_broker(settings)
    own = settings.sessions.signing_key
    past = int(time.time()) - 3600
    presented = {
        "missing": None,
        "malformed": "Basic dXNlcjpwYXNz",
        "expired": signed_session(settings, own, iat=past - 60, exp=past),
        "bad_signature": signed_session(settings, ec.generate_private_key(ec.SECP256R1())),
        "wrong_audience": signed_session(settings, own, aud="someone-else"),
        "missing_claim": signed_session(settings, own, jti=None),
    }
    bodies = []
    for reason, credential in presented.items():
        headers = {} if credential is None else {"Authorization": credential}
        if credential is not None and not credential.startswith("Basic"):
            headers = auth(credential)
        response = await broker.get("/checkout/invoice", headers=headers)
        assert response.status == 401, reason
        bodies.append(await response.json())
        line = finished(logs, response.headers["X-Request-Id"])
        assert line["reason"] == reason
        assert line["auth"] == "session"
        assert line["error_code"] == "unauthorized"
    assert all(body == UNAUTHORIZED for body in bodies)
    for credential in presented.values():
        if credential is not None:
            assert credential.split()[-1] not in logs.text


async def test_a_revoked_session_names_its_customer(
    make_broker: MakeBroker, sandbox: Sandbox, logs: LogCapture
) -> None:
    broker = await make_broker(hardened_settings(sandbox.url))
    token = await new_session(broker, "cus_bob", "inv_bob_1")
    await broker.app[gateway_key].revoke_customer("cus_bob", time.time())
    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED
    line = finished(logs, response.headers["X-Request-Id"])
    assert (line["reason"], line["customer_id"], line["invoice_id"]) == (
        "revoked",
        "cus_bob",
        "inv_bob_1",
    )
    assert token not in logs.text


async def test_an_unknown_api_key_is_logged_with_what_it_asked_for(
    make_broker: MakeBroker, sandbox: Sandbox, logs: LogCapture
) -> None:
    broker = await make_broker(hardened_settings(sandbox.url))
    guessed = "guessed-key-0123456789abcdef"
    response = await broker.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(guessed),
    )
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED
    line = finished(logs, response.headers["X-Request-Id"])
    assert line["reason"] == "unknown_api_key"
    assert line["auth"] == "api_key"
    assert (line["customer_id"], line["invoice_id"]) == ("cus_alice", "inv_alice_1")
    assert guessed not in logs.text


async def test_an_idp_caller_refused_a_session_is_logged_with_who_and_what(
    make_broker: MakeBroker, sandbox: Sandbox, logs: LogCapture
) -> None:
    broker = await make_broker(hardened_settings(sandbox.url, jwt_auth=hs256_mode()))
    alice = sign_idp("hs256", idp_claims("cus_alice"))
    not_hers = await init_with_idp(broker, alice, "inv_bob_1")
    other_customer = await init_with_idp(broker, alice, "inv_bob_1", customer_id="cus_bob")
    bodies = [await not_hers.json(), await other_customer.json()]
    assert not_hers.status == other_customer.status == 404
    assert bodies[0] == bodies[1]
    owned = finished(logs, not_hers.headers["X-Request-Id"])
    assert owned["auth"] == "jwt"
    assert (owned["caller"], owned["customer_id"], owned["invoice_id"]) == (
        "cus_alice",
        "cus_alice",
        "inv_bob_1",
    )
    assert "not owned" in owned["reason"]
    asked = finished(logs, other_customer.headers["X-Request-Id"])
    assert (asked["caller"], asked["customer_id"]) == ("cus_alice", "cus_bob")
    assert "not the caller's" in asked["reason"]
    expired = sign_idp("hs256", idp_claims("cus_alice", exp=int(time.time()) - 3600))
    refused = await init_with_idp(broker, expired, "inv_alice_1")
    assert refused.status == 401
    line = finished(logs, refused.headers["X-Request-Id"])
    assert (line["reason"], line["auth"], line["invoice_id"]) == ("expired", "jwt", "inv_alice_1")
    assert "caller" not in line
    for token in (alice, expired):
        assert token not in logs.text
    assert all("reason" not in body.get("message", "") for body in bodies)


async def test_an_answered_request_logs_no_refusal_fields(
    broker: BrokerClient, logs: LogCapture
) -> None:
    token = await new_session(broker)
    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status == 200
    line = finished(logs, response.headers["X-Request-Id"])
    assert not {"reason", "auth", "caller"} & set(line)

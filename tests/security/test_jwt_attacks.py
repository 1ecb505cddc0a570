"""Forged, confused and malformed JWTs, on both doors: the IdP token at init and the
broker's own session token on the proxy. Every one is a 401 (a 400 at most for a
header too large to parse), no 5xx, and nothing reaches the upstream checkout API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from broker.auth.sessions import key_id
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import (
    Sandbox,
    auth,
    b64url,
    hmac_signed,
    self_signed_certificate,
    session_claims,
    signing_key,
    unsigned,
)
from tests.security.conftest import (
    HS256_SECRET,
    IDP_AUDIENCE,
    IDP_ISSUER,
    INVALID_TOKEN,
    Tripwire,
    attacker_ec_key,
    attacker_rsa_key,
    hardened_settings,
    hs256_mode,
    idp_claims,
    idp_rsa_key,
    init_with_idp,
    pem_mode,
    public_pem,
    sample,
    sign_idp,
    sign_idp_raw,
    upstream_traffic,
)

TokenFactory = Callable[[str, Tripwire], str]


def _self_signed_cert_b64(key: Any) -> str:
    cert = self_signed_certificate(key, "attacker")
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


# -- IdP tokens (init) ----------------------------------------------------------------


def _attacker_signed(mode: str, claims: dict[str, Any], headers: dict[str, Any]) -> str:
    """Signed with a key the attacker holds, in the algorithm family of *mode*."""
    if mode == "hs256":
        return jwt.encode(claims, b"attacker-secret-" * 4, algorithm="HS256", headers=headers)
    return jwt.encode(claims, attacker_rsa_key(), algorithm="RS256", headers=headers)


def _idp_attacks() -> dict[str, TokenFactory]:
    def good_claims() -> dict[str, Any]:
        return idp_claims("cus_alice")

    def real(mode: str, **claims: Any) -> str:
        return sign_idp(mode, idp_claims("cus_alice", **claims))

    def now() -> int:
        return int(time.time())

    pem = public_pem(idp_rsa_key())
    der = (
        idp_rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    attacks: dict[str, TokenFactory] = {
        "alg_none": lambda m, w: unsigned({"alg": "none", "typ": "JWT"}, good_claims()) + ".",
        "alg_None": lambda m, w: unsigned({"alg": "None", "typ": "JWT"}, good_claims()) + ".",
        "alg_NONE": lambda m, w: unsigned({"alg": "NONE", "typ": "JWT"}, good_claims()) + ".",
        "alg_none_with_signature": lambda m, w: (
            unsigned({"alg": "none"}, good_claims()) + "." + b64url(b"sig")
        ),
        "hs256_with_public_pem_as_secret": lambda m, w: hmac_signed(
            {"alg": "HS256", "typ": "JWT"}, good_claims(), pem
        ),
        "hs256_with_public_pem_no_newline": lambda m, w: hmac_signed(
            {"alg": "HS256"}, good_claims(), pem.strip()
        ),
        "hs256_with_public_der_as_secret": lambda m, w: hmac_signed(
            {"alg": "HS256"}, good_claims(), der
        ),
        "hs384_with_the_real_secret": lambda m, w: jwt.encode(
            good_claims(), HS256_SECRET, algorithm="HS384"
        ),
        "rs256_from_attacker_key": lambda m, w: jwt.encode(
            good_claims(), attacker_rsa_key(), algorithm="RS256"
        ),
        "es256_from_attacker_key": lambda m, w: jwt.encode(
            good_claims(), attacker_ec_key(), algorithm="ES256"
        ),
        "unknown_kid_attacker_key": lambda m, w: _attacker_signed(
            m, good_claims(), {"kid": "no-such-kid"}
        ),
        "jku_to_listener_attacker_key": lambda m, w: jwt.encode(
            good_claims(),
            attacker_rsa_key(),
            algorithm="RS256",
            headers={"jku": w.url, "kid": "attacker"},
        ),
        "jku_to_listener_real_key": lambda m, w: sign_idp(
            m, good_claims(), {"jku": w.url, "kid": "attacker"}
        ),
        "x5u_to_listener_attacker_key": lambda m, w: jwt.encode(
            good_claims(),
            attacker_rsa_key(),
            algorithm="RS256",
            headers={"x5u": w.url.replace("jwks.json", "cert.pem")},
        ),
        "x5u_to_listener_real_key": lambda m, w: sign_idp(
            m, good_claims(), {"x5u": w.url.replace("jwks.json", "cert.pem")}
        ),
        "embedded_jwk_attacker_key": lambda m, w: jwt.encode(
            good_claims(),
            attacker_rsa_key(),
            algorithm="RS256",
            headers={
                "jwk": json.loads(
                    jwt.algorithms.RSAAlgorithm.to_jwk(attacker_rsa_key().public_key())
                )
            },
        ),
        "embedded_oct_jwk": lambda m, w: jwt.encode(
            good_claims(),
            b"attacker-secret-" * 4,
            algorithm="HS256",
            headers={"jwk": {"kty": "oct", "k": b64url(b"attacker-secret-" * 4)}},
        ),
        "embedded_x5c_attacker_cert": lambda m, w: jwt.encode(
            good_claims(),
            attacker_rsa_key(),
            algorithm="RS256",
            headers={"x5c": [_self_signed_cert_b64(attacker_rsa_key())]},
        ),
        "crit_unknown_extension": lambda m, w: sign_idp(
            m, good_claims(), {"crit": ["urn:example:ext"], "urn:example:ext": True}
        ),
        "wrong_issuer": lambda m, w: real(m, iss="https://evil.example"),
        "issuer_prefix": lambda m, w: real(m, iss=IDP_ISSUER[:-1]),
        "issuer_suffix": lambda m, w: real(m, iss=IDP_ISSUER + ".evil.example"),
        "issuer_trailing_slash": lambda m, w: real(m, iss=IDP_ISSUER + "/"),
        "issuer_case": lambda m, w: real(m, iss=IDP_ISSUER.upper()),
        "issuer_as_list": lambda m, w: sign_idp_raw(
            m, {"typ": "JWT"}, idp_claims("cus_alice", iss=[IDP_ISSUER])
        ),
        "wrong_audience": lambda m, w: real(m, aud="https://other-app.example"),
        "audience_prefix": lambda m, w: real(m, aud=IDP_AUDIENCE[:-1]),
        "audience_suffix": lambda m, w: real(m, aud=IDP_AUDIENCE + "x"),
        "audience_list_without_ours": lambda m, w: real(m, aud=["https://a.example", "b"]),
        "missing_exp": lambda m, w: real(m, exp=None),
        "missing_iat": lambda m, w: real(m, iat=None),
        "missing_iss": lambda m, w: real(m, iss=None),
        "missing_aud": lambda m, w: real(m, aud=None),
        "missing_sub": lambda m, w: real(m, sub=None),
        "exp_as_string": lambda m, w: real(m, exp=str(now() + 600)),
        "exp_as_float_string": lambda m, w: real(m, exp=f"{now() + 600}.0"),
        "exp_as_bool": lambda m, w: real(m, exp=True),
        "iat_as_string": lambda m, w: real(m, iat=str(now())),
        "nbf_as_string": lambda m, w: real(m, nbf=str(now() - 10)),
        "nbf_in_the_future": lambda m, w: real(m, nbf=now() + 3600),
        "iat_in_the_future": lambda m, w: real(m, iat=now() + 3600),
        "expired_beyond_leeway": lambda m, w: real(m, exp=now() - 300, iat=now() - 900),
        "sub_as_int": lambda m, w: real(m, sub=12345),
        "sub_as_list": lambda m, w: real(m, sub=["cus_alice"]),
        "sub_not_an_id": lambda m, w: real(m, sub="../cus_alice"),
        "tampered_payload": lambda m, w: _tampered(sign_idp(m, good_claims())),
        "signature_stripped": lambda m, w: sign_idp(m, good_claims()).rsplit(".", 1)[0] + ".",
        "two_segments": lambda m, w: sign_idp(m, good_claims()).rsplit(".", 1)[0],
        "four_segments": lambda m, w: sign_idp(m, good_claims()) + "." + b64url(b"x"),
        "five_segments": lambda m, w: sign_idp(m, good_claims()) + ".a.b",
        "garbage": lambda m, w: "not-a-token",
        "header_not_json": lambda m, w: b64url(b"{nope") + "." + b64url(b"{}") + ".c2ln",
        "header_is_a_list": lambda m, w: b64url(b"[]") + "." + b64url(b"{}") + ".c2ln",
    }
    return attacks


def _tampered(token: str) -> str:
    head, _payload, signature = token.split(".")
    payload = b64url(json.dumps(idp_claims("cus_bob")).encode())
    return f"{head}.{payload}.{signature}"


IDP_ATTACKS = _idp_attacks()


@pytest.fixture(params=["hs256", "pem"])
def idp_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


async def _idp_broker(
    make_broker: MakeBroker, sandbox: Sandbox, mode: str, registry: CollectorRegistry
) -> BrokerClient:
    jwt_auth = hs256_mode() if mode == "hs256" else pem_mode()
    return await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth), registry)


async def test_a_good_idp_token_gets_a_session(
    make_broker: MakeBroker, sandbox: Sandbox, idp_mode: str
) -> None:
    """The control for every attack below: the same broker accepts the real thing."""
    registry = CollectorRegistry()
    client = await _idp_broker(make_broker, sandbox, idp_mode, registry)
    response = await init_with_idp(
        client, sign_idp(idp_mode, idp_claims("cus_alice")), "inv_alice_1"
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"token", "expires_at"}
    assert response.headers["Cache-Control"] == "no-store"
    assert sample(registry, "broker_sessions_issued_total", {"auth": "jwt"}) == 1
    assert (await client.get("/checkout/invoice", headers=auth(body["token"]))).status == 200
    # The hand-rolled signer used for claims pyjwt will not encode is itself accepted.
    raw = sign_idp_raw(idp_mode, {"typ": "JWT"}, idp_claims("cus_alice"))
    assert (await init_with_idp(client, raw, "inv_alice_1")).status == 200


@pytest.mark.parametrize("attack", sorted(IDP_ATTACKS))
async def test_forged_idp_tokens_are_refused_at_init(
    make_broker: MakeBroker, sandbox: Sandbox, tripwire: Tripwire, idp_mode: str, attack: str
) -> None:
    registry = CollectorRegistry()
    client = await _idp_broker(make_broker, sandbox, idp_mode, registry)
    token = IDP_ATTACKS[attack](idp_mode, tripwire)
    response = await init_with_idp(client, token, "inv_alice_1")
    assert response.status == 401, (attack, await response.text())
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert (await response.json())["code"] == "unauthorized"
    if "listener" in attack:
        await asyncio.sleep(0.2)  # a background fetch would have connected by now
    assert tripwire.connections == 0
    assert sample(registry, "broker_sessions_issued_total", {"auth": "jwt"}) == 0
    assert (await sandbox.stats())["tokens_issued"] == 0
    assert upstream_traffic(await sandbox.requests()) == []


async def test_a_one_megabyte_idp_token_is_refused_without_a_5xx(
    make_broker: MakeBroker, sandbox: Sandbox, idp_mode: str
) -> None:
    client = await _idp_broker(make_broker, sandbox, idp_mode, CollectorRegistry())
    head, payload, signature = sign_idp(idp_mode, idp_claims("cus_alice")).split(".")
    huge = f"{head}.{payload}{'A' * 1_000_000}.{signature}"
    response = await init_with_idp(client, huge, "inv_alice_1")
    assert response.status in {400, 401}
    assert upstream_traffic(await sandbox.requests()) == []


async def test_a_token_just_under_the_header_limit_is_a_clean_401(
    make_broker: MakeBroker, sandbox: Sandbox, idp_mode: str
) -> None:
    """Big enough to get past the HTTP parser, so the broker itself must refuse it."""
    client = await _idp_broker(make_broker, sandbox, idp_mode, CollectorRegistry())
    claims = idp_claims("cus_alice", padding="p" * 7000)
    response = await init_with_idp(client, sign_idp(idp_mode, claims)[:7900], "inv_alice_1")
    assert response.status in {400, 401}
    assert upstream_traffic(await sandbox.requests()) == []


async def test_configured_required_claims_must_be_present(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    required = ("exp", "iat", "iss", "aud", "sub", "tenant")
    jwt_auth = hs256_mode(required_claims=required)
    client = await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth))
    without = sign_idp("hs256", idp_claims("cus_alice"))
    refused = await init_with_idp(client, without, "inv_alice_1")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == INVALID_TOKEN
    with_it = sign_idp("hs256", idp_claims("cus_alice", tenant="shop"))
    assert (await init_with_idp(client, with_it, "inv_alice_1")).status == 200


# -- a JWKS-backed IdP ------------------------------------------------------------------


class JwksServer:
    def __init__(self) -> None:
        self.hits = 0
        self.kid = "idp-key-1"

    def document(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_rsa_key().public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.document())


async def _jwks_broker(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_server: AiohttpServer
) -> tuple[BrokerClient, JwksServer]:
    jwks = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", jwks.handle)
    server = await aiohttp_server(app)
    jwt_auth = hs256_mode(
        hs256_secret=b"",
        jwks_url=str(server.make_url("/jwks.json")),
        jwks_min_refresh_interval=30.0,
    )
    client = await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth))
    return client, jwks


def _jwks_token(kid: str, key: Any = None, alg: str = "RS256", **headers: Any) -> str:
    return jwt.encode(
        idp_claims("cus_alice"),
        key or idp_rsa_key(),
        algorithm=alg,
        headers={"kid": kid, **headers},
    )


async def test_jwks_idp_accepts_its_key_and_refetches_unknown_kids_at_a_bounded_rate(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_server: AiohttpServer, tripwire: Tripwire
) -> None:
    client, jwks = await _jwks_broker(make_broker, sandbox, aiohttp_server)
    good = await init_with_idp(client, _jwks_token(jwks.kid), "inv_alice_1")
    assert good.status == 200, await good.text()
    hits_after_first = jwks.hits
    assert hits_after_first >= 1
    forged = [_jwks_token(f"random-kid-{n}", attacker_rsa_key()) for n in range(8)] + [
        _jwks_token("attacker", attacker_rsa_key(), jku=tripwire.url),
        _jwks_token(jwks.kid, jku=tripwire.url),
        _jwks_token(jwks.kid, x5u=tripwire.url),
        # Algorithm confusion against a JWKS RSA key: HS256 keyed with its PEM.
        hmac_signed(
            {"alg": "HS256", "kid": jwks.kid}, idp_claims("cus_alice"), public_pem(idp_rsa_key())
        ),
        _jwks_token(jwks.kid, idp_rsa_key(), alg="PS256"),  # JWKS pins RS256
    ]
    for token in forged:
        response = await init_with_idp(client, token, "inv_alice_1")
        assert response.status == 401, await response.text()
        assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    await asyncio.sleep(0.2)
    assert tripwire.connections == 0
    # Eight random kids in a row: one refetch at most inside jwks_min_refresh_interval.
    assert jwks.hits <= hits_after_first + 1
    assert (await sandbox.stats())["tokens_issued"] == 0


# -- broker session tokens (proxy) ------------------------------------------------------


def _kid() -> str:
    return key_id(signing_key().public_key())


def _signed(claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(claims, signing_key(), algorithm="ES256", headers={"kid": _kid(), **headers})


def _session_attacks() -> dict[str, Callable[[Tripwire, str], str]]:
    pem = (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other = ec.generate_private_key(ec.SECP256R1())

    def now() -> int:
        return int(time.time())

    def c(**overrides: Any) -> dict[str, Any]:
        return session_claims(**overrides)

    return {
        "alg_none": lambda w, s: unsigned({"alg": "none", "kid": _kid()}, c()) + ".",
        "alg_None": lambda w, s: unsigned({"alg": "None", "kid": _kid()}, c()) + ".",
        "alg_NONE": lambda w, s: unsigned({"alg": "NONE", "kid": _kid()}, c()) + ".",
        "hs256_with_public_pem_as_secret": lambda w, s: hmac_signed(
            {"alg": "HS256", "typ": "JWT", "kid": _kid()}, c(), pem
        ),
        "hs256_with_public_pem_no_kid": lambda w, s: hmac_signed({"alg": "HS256"}, c(), pem),
        "unknown_kid": lambda w, s: jwt.encode(
            c(), other, algorithm="ES256", headers={"kid": key_id(other.public_key())}
        ),
        "known_kid_other_key": lambda w, s: jwt.encode(
            c(), other, algorithm="ES256", headers={"kid": _kid()}
        ),
        "jku_to_listener": lambda w, s: jwt.encode(
            c(),
            attacker_ec_key(),
            algorithm="ES256",
            headers={"kid": "attacker-ec", "jku": w.url},
        ),
        "jku_to_listener_real_key": lambda w, s: _signed(c(), jku=w.url),
        "x5u_to_listener": lambda w, s: jwt.encode(
            c(),
            attacker_ec_key(),
            algorithm="ES256",
            headers={"kid": "attacker-ec", "x5u": w.url},
        ),
        "x5u_to_listener_real_key": lambda w, s: _signed(c(), x5u=w.url),
        "embedded_jwk": lambda w, s: jwt.encode(
            c(),
            attacker_ec_key(),
            algorithm="ES256",
            headers={
                "jwk": json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker_ec_key().public_key()))
            },
        ),
        "embedded_x5c": lambda w, s: jwt.encode(
            c(),
            attacker_ec_key(),
            algorithm="ES256",
            headers={"x5c": [_self_signed_cert_b64(attacker_ec_key())]},
        ),
        "crit_unknown_extension": lambda w, s: _signed(c(), crit=["urn:x"], **{"urn:x": 1}),
        "wrong_issuer": lambda w, s: _signed(c(iss="evil-broker")),
        "issuer_prefix": lambda w, s: _signed(c(iss="token-broke")),
        "issuer_suffix": lambda w, s: _signed(c(iss="token-broker-evil")),
        "wrong_audience": lambda w, s: _signed(c(aud="someone-else")),
        "audience_prefix": lambda w, s: _signed(c(aud="alternative-checkou")),
        "missing_exp": lambda w, s: _signed(c(exp=None)),
        "missing_iat": lambda w, s: _signed(c(iat=None)),
        "missing_jti": lambda w, s: _signed(c(jti=None)),
        "missing_customer_id": lambda w, s: _signed(c(customer_id=None)),
        "missing_invoice_id": lambda w, s: _signed(c(invoice_id=None)),
        "exp_as_string": lambda w, s: _signed(c(exp=str(now() + 600))),
        "iat_as_string": lambda w, s: _signed(c(iat=str(now()))),
        "exp_as_bool": lambda w, s: _signed(c(exp=True)),
        "customer_id_as_int": lambda w, s: _signed(c(customer_id=7, sub=7)),
        "invoice_id_as_list": lambda w, s: _signed(c(invoice_id=["inv_alice_1"])),
        "customer_id_not_an_id": lambda w, s: _signed(c(customer_id="../x", sub="../x")),
        "sub_differs_from_customer": lambda w, s: _signed(c(sub="cus_bob")),
        "expired_beyond_leeway": lambda w, s: _signed(c(exp=now() - 120, iat=now() - 900)),
        "tampered_payload": lambda w, s: _tampered_session(s),
        "signature_stripped": lambda w, s: s.rsplit(".", 1)[0] + ".",
        "two_segments": lambda w, s: s.rsplit(".", 1)[0],
        "four_segments": lambda w, s: s + "." + b64url(b"x"),
        "five_segments": lambda w, s: s + ".a.b",
        "idp_token_on_the_proxy": lambda w, s: sign_idp("hs256", idp_claims("cus_alice")),
        "garbage": lambda w, s: "not-a-token",
    }


def _tampered_session(real: str) -> str:
    head, _payload, signature = real.split(".")
    claims = session_claims(customer_id="cus_bob", sub="cus_bob", invoice_id="inv_bob_1")
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


SESSION_ATTACKS = _session_attacks()


@pytest.fixture
async def idp_and_key_broker(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    return await make_broker(hardened_settings(sandbox.url, jwt_auth=hs256_mode()))


@pytest.mark.parametrize("attack", sorted(SESSION_ATTACKS))
async def test_forged_session_tokens_are_refused_on_the_proxy(
    idp_and_key_broker: BrokerClient, sandbox: Sandbox, tripwire: Tripwire, attack: str
) -> None:
    client = idp_and_key_broker
    real = await new_session(client, "cus_carol", "inv_carol_1")
    token = SESSION_ATTACKS[attack](tripwire, real)
    for path in ("/checkout/invoice", "/checkout/v1/payment-methods"):
        response = await client.get(path, headers=auth(token))
        assert response.status == 401, (attack, path, await response.text())
        assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    if "listener" in attack:
        await asyncio.sleep(0.2)
    assert tripwire.connections == 0
    assert await sandbox.checkout_requests() == []
    assert (await sandbox.stats())["tokens_issued"] == 0
    # The real session still works: the refusals were about the forgeries.
    assert (await client.get("/checkout/invoice", headers=auth(real))).status == 200


async def test_a_one_megabyte_session_token_is_refused_without_a_5xx(
    idp_and_key_broker: BrokerClient, sandbox: Sandbox
) -> None:
    real = await new_session(idp_and_key_broker, "cus_carol", "inv_carol_1")
    head, payload, signature = real.split(".")
    for token in (f"{head}.{payload}{'A' * 1_000_000}.{signature}", "a" * 1_000_000):
        response = await idp_and_key_broker.get("/checkout/invoice", headers=auth(token))
        assert response.status in {400, 401}
    assert await sandbox.checkout_requests() == []

"""Which algorithms an IdP key verifies: the one its type (and, for EC, its curve) implies,
or the configured ones that key can verify. A token whose algorithm the key cannot verify
is a 401 like any bad token, never a 5xx; a configured algorithm the configured key can
never verify is a configuration error, found before the broker starts."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from broker.config.model import ConfigError, load_settings
from tests.config.test_settings import GOOD, write_config
from tests.conftest import BrokerClient, MakeBroker
from tests.helpers import Sandbox, b64url
from tests.security.conftest import (
    IDP_AUDIENCE,
    IDP_ISSUER,
    INVALID_TOKEN,
    hardened_settings,
    hs256_mode,
    idp_claims,
    idp_rsa_key,
    init_with_idp,
    pem_mode,
    public_pem,
    sample,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
EC_ALGORITHMS = ("ES256", "ES384", "ES512")


@functools.cache
def ec_key(curve: str) -> ec.EllipticCurvePrivateKey:
    curves: dict[str, Callable[[], ec.EllipticCurve]] = {
        "P-256": ec.SECP256R1,
        "P-384": ec.SECP384R1,
        "P-521": ec.SECP521R1,
    }
    return ec.generate_private_key(curves[curve]())


def with_header_alg(token: str, algorithm: str, **fields: str) -> str:
    """*token* with another header naming *algorithm*, payload and signature untouched."""
    _, payload, signature = token.split(".")
    header = b64url(json.dumps({"alg": algorithm, "typ": "JWT", **fields}).encode())
    return f"{header}.{payload}.{signature}"


async def pem_broker(
    make_broker: MakeBroker,
    sandbox: Sandbox,
    key: PrivateKey,
    registry: CollectorRegistry,
    algorithms: tuple[str, ...] = (),
) -> BrokerClient:
    jwt_auth = pem_mode(public_key=public_pem(key).decode(), algorithms=algorithms)
    return await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth), registry)


async def assert_refused(
    client: BrokerClient, registry: CollectorRegistry, token: str, reason: str
) -> None:
    before = sample(registry, "broker_auth_failures_total", {"reason": reason})
    response = await init_with_idp(client, token, "inv_alice_1")
    assert response.status == 401, await response.text()
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert sample(registry, "broker_auth_failures_total", {"reason": reason}) == before + 1


@pytest.mark.parametrize(
    ("curve", "algorithm"), [("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512")]
)
async def test_an_ec_pem_key_verifies_the_algorithm_of_its_curve_and_refuses_the_others(
    make_broker: MakeBroker, sandbox: Sandbox, curve: str, algorithm: str
) -> None:
    """An EC key fits one algorithm only: a header naming another (pyjwt would raise
    InvalidKeyError, no InvalidTokenError, for a P-384 key and ES256) is a 401."""
    registry = CollectorRegistry()
    client = await pem_broker(make_broker, sandbox, ec_key(curve), registry)
    genuine = jwt.encode(idp_claims("cus_alice"), ec_key(curve), algorithm=algorithm)
    for other in [*sorted(set(EC_ALGORITHMS) - {algorithm}), "RS256", "HS256", "none"]:
        forged = with_header_alg(genuine, other)
        await assert_refused(client, registry, forged, "algorithm_not_allowed")
    response = await init_with_idp(client, genuine, "inv_alice_1")
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        (functools.partial(ec_key, "P-384"), "ES384"),
        (idp_rsa_key, "RS384"),
        (idp_rsa_key, "RS512"),
        (idp_rsa_key, "PS256"),
    ],
    ids=["p384-es384", "rsa-rs384", "rsa-rs512", "rsa-ps256"],
)
async def test_a_configured_algorithm_the_pem_key_can_verify_verifies(
    make_broker: MakeBroker, sandbox: Sandbox, key: Callable[[], PrivateKey], algorithm: str
) -> None:
    """``auth.jwt.algorithms`` pins what the key verifies: the configured algorithm, not
    the key type's default (RS256 for an RSA key), which is refused then."""
    registry = CollectorRegistry()
    client = await pem_broker(make_broker, sandbox, key(), registry, algorithms=(algorithm,))
    token = jwt.encode(idp_claims("cus_alice"), key(), algorithm=algorithm)
    response = await init_with_idp(client, token, "inv_alice_1")
    assert response.status == 200, await response.text()
    if isinstance(key(), rsa.RSAPrivateKey) and algorithm != "RS256":
        default = jwt.encode(idp_claims("cus_alice"), key(), algorithm="RS256")
        await assert_refused(client, registry, default, "algorithm_not_allowed")


async def test_an_rsa_key_without_configured_algorithms_verifies_rs256_only(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    registry = CollectorRegistry()
    client = await pem_broker(make_broker, sandbox, idp_rsa_key(), registry)
    good = jwt.encode(idp_claims("cus_alice"), idp_rsa_key(), algorithm="RS256")
    assert (await init_with_idp(client, good, "inv_alice_1")).status == 200
    for other in ("RS384", "PS256", "ES256"):
        token = with_header_alg(good, other)
        await assert_refused(client, registry, token, "algorithm_not_allowed")


# -- a JWKS-backed IdP ------------------------------------------------------------------


async def jwks_broker(
    make_broker: MakeBroker,
    sandbox: Sandbox,
    aiohttp_server: AiohttpServer,
    keys: list[dict[str, Any]],
    registry: CollectorRegistry,
) -> BrokerClient:
    async def handle(_request: web.Request) -> web.Response:
        return web.json_response({"keys": keys})

    app = web.Application()
    app.router.add_get("/jwks.json", handle)
    server = await aiohttp_server(app)
    jwt_auth = hs256_mode(hs256_secret=b"", jwks_url=str(server.make_url("/jwks.json")))
    return await make_broker(hardened_settings(sandbox.url, jwt_auth=jwt_auth), registry)


def ec_jwk(curve: str, kid: str, **fields: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key(curve).public_key()))
    return {**jwk, "kid": kid, "use": "sig", **fields}


async def test_a_jwks_ec_key_verifies_the_algorithm_of_its_curve_and_refuses_the_others(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_server: AiohttpServer
) -> None:
    """A P-384 JWK without ``alg`` verifies ES384; one whose ``alg`` names another
    curve's algorithm verifies nothing (its tokens are refused, not a 5xx)."""
    registry = CollectorRegistry()
    keys = [ec_jwk("P-384", "no-alg"), ec_jwk("P-384", "wrong-alg", alg="ES256")]
    client = await jwks_broker(make_broker, sandbox, aiohttp_server, keys, registry)
    key = ec_key("P-384")
    genuine = jwt.encode(idp_claims("cus_alice"), key, algorithm="ES384", headers={"kid": "no-alg"})
    forged = with_header_alg(genuine, "ES256", kid="no-alg")
    await assert_refused(client, registry, forged, "algorithm_not_allowed")
    response = await init_with_idp(client, genuine, "inv_alice_1")
    assert response.status == 200, await response.text()
    wrong = jwt.encode(
        idp_claims("cus_alice"), key, algorithm="ES384", headers={"kid": "wrong-alg"}
    )
    # "wrong-alg" verifies nothing, so it is not kept: as if the JWKS had no such kid.
    for token in (wrong, with_header_alg(wrong, "ES256", kid="wrong-alg")):
        await assert_refused(client, registry, token, "unknown_key")


# -- check-config -----------------------------------------------------------------------


def jwt_config(tmp_path: Path, key: PrivateKey, algorithms: list[str]) -> Path:
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(public_pem(key))
    return write_config(
        tmp_path,
        GOOD
        + "\n[auth.jwt]\nenabled = true\n"
        + f"issuer = {IDP_ISSUER!r}\naudience = {IDP_AUDIENCE!r}\n"
        + f"public_key_file = {str(key_file)!r}\nalgorithms = {json.dumps(algorithms)}\n",
    )


@pytest.mark.parametrize(
    ("key", "algorithms", "problem", "fits"),
    [
        (
            functools.partial(ec_key, "P-384"),
            ["ES256"],
            "ES256 can never verify",
            "(it verifies ES384)",
        ),
        (
            functools.partial(ec_key, "P-256"),
            ["ES256", "RS256"],
            "RS256 can never verify",
            "(it verifies ES256)",
        ),
        (
            idp_rsa_key,
            ["ES384", "RS384"],
            "ES384 can never verify",
            "(it verifies RS256, RS384, RS512, PS256, PS384, PS512)",
        ),
    ],
    ids=["p384-es256", "p256-rs256", "rsa-es384"],
)
def test_a_configured_algorithm_the_public_key_cannot_verify_is_a_config_error(
    tmp_path: Path, key: Callable[[], PrivateKey], algorithms: list[str], problem: str, fits: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(jwt_config(tmp_path, key(), algorithms), {})
    assert str(caught.value) == (
        f"invalid configuration: auth.jwt.algorithms: {problem} with the key in"
        f" auth.jwt.public_key_file {fits}"
    )


def test_a_public_key_that_verifies_no_algorithm_is_a_config_error(tmp_path: Path) -> None:
    """A secp256k1 key (ES256K, which the broker does not take) would refuse every token."""
    with pytest.raises(ConfigError) as caught:
        load_settings(jwt_config(tmp_path, ec.generate_private_key(ec.SECP256K1()), []), {})
    assert "auth.jwt.public_key_file: must be an RSA, EC (P-256, P-384, P-521)" in str(caught.value)


def test_configured_algorithms_the_public_key_can_verify_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(jwt_config(tmp_path, idp_rsa_key(), ["RS384", "PS256"]), {})
    assert settings.jwt_auth.algorithms == ("RS384", "PS256")
    p521 = load_settings(jwt_config(tmp_path, ec_key("P-521"), ["ES512"]), {})
    assert p521.jwt_auth.algorithms == ("ES512",)


def test_algorithms_are_not_checked_against_a_jwks_at_load(tmp_path: Path) -> None:
    """The JWKS's keys are unknown until fetched: any asymmetric algorithm may be set."""
    config = write_config(
        tmp_path,
        GOOD
        + "\n[auth.jwt]\nenabled = true\n"
        + f"issuer = {IDP_ISSUER!r}\naudience = {IDP_AUDIENCE!r}\n"
        + 'jwks_url = "https://idp.shop.example/jwks.json"\nalgorithms = ["ES512", "PS384"]\n',
    )
    assert load_settings(config, {}).jwt_auth.algorithms == ("ES512", "PS384")

"""No object that holds a token or a secret shows it: not in ``repr()``, not in ``str()``,
not in a log line that carries the object (JSON or console), whatever the secret is."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import string
import time

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from yarl import URL

from broker.auth.identity import IdentityVerifier, VerificationKey
from broker.auth.sessions import ApiKeys, IssuedSession, SessionAuthority
from broker.config.model import (
    AdminSettings,
    CacheSettings,
    Credential,
    JwtAuthSettings,
    SessionSettings,
    Settings,
    UpstreamSettings,
    single_partner,
)
from broker.credentials import CheckoutToken
from broker.demo.backend import BrokerLink
from broker.observability.logs import configure_logging, get_logger, reset_logging
from broker.observability.metrics import Metrics
from broker.redis.link import RedisLink
from broker.redis.sealing import Sealer
from broker.redis.shared import SharedToken
from broker.sandbox import SandboxSettings
from broker.tokens.checkout import Lookup
from broker.upstream.partner_api import MintedToken, OAuthToken, PartnerApi
from tests.helpers import signing_key

SECRETS = st.text(string.ascii_letters + string.digits + "-_.~", min_size=24, max_size=64)


def aes_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def holders(secret: str) -> dict[str, object]:
    """Every kind of object that holds a credential, holding *secret*."""
    now = time.time()
    checkout = CheckoutToken.create(secret, expires_at=now + 300, now=now, refresh_margin=60)
    upstream = UpstreamSettings(base_url=URL("https://up.example"), client_id="cid",
                                client_secret=secret)  # fmt: skip
    sessions = SessionSettings(api_keys=(secret, "other-key"), signing_key=signing_key())
    jwt_auth = JwtAuthSettings(enabled=True, issuer="i", audience="a", hs256_secret=secret.encode())
    cache = CacheSettings(
        backend="redis",
        redis_url=f"redis://:{secret}@127.0.0.1:6379/0",
        encryption_keys=(aes_key(secret),),
    )
    admin = AdminSettings(enabled=True, api_key=secret)
    return {
        "IssuedSession": IssuedSession(token=secret, expires_at=1),
        "CheckoutToken": checkout,
        "Lookup": Lookup(checkout, "hit"),
        "OAuthToken": OAuthToken(access_token=secret, expires_in=3600.0),
        "MintedToken": MintedToken(token=secret, expires_at=now, claims={"customer_id": "c"}),
        "SharedToken": SharedToken(secret, now, now),
        "VerificationKey": VerificationKey(secret.encode(), frozenset({"HS256"})),
        "UpstreamSettings": upstream,
        "SessionSettings": sessions,
        "PartnerSettings": single_partner(upstream, sessions),
        "Credential": Credential(client_id="cid", client_secret=secret),
        "JwtAuthSettings": jwt_auth,
        "CacheSettings": cache,
        "AdminSettings": admin,
        "Settings": Settings(
            upstream=upstream, sessions=sessions, jwt_auth=jwt_auth, cache=cache, admin=admin
        ),
        "ApiKeys": ApiKeys((secret,)),
        "SessionAuthority": SessionAuthority(sessions),
        "IdentityVerifier": IdentityVerifier(jwt_auth, lambda: None),  # type: ignore[arg-type,return-value]
        "Sealer": Sealer((aes_key(secret),)),
        "SandboxSettings": SandboxSettings(client_secret=secret),
        "BrokerLink": BrokerLink(secret),
    }


def spellings(secret: str) -> list[str]:
    """The secret, and the forms a careless repr would show it in."""
    key = aes_key(secret)
    return [
        secret,
        base64.b64encode(f"cid:{secret}".encode()).decode(),  # a Basic credential
        repr(secret.encode())[2:-1],
        repr(key)[2:-1],
        key.hex(),
        base64.b64encode(key).decode(),
    ]


def rendered(value: object) -> list[str]:
    """repr, str, and the log line that carries *value*, in both renderers."""
    texts = [repr(value), str(value), f"{value}"]
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        for fmt in ("json", "console"):
            stream = io.StringIO()
            configure_logging(fmt=fmt, level="info", stream=stream, cache=False)
            get_logger("test").info("holding", held=value, nested={"inside": [value]})
            texts.append(stream.getvalue())
    finally:
        root.handlers[:], root.level = saved
        reset_logging()
    return texts


def leaks(objects: dict[str, object], secret: str) -> list[str]:
    forms = spellings(secret)
    return [
        name
        for name, value in objects.items()
        for text in rendered(value)
        if any(form in text for form in forms)
    ]


@settings(max_examples=15, deadline=None)
@given(secret=SECRETS)
def test_no_credential_holder_shows_its_secret(secret: str) -> None:
    objects = holders(secret)
    assert leaks(objects, secret) == []


def test_the_check_sees_a_secret_a_repr_shows() -> None:
    """The property above can fail: a value that shows its secret is caught in every
    rendering (repr, str, format, the JSON line, the console line)."""
    secret = "canary-" + "s" * 30
    assert leaks({"tuple": (secret, 1)}, secret) == ["tuple"] * 5


async def test_clients_holding_credentials_show_none() -> None:
    secret = "canary-client-secret-" + "x" * 20
    cache = CacheSettings(backend="redis", redis_url=f"redis://:{secret}@127.0.0.1:1/0",
                          encryption_keys=(aes_key(secret),))  # fmt: skip
    link = RedisLink.connect(cache, Metrics.create(CollectorRegistry()))
    upstream = UpstreamSettings(base_url=URL("https://up.example"), client_id="cid",
                                client_secret=secret)  # fmt: skip
    async with aiohttp.ClientSession() as http:
        objects: dict[str, object] = {
            "RedisLink": link,
            "Redis": link.client,
            "PartnerApi": PartnerApi(
                http,
                upstream,
                single_partner(upstream, SessionSettings(signing_key=signing_key())),
                Metrics.create(CollectorRegistry()),
            ),
        }
        try:
            assert leaks(objects, secret) == []
        finally:
            await link.client.aclose()

"""Building blocks for tests: settings, a sandbox handle, session tokens."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from yarl import URL

from broker.config.model import (
    LimitSettings,
    SessionSettings,
    Settings,
    TokenSettings,
    UpstreamSettings,
)

API_KEY = "test-api-key-0123456789"
# What Prometheus presents to a test broker's /metrics (metrics.bearer_token).
METRICS_TOKEN = "test-metrics-token-0123456789abcdef"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
GENEROUS_LIMITS = LimitSettings(
    ip_requests_per_second=100_000,
    ip_burst=100_000,
    session_requests_per_second=100_000,
    session_burst=100_000,
    init_requests_per_second=100_000,
    init_burst=100_000,
)


@functools.cache
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def self_signed_certificate(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    common_name: str,
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    """A throwaway certificate for *key*, signed by itself, valid a day either side of
    now; *extensions* are (extension, critical) pairs."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def make_settings(upstream_url: URL | str, **overrides: Any) -> Settings:
    """Settings for a broker in front of *upstream_url*; keyword overrides by section."""
    upstream = UpstreamSettings(
        base_url=URL(str(upstream_url)),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        read_timeout=overrides.pop("read_timeout", 5.0),
        connect_timeout=1.0,
        rate_limit_per_second=overrides.pop("rate_limit_per_second", 1000.0),
        rate_limit_max_wait=overrides.pop("rate_limit_max_wait", 2.0),
        proxy_prefixes=overrides.pop("proxy_prefixes", ("/checkout/",)),
        # Absent: upstream.transport's default.
        **({"transport": overrides.pop("transport")} if "transport" in overrides else {}),
    )
    sessions = SessionSettings(
        signing_key=overrides.pop("signing_key", signing_key()),
        verify_keys=overrides.pop("verify_keys", ()),
        api_keys=(API_KEY,),
        ttl=overrides.pop("session_ttl", 900),
    )
    tokens = TokenSettings(refresh_margin=overrides.pop("refresh_margin", 60.0))
    # Load tests send far more than one browser would; security tests set their own.
    overrides.setdefault("limits", GENEROUS_LIMITS)
    overrides.setdefault("metrics_bearer_token", METRICS_TOKEN)
    return Settings(upstream=upstream, sessions=sessions, tokens=tokens, **overrides)


@dataclass
class Sandbox:
    """The sandbox upstream as a test sees it: its URL and its control plane."""

    url: URL
    http: aiohttp.ClientSession

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(self.url / "_sandbox/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def requests(self, limit: int = 1000) -> list[dict[str, Any]]:
        async with self.http.get(
            self.url.with_path("/_sandbox/requests").with_query(limit=limit)
        ) as response:
            result: list[dict[str, Any]] = await response.json()
            return result

    async def checkout_requests(self) -> list[dict[str, Any]]:
        """What reached the checkout endpoints (the partner-token warm-up excluded)."""
        return [r for r in await self.requests() if r["raw_path"].startswith("/checkout")]

    async def faults(self, **faults: Any) -> None:
        async with self.http.post(self.url / "_sandbox/faults", json=faults) as response:
            assert response.status == 200, await response.text()

    async def reset(self) -> None:
        async with self.http.post(self.url / "_sandbox/reset") as response:
            assert response.status == 200

    async def delegate(self, request: web.BaseRequest) -> web.Response:
        """Answer a hand-made upstream's token endpoints from the sandbox (real minting)."""
        async with self.http.request(
            request.method,
            self.url.with_path(request.path),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type="application/json")

    async def post(self, path: str, body: dict[str, Any]) -> None:
        async with self.http.post(self.url.with_path(path), json=body) as response:
            assert response.status == 200, await response.text()

    async def put(self, path: str, body: dict[str, Any]) -> None:
        async with self.http.put(self.url.with_path(path), json=body) as response:
            assert response.status == 200, await response.text()

    async def delete(self, path: str) -> None:
        async with self.http.delete(self.url.with_path(path)) as response:
            assert response.status == 200, await response.text()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session_claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a broker session token for cus_alice/inv_alice_1; None drops a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "token-broker",
        "aud": "alternative-checkout",
        "sub": "cus_alice",
        "customer_id": "cus_alice",
        "invoice_id": "inv_alice_1",
        "client_id": "sandbox-client",
        "iat": now,
        "exp": now + 600,
        "jti": "forged-jti",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """``header.payload`` (no signature), serialised exactly as given."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: pyjwt rightly refuses to use a PEM key as an HMAC secret."""
    signing_input = unsigned(header, payload)
    digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(digest)}"

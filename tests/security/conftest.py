"""Shared pieces of the adversarial suite: settings, IdP tokens, raw sockets, listeners.

Everything here talks to real servers on loopback: the sandbox upstream, the broker
app, and (for ``jku``/``x5u`` probes) a bare TCP listener that only counts who calls.

The upstream transport (``upstream.transport``) only carries what the broker forwards,
so here a broker uses the default one, and the tests whose traffic is forwarded (path
and header fidelity, bodies, injected bearers) run against each:
``@pytest.mark.forwarding`` (tests/conftest.py). A test about a refusal that forwards one
request only to show the refusal was about the attack runs on the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from prometheus_client import CollectorRegistry

from broker.config.model import JwtAuthSettings, LimitSettings, Settings
from tests.conftest import BrokerClient
from tests.helpers import GENEROUS_LIMITS, b64url, hmac_signed, make_settings, unsigned

IDP_ISSUER = "https://idp.shop.example"
IDP_AUDIENCE = "https://checkout.shop.example"
# A fresh secret per run: nothing in the suite may depend on its value.
HS256_SECRET = secrets.token_bytes(48)
ORIGIN = "https://shop.example"
ADMIN_KEY = "admin-key-" + "k" * 40
NOT_FOUND_BODY = {"code": "not_found", "message": "The requested resource was not found."}
INVALID_TOKEN = 'Bearer error="invalid_token"'


# -- settings -------------------------------------------------------------------------


def roomy_limits(**overrides: Any) -> LimitSettings:
    """Rate limits far above what a test sends (everything comes from 127.0.0.1)."""
    return dataclasses.replace(GENEROUS_LIMITS, **overrides)


def hardened_settings(upstream_url: Any, **overrides: Any) -> Settings:
    """``make_settings`` with roomy rate limits unless the test sets its own."""
    overrides.setdefault("limits", roomy_limits())
    return make_settings(upstream_url, **overrides)


@functools.cache
def idp_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def attacker_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def attacker_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs256_mode(**overrides: Any) -> JwtAuthSettings:
    """Browser-direct sessions verified with a shared HS256 secret."""
    return dataclasses.replace(
        JwtAuthSettings(
            enabled=True, issuer=IDP_ISSUER, audience=IDP_AUDIENCE, hs256_secret=HS256_SECRET
        ),
        **overrides,
    )


def pem_mode(**overrides: Any) -> JwtAuthSettings:
    """Browser-direct sessions verified with the IdP's RSA public key (PEM)."""
    return dataclasses.replace(
        JwtAuthSettings(
            enabled=True,
            issuer=IDP_ISSUER,
            audience=IDP_AUDIENCE,
            public_key=public_pem(idp_rsa_key()).decode(),
        ),
        **overrides,
    )


# -- IdP tokens -----------------------------------------------------------------------


def idp_claims(subject: str = "cus_alice", /, **overrides: Any) -> dict[str, Any]:
    """Claims of a good IdP token; an override of ``None`` removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": IDP_ISSUER,
        "aud": IDP_AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign_idp(mode: str, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    """A token the configured IdP key really signed (``mode``: "hs256" or "pem")."""
    if mode == "hs256":
        return jwt.encode(claims, HS256_SECRET, algorithm="HS256", headers=headers)
    return jwt.encode(claims, idp_rsa_key(), algorithm="RS256", headers=headers)


def sign_idp_raw(mode: str, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Like ``sign_idp`` but bypassing pyjwt's own checks on what it encodes."""
    if mode == "hs256":
        return hmac_signed({"alg": "HS256", **header}, payload, HS256_SECRET)
    signing_input = unsigned({"alg": "RS256", **header}, payload)
    signature = idp_rsa_key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def unverified(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def init_with_idp(
    client: BrokerClient,
    idp_token: str,
    invoice_id: str,
    customer_id: str | None = None,
    path: str = "/v1/checkout-auth/init",
) -> ClientResponse:
    body: dict[str, str] = {"invoice_id": invoice_id}
    if customer_id is not None:
        body["customer_id"] = customer_id
    return await client.post(path, json=body, headers={"Authorization": f"Bearer {idp_token}"})


# -- metrics --------------------------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of *name*'s samples that carry *labels* (whatever their other labels)."""
    wanted = (labels or {}).items()
    return sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == name and wanted <= s.labels.items()
    )


# -- what reached the sandbox ---------------------------------------------------------


def header_values(recorded: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in recorded["headers"] if key.lower() == name.lower()]


def upstream_traffic(requests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything but the broker's own partner-token fetches."""
    return [r for r in requests if r["raw_path"] != "/oauth/token"]


# -- raw sockets ----------------------------------------------------------------------


@dataclass
class RawReply:
    """What a server wrote back on one connection, and whether it closed it."""

    data: bytes
    closed: bool
    elapsed: float
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.statuses, self.bodies = split_responses(self.data)

    @property
    def first_status(self) -> int | None:
        return self.statuses[0] if self.statuses else None

    def body_json(self) -> Any:
        return json.loads(self.bodies[0])


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def split_responses(data: bytes) -> tuple[list[int], list[bytes]]:
    """Statuses and bodies of the responses in *data*, framed as HTTP/1.1 frames them."""
    statuses: list[int] = []
    bodies: list[bytes] = []
    rest = data
    while rest:
        match = _STATUS_LINE.match(rest)
        head_end = rest.find(b"\r\n\r\n")
        if match is None or head_end < 0:
            break
        statuses.append(int(match.group(1)))
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (
                line.partition(b":") for line in rest[match.end() : head_end].split(b"\r\n")
            )
        }
        rest = rest[head_end + 4 :]
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
        elif b"content-length" in fields:
            size = int(fields[b"content-length"])
            body, rest = rest[:size], rest[size:]
        else:
            body, rest = rest, b""
        bodies.append(body)
    return statuses, bodies


async def raw_exchange(host: str, port: int, payload: bytes, *, wait: float = 2.0) -> RawReply:
    """Send *payload* as is, then read until the server closes or *wait* runs out."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    closed = False
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                data += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return RawReply(data=data, closed=closed, elapsed=loop.time() - started)


async def send_to(client: BrokerClient, payload: bytes, *, wait: float = 3.0) -> RawReply:
    """*payload* as raw bytes to the broker under test."""
    assert client.server.host is not None
    assert client.server.port is not None
    return await raw_exchange(client.server.host, client.server.port, payload, wait=wait)


def http_request(
    method: str,
    target: str | bytes,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
) -> bytes:
    """An HTTP/1.1 request with CRLF line endings, bytes exactly as given."""
    raw_target = target if isinstance(target, bytes) else target.encode()
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", b"Host: " + host.encode()]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- a listener that must never be called ---------------------------------------------


class Tripwire:
    """A TCP listener that counts connections and answers with an attacker's JWKS.

    Tokens whose ``jku``/``x5u`` point here must be refused without the broker ever
    connecting; if it did connect, it would get a key set that validates the token.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.connections = 0
        self._body = json.dumps(jwks).encode()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(2):
                await reader.readuntil(b"\r\n\r\n")
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self._body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + self._body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def attacker_jwks() -> dict[str, Any]:
    """The attacker's public keys (RSA and EC) under the kid ``attacker``."""
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_rsa_key().public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker_ec_key().public_key()))
    return {
        "keys": [
            {**rsa_jwk, "kid": "attacker", "alg": "RS256", "use": "sig"},
            {**ec_jwk, "kid": "attacker-ec", "alg": "ES256", "use": "sig"},
        ]
    }


@pytest.fixture
async def tripwire() -> AsyncIterator[Tripwire]:
    wire = Tripwire(attacker_jwks())
    await wire.start()
    yield wire
    await wire.close()

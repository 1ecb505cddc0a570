"""Request limits: body size (declared and streamed), compressed bodies, slow clients,
duplicated credentials and framing headers, oversized or control-laden IDs. Each is
refused, and none of them reaches the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import API_KEY, Sandbox, auth
from tests.security.conftest import (
    hardened_settings,
    hs256_mode,
    http_request,
    idp_claims,
    init_with_idp,
    roomy_limits,
    send_to,
    sign_idp,
    split_responses,
    upstream_traffic,
)

LIMIT = 1024
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
INIT = "/v1/checkout-auth/init"
PROXY = "/checkout/payments"


@pytest.fixture
async def client(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    limits = roomy_limits(
        max_body_bytes=LIMIT, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT
    )
    return await make_broker(hardened_settings(sandbox.url, limits=limits, jwt_auth=hs256_mode()))


async def primed(client: BrokerClient, sandbox: Sandbox) -> str:
    session = await new_session(client, "cus_alice", "inv_alice_1")
    assert (await client.get("/checkout/invoice", headers=auth(session))).status == 200
    await sandbox.reset()
    return session


def endpoint_headers(path: str, session: str) -> list[tuple[str, str]]:
    credential = API_KEY if path == INIT else session
    return [
        ("Authorization", f"Bearer {credential}"),
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ]


async def send(client: BrokerClient, payload: bytes, wait: float = 3.0) -> tuple[int | None, bytes]:
    reply = await send_to(client, payload, wait=wait)
    return reply.first_status, reply.bodies[0] if reply.bodies else b""


def json_body(size: int) -> bytes:
    """A JSON object of exactly *size* bytes."""
    skeleton = b'{"customer_id": "cus_alice", "invoice_id": "inv_alice_1", "pad": ""}'
    return skeleton[:-2] + b"x" * (size - len(skeleton)) + b'"}'


# -- body size ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PROXY, INIT])
async def test_a_declared_body_over_the_limit_is_413(
    client: BrokerClient, sandbox: Sandbox, path: str
) -> None:
    session = await primed(client, sandbox)
    body = json_body(LIMIT + 1)
    headers = [*endpoint_headers(path, session), ("Content-Length", str(len(body)))]
    status, answer = await send(client, http_request("POST", path, headers, body))
    assert status == 413, answer
    assert b'"payload_too_large"' in answer
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("path", [PROXY, INIT])
async def test_a_chunked_body_over_the_limit_is_413(
    client: BrokerClient, sandbox: Sandbox, path: str
) -> None:
    session = await primed(client, sandbox)
    body = json_body(LIMIT + 200)
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n"
        for part in (body[i : i + 100] for i in range(0, len(body), 100))
    )
    headers = [*endpoint_headers(path, session), ("Transfer-Encoding", "chunked")]
    status, answer = await send(client, http_request("POST", path, headers, chunks + b"0\r\n\r\n"))
    assert status == 413, answer
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.forwarding
async def test_a_body_of_exactly_the_limit_is_forwarded(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    """The control: the limit is the limit, not a blanket refusal of bodies."""
    session = await primed(client, sandbox)
    body = json_body(LIMIT)
    headers = [*endpoint_headers(PROXY, session), ("Content-Length", str(len(body)))]
    status, _ = await send(client, http_request("POST", PROXY, headers, body))
    assert status == 400  # the sandbox's validation error: it was forwarded
    (seen,) = upstream_traffic(await sandbox.requests())
    assert len(seen["body"]) == LIMIT


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "identity, gzip", "x"])
@pytest.mark.parametrize("path", [PROXY, INIT])
async def test_a_compressed_request_body_is_415(
    client: BrokerClient, sandbox: Sandbox, path: str, encoding: str
) -> None:
    session = await primed(client, sandbox)
    body = b'{"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}'
    headers = [
        *endpoint_headers(path, session),
        ("Content-Encoding", encoding),
        ("Content-Length", str(len(body))),
    ]
    status, answer = await send(client, http_request("POST", path, headers, body))
    assert status == 415, answer
    assert b'"unsupported_media_type"' in answer
    assert upstream_traffic(await sandbox.requests()) == []


# -- slow clients ---------------------------------------------------------------------


async def _trickle(
    client: BrokerClient, first: bytes, drip: bytes, *, give_up_after: float
) -> tuple[float, bytes, bool]:
    """Send *first*, then one byte of *drip* every 0.2 s, until the server answers or
    closes: (seconds until it did, what it sent, whether it closed)."""
    assert client.server.host is not None
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    started = time.monotonic()
    received, closed = b"", False
    pending = iter(drip)
    try:
        writer.write(first)
        await writer.drain()
        while time.monotonic() - started < give_up_after:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=0.2)
            except TimeoutError:
                byte = next(pending, None)
                if byte is not None:
                    writer.write(bytes([byte]))
                    await writer.drain()
                continue
            received, closed = chunk, chunk == b""
            break
    except ConnectionError:
        closed = True
    elapsed = time.monotonic() - started
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return elapsed, received, closed


async def test_a_client_that_sends_headers_too_slowly_is_cut_off(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    session = await primed(client, sandbox)
    first = f"GET /checkout/invoice HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {session}\r\n"
    elapsed, received, closed = await _trickle(
        client, first.encode(), b"X-Slow: " + b"a" * 200, give_up_after=HEADER_TIMEOUT + 3
    )
    assert closed or received, "the connection was still open"
    assert elapsed <= HEADER_TIMEOUT + 1.0, elapsed
    statuses, _ = split_responses(received)
    assert statuses in ([], [408], [400]), received[:200]
    assert upstream_traffic(await sandbox.requests()) == []


async def test_a_client_that_connects_and_sends_nothing_is_cut_off(client: BrokerClient) -> None:
    elapsed, received, closed = await _trickle(client, b"", b"", give_up_after=HEADER_TIMEOUT + 3)
    assert closed or received, "an idle connection was kept open"
    assert elapsed <= HEADER_TIMEOUT + 1.0, elapsed
    assert split_responses(received)[0] in ([], [408], [400]), received[:200]


@pytest.mark.parametrize("path", [PROXY, INIT])
async def test_a_client_that_sends_its_body_too_slowly_gets_408_or_is_cut_off(
    client: BrokerClient, sandbox: Sandbox, path: str
) -> None:
    session = await primed(client, sandbox)
    headers = [*endpoint_headers(path, session), ("Content-Length", "600")]
    first = http_request("POST", path, headers, b"")
    elapsed, received, closed = await _trickle(
        client, first, b"{" + b" " * 598 + b"}", give_up_after=BODY_TIMEOUT + 3
    )
    assert closed or received, "the connection was still open"
    assert elapsed <= BODY_TIMEOUT + 1.0, elapsed
    statuses, bodies = split_responses(received)
    assert statuses in ([], [408]), received[:300]
    if statuses:
        assert b'"request_timeout"' in bodies[0]
    assert upstream_traffic(await sandbox.requests()) == []


# -- duplicated headers -------------------------------------------------------------


async def test_duplicate_authorization_is_400(client: BrokerClient, sandbox: Sandbox) -> None:
    session = await primed(client, sandbox)
    other = await new_session(client, "cus_bob", "inv_bob_1")
    await sandbox.reset()
    cases = [
        ("GET", "/checkout/invoice", [("Authorization", f"Bearer {session}")] * 2),
        (
            "GET",
            "/checkout/invoice",
            [("Authorization", f"Bearer {session}"), ("Authorization", f"Bearer {other}")],
        ),
        (
            "GET",
            "/checkout/invoice",
            [("Authorization", f"Bearer {session}"), ("authorization", "Basic Zm9vOmJhcg==")],
        ),
        ("POST", INIT, [("Authorization", f"Bearer {API_KEY}")] * 2),
    ]
    for method, path, headers in cases:
        body = (
            b'{"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}'
            if method == "POST"
            else b""
        )
        fields = [
            *headers,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        status, answer = await send(client, http_request(method, path, fields, body))
        assert status == 400, (path, headers, answer)
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize(
    "fields",
    [
        [("Host", "evil.example")],
        [("Content-Length", "2"), ("Content-Length", "2")],
        [("Content-Length", "2"), ("Content-Length", "3")],
    ],
    ids=["duplicate-host", "duplicate-content-length-same", "duplicate-content-length-differ"],
)
async def test_duplicate_host_or_content_length_is_400(
    client: BrokerClient, sandbox: Sandbox, fields: list[tuple[str, str]]
) -> None:
    session = await primed(client, sandbox)
    headers = [
        ("Authorization", f"Bearer {session}"),
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ]
    if not any(name == "Content-Length" for name, _ in fields):
        headers.append(("Content-Length", "2"))
    status, answer = await send(client, http_request("POST", PROXY, [*headers, *fields], b"{}"))
    assert status == 400, answer
    assert upstream_traffic(await sandbox.requests()) == []


# -- IDs ------------------------------------------------------------------------------

BAD_IDS = ["c" * 65, "cus\x00alice", "cus\nalice", "cus\talice", "cus\x7f", "cus\u0085", ""]


@pytest.mark.parametrize("bad", BAD_IDS, ids=[f"bad-id-{n}" for n in range(len(BAD_IDS))])
async def test_ids_too_long_or_with_control_characters_are_400(
    client: BrokerClient, sandbox: Sandbox, bad: str
) -> None:
    await primed(client, sandbox)
    for body in (
        {"customer_id": bad, "invoice_id": "inv_alice_1"},
        {"customer_id": "cus_alice", "invoice_id": bad},
    ):
        response = await client.post(INIT, json=body, headers=auth(API_KEY))
        assert response.status == 400, (body, await response.text())
    idp = sign_idp("hs256", idp_claims("cus_alice"))
    assert (await init_with_idp(client, idp, bad)).status == 400
    assert (await init_with_idp(client, idp, "inv_alice_1", bad)).status == 400
    assert upstream_traffic(await sandbox.requests()) == []

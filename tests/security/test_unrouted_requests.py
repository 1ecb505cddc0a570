"""Requests aiohttp would answer itself, before any route or the front door sees them.

Its parser refuses some requests outright: a control byte in a header, a bad request
line, bytes that are not HTTP, a line over the size limit. Its router tries no route
for targets without a path: ``CONNECT host:port``, ``GET http://host``. Its default
``Expect`` handler refuses any expectation but 100-continue before the handler runs.
aiohttp's own answer is text, for a refusal one that echoes the refused line (the
caller's bearer token, if that was the line), under ``Server: Python/... aiohttp/...``.
The broker answers them as every other error: the JSON shape, its own Server header, a
request id, closed; counted and logged under the ``unmatched`` route, with none of the
request's bytes.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.errors import BadRequest, BrokerError, GatewayTimeout, MethodNotAllowed, NotFound
from broker.web.runner import GatewayRunner
from tests.conftest import BrokerClient, LogCapture, MakeBroker, new_session
from tests.helpers import Sandbox
from tests.security.conftest import (
    RawReply,
    hardened_settings,
    header_values,
    http_request,
    raw_exchange,
    sample,
    send_to,
    upstream_traffic,
)

SECRET = "refused-line-secret-" + "s" * 24

MALFORMED: dict[str, bytes] = {
    "control byte in the Authorization header": http_request(
        "GET", "/checkout/invoice", [("Authorization", f"Bearer {SECRET}\x01")]
    ),
    "NUL in a header name": http_request("GET", "/checkout/invoice", [(f"X-{SECRET}\x00", "1")]),
    "space before the colon": http_request(
        "GET", "/checkout/invoice", [(f"Authorization : Bearer {SECRET}", "x")]
    ),
    "unknown method": http_request("SECRET\x7f", f"/checkout/invoice?{SECRET}"),
    "bad HTTP version": f"GET /checkout/invoice?t={SECRET} HTTP/1.x\r\n\r\n".encode(),
    "TLS ClientHello": bytes.fromhex("16030100a5010000a10303") + SECRET.encode(),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "request target over the line limit": http_request("GET", f"/{SECRET}" + "a" * 9000),
    "header over the field limit": http_request(
        "GET", "/checkout/invoice", [("X-Pad", SECRET + "a" * 9000)]
    ),
}


def header(reply: RawReply, name: str) -> str | None:
    match = re.search(rb"\r\n" + name.encode() + rb": ([^\r\n]*)\r\n", reply.data, re.IGNORECASE)
    return None if match is None else match.group(1).decode()


def assert_answered_like_the_broker(reply: RawReply, error: BrokerError) -> None:
    assert reply.statuses == [error.status], reply.data[:300]
    assert reply.body_json() == error.body()
    assert header(reply, "Content-Type") == "application/json; charset=utf-8"
    assert header(reply, "Server") == "token-broker"
    assert header(reply, "Cache-Control") == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", header(reply, "X-Request-Id") or "")
    assert b"aiohttp" not in reply.data
    assert b"Python" not in reply.data
    assert reply.closed


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def client(
    make_broker: MakeBroker, sandbox: Sandbox, registry: CollectorRegistry
) -> BrokerClient:
    return await make_broker(hardened_settings(sandbox.url), registry)


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_request_the_parser_refuses_gets_the_brokers_400_and_no_echo(
    client: BrokerClient, case: str
) -> None:
    reply = await send_to(client, MALFORMED[case])
    assert_answered_like_the_broker(reply, BadRequest())
    assert SECRET.encode() not in reply.data


async def test_a_refused_request_is_counted_and_logged_without_its_bytes(
    client: BrokerClient, sandbox: Sandbox, registry: CollectorRegistry, logs: LogCapture
) -> None:
    session = await new_session(client)
    await sandbox.reset()
    labels = {"route": "unmatched", "method": "OTHER", "status": "400"}
    before = sample(registry, "broker_requests_total", labels)
    payload = http_request("GET", "/checkout/invoice", [("Authorization", f"Bearer {session}\x01")])
    reply = await send_to(client, payload)
    assert reply.statuses == [400]
    assert sample(registry, "broker_requests_total", labels) == before + 1
    [finished] = [e for e in logs.events("request_finished") if e["status"] == 400]
    assert finished["route"] == "unmatched"
    assert finished["request_id"] == header(reply, "X-Request-Id")
    assert session not in logs.text
    assert upstream_traffic(await sandbox.requests()) == []


async def test_a_refusal_on_a_reused_connection_follows_the_good_answer(
    client: BrokerClient,
) -> None:
    """A good request, its answer, then a refused one on the same connection: the broker's
    400 follows, then the close."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(http_request("GET", "/healthz"))
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
        assert first.startswith(b"HTTP/1.1 200 ")
        length = re.search(rb"Content-Length: (\d+)", first)
        assert length is not None
        await reader.readexactly(int(length.group(1)))
        writer.write(http_request("GET", "/healthz", [("X-Bad", "a\x01")]))
        rest = await asyncio.wait_for(reader.read(), 3.0)  # to the close
    finally:
        writer.close()
    reply = RawReply(data=rest, closed=True, elapsed=0.0)
    assert_answered_like_the_broker(reply, BadRequest())


async def test_connect_is_the_brokers_405_and_never_a_tunnel(
    client: BrokerClient, sandbox: Sandbox, registry: CollectorRegistry
) -> None:
    labels = {"route": "unmatched", "method": "OTHER", "status": "405"}
    payload = b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0-x\r\n"
    reply = await send_to(client, payload)
    assert_answered_like_the_broker(reply, MethodNotAllowed())
    assert sample(registry, "broker_requests_total", labels) == 1
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("target", ["http://evil.example", "http://127.0.0.1:1", "https://x?y=1"])
async def test_an_absolute_target_without_a_path_is_the_brokers_404(
    client: BrokerClient, sandbox: Sandbox, registry: CollectorRegistry, target: str
) -> None:
    """aiohttp's router walks such a target's empty path to no resource, not even the
    catch-all, and would answer in its own text."""
    labels = {"route": "unmatched", "method": "OTHER", "status": "404"}
    reply = await send_to(client, http_request("GET", target))
    assert_answered_like_the_broker(reply, NotFound())
    assert sample(registry, "broker_requests_total", labels) == 1
    assert upstream_traffic(await sandbox.requests()) == []


async def test_the_asterisk_target_reaches_the_catch_all_route(client: BrokerClient) -> None:
    """``OPTIONS *`` matches no path pattern; the catch-all takes it all the same."""
    reply = await send_to(client, http_request("OPTIONS", "*", [("Connection", "close")]))
    assert_answered_like_the_broker(reply, NotFound())


@pytest.mark.parametrize("expect", ["something", "100-continue, x", "200-ok"])
async def test_an_unknown_expectation_is_ignored_and_never_forwarded(
    client: BrokerClient, sandbox: Sandbox, expect: str
) -> None:
    """aiohttp's default would refuse it with its own text 417, before the front door."""
    session = await new_session(client)
    await sandbox.reset()
    headers = [("Authorization", f"Bearer {session}"), ("Expect", expect), ("Connection", "close")]
    reply = await send_to(client, http_request("GET", "/checkout/invoice", headers))
    assert reply.statuses == [200], reply.data[:300]
    assert header(reply, "Server") == "token-broker"
    [forwarded] = await sandbox.checkout_requests()
    assert header_values(forwarded, "Expect") == []


async def test_100_continue_gets_the_interim_answer_then_the_forwarded_one(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    session = await new_session(client)
    await sandbox.reset()
    body = b'{"payment_method_id": "pm_1"}'
    headers = [
        ("Authorization", f"Bearer {session}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Expect", "100-continue"),
    ]
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(http_request("POST", "/checkout/payments", headers))  # the head alone
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
    finally:
        writer.close()
    assert b"\r\nServer: token-broker\r\n" in final
    [forwarded] = await sandbox.checkout_requests()
    assert forwarded["raw_path"] == "/checkout/payments"
    assert header_values(forwarded, "Expect") == []


# -- the runner on an app of its own: handlers that escape without a front door --------


async def _raises_runtime_error(request: web.Request) -> web.StreamResponse:
    raise RuntimeError(SECRET)


async def _raises_timeout(request: web.Request) -> web.StreamResponse:
    raise TimeoutError(SECRET)


@pytest.mark.parametrize(
    ("path", "error"), [("/crash", BrokerError()), ("/timeout", GatewayTimeout())]
)
async def test_an_error_escaping_a_handler_gets_the_brokers_shape(
    path: str, error: BrokerError
) -> None:
    app = web.Application()
    app.router.add_get("/crash", _raises_runtime_error)
    app.router.add_get("/timeout", _raises_timeout)
    runner = GatewayRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        reply = await raw_exchange("127.0.0.1", site.port, http_request("GET", path), wait=3.0)
    finally:
        await runner.cleanup()
    assert_answered_like_the_broker(reply, error)
    assert SECRET.encode() not in reply.data

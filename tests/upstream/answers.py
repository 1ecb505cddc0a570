"""A small upstream we own whose OAuth and mint answers a test chooses byte for byte,
and a broker in front of it, started on a fresh loop per generated example.

In raw-bytes mode (``Upstream.raw``) the checkout calls are answered by a bare socket
server with exactly the bytes the test gives: status lines, field names and control
characters that no HTTP server library would write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from yarl import URL

from broker.web.app import create_app, runner_options
from tests.conftest import BrokerTestServer, new_session
from tests.helpers import CLIENT_ID, make_settings

SECRET = b"answers-upstream-signing-secret!"


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # sent without a Content-Length


def json_answer(body: object, **headers: str) -> Answer:
    return Answer(body=json.dumps(body).encode(), headers=headers)


def good_oauth() -> Answer:
    return json_answer({"access_token": "a" * 56, "expires_in": 3600, "token_type": "bearer"})


def checkout_jwt(offset: float = 0.0, ttl: float = 300.0, **claims: object) -> tuple[str, float]:
    """A checkout JWT as the upstream mints it, on a clock *offset* from ours."""
    now = time.time() + offset
    payload: dict[str, object] = {
        "client_id": CLIENT_ID,
        "customer_id": "cus_alice",
        "invoice_id": "inv_alice_1",
        "iat": now,
        "exp": now + ttl,
    }
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256"), now + ttl


def good_mint(offset: float = 0.0) -> Answer:
    token, expires_at = checkout_jwt(offset)
    return json_answer({"token": token, "expires_at": expires_at})


# Raw-bytes mode: a checkout call's head and body in, the bytes to answer it with out.
RawScript = Callable[[bytes, bytes], bytes]


@dataclass
class Upstream:
    oauth: Callable[[], Answer] = good_oauth
    mint: Callable[[], Answer] = good_mint
    # The checkout call's answer once its token verified (None: a small invoice).
    checkout: Callable[[], Answer] | None = None
    # Raw-bytes mode: every checkout call answered with what this returns, unchecked.
    raw: RawScript | None = None
    mints: int = 0
    served: list[str] = field(default_factory=list)
    # Raw-bytes mode: each checkout call's head and body, as they arrived.
    received: list[tuple[bytes, bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def oauth(_: web.Request) -> web.Response:
            return _respond(self.oauth())

        async def mint(_: web.Request) -> web.Response:
            self.mints += 1
            return _respond(self.mint())

        async def checkout(request: web.Request) -> web.StreamResponse:
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
            self.served.append(bearer)
            try:
                jwt.decode(bearer, SECRET, algorithms=["HS256"], options={"verify_exp": False})
            except jwt.InvalidTokenError:
                return web.json_response({"code": "unauthorized"}, status=401)
            if self.checkout is None:
                return web.json_response({"id": "inv_alice_1"})
            answer = self.checkout()
            if not answer.chunked:
                return _respond(answer)
            response = web.StreamResponse(status=answer.status, headers=answer.headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(answer.body)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/oauth/token", oauth)
        app.router.add_post("/v1/checkout-auth/init", mint)
        app.router.add_get("/checkout/invoice", checkout)
        return app


def _respond(answer: Answer) -> web.Response:
    headers = {"Content-Type": "application/json", **answer.headers}
    return web.Response(status=answer.status, body=answer.body, headers=headers)


class RawServer:
    """*upstream* in raw-bytes mode: OAuth and mint answered from its ``Answer``s, each
    ``/checkout/`` call with the bytes of its ``raw`` script, on one keep-alive
    connection after another (the broker's requests always carry a Content-Length)."""

    def __init__(self, upstream: Upstream, script: RawScript) -> None:
        self._upstream = upstream
        self._script = script
        self._server: asyncio.Server | None = None

    async def start(self) -> URL:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                writer.write(self._answer(head.split(b" ", 2)[1], head, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the broker closed the connection: as it does after a broken answer
        finally:
            writer.close()

    def _answer(self, target: bytes, head: bytes, body: bytes) -> bytes:
        upstream = self._upstream
        if target.startswith(b"/checkout/"):
            upstream.received.append((head, body))
            return self._script(head, body)
        if target == b"/oauth/token":
            return _raw(upstream.oauth())
        upstream.mints += 1
        return _raw(upstream.mint())


def _raw(answer: Answer) -> bytes:
    fields = {"Content-Type": "application/json", **answer.headers}
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    head = f"HTTP/1.1 {answer.status} X\r\n{lines}Content-Length: {len(answer.body)}\r\n\r\n"
    return head.encode() + answer.body


@contextlib.asynccontextmanager
async def serving(upstream: Upstream) -> AsyncIterator[URL]:
    """*upstream* on loopback (raw-bytes mode if it has a ``raw`` script), its base URL."""
    if upstream.raw is not None:
        raw = RawServer(upstream, upstream.raw)
        try:
            yield await raw.start()
        finally:
            await raw.close()
        return
    server = TestServer(upstream.app())
    await server.start_server()
    try:
        yield server.make_url("")
    finally:
        await server.close()


Scenario = Callable[[TestClient[Any, Any], Upstream, CollectorRegistry], Awaitable[None]]


def run_with_broker(
    upstream: Upstream, scenario: Scenario, *, transport: str = "aiohttp", **overrides: Any
) -> None:
    """Start *upstream* and a broker before it (on *transport*) on a fresh loop, run
    *scenario*, stop."""

    async def main() -> None:
        async with serving(upstream) as base_url:
            settings = make_settings(base_url, **overrides)
            upstream_settings = replace(settings.upstream, transport=transport)
            settings = replace(settings, upstream=upstream_settings)
            registry = CollectorRegistry()
            options = runner_options(settings)
            del options["handler_cancellation"]
            server = BrokerTestServer(create_app(settings, registry=registry))
            await server.start_server(**options)
            client: TestClient[Any, Any] = TestClient(server)
            await client.start_server()
            try:
                await scenario(client, upstream, registry)
            finally:
                await client.close()

    asyncio.run(main())


async def checkout_status(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    token = await new_session(client)
    response = await client.get("/checkout/invoice", headers={"Authorization": f"Bearer {token}"})
    body: dict[str, Any] = await response.json(content_type=None)
    return response.status, body

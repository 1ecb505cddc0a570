"""A small upstream we own whose OAuth and mint answers a test chooses byte for byte,
and a broker in front of it, started on a fresh loop per generated example."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

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


@dataclass
class Upstream:
    oauth: Callable[[], Answer] = good_oauth
    mint: Callable[[], Answer] = good_mint
    # The checkout call's answer once its token verified (None: a small invoice).
    checkout: Callable[[], Answer] | None = None
    mints: int = 0
    served: list[str] = field(default_factory=list)

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


Scenario = Callable[[TestClient[Any, Any], Upstream, CollectorRegistry], Awaitable[None]]


def run_with_broker(
    upstream: Upstream, scenario: Scenario, *, transport: str = "aiohttp", **overrides: Any
) -> None:
    """Start *upstream* and a broker before it (on *transport*) on a fresh loop, run
    *scenario*, stop."""

    async def main() -> None:
        up = TestServer(upstream.app())
        await up.start_server()
        settings = make_settings(up.make_url(""), **overrides)
        settings = replace(settings, upstream=replace(settings.upstream, transport=transport))
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
            await up.close()

    asyncio.run(main())


async def checkout_status(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    token = await new_session(client)
    response = await client.get("/checkout/invoice", headers={"Authorization": f"Bearer {token}"})
    body: dict[str, Any] = await response.json(content_type=None)
    return response.status, body

"""Fixtures: a real sandbox upstream and a real broker, both on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient, AiohttpServer

from broker.app import create_app, runner_options
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.settings import Settings
from tests.helpers import API_KEY, Sandbox, auth, make_settings

BrokerClient = TestClient[web.Request, web.Application]
MakeSandbox = Callable[..., Awaitable[Sandbox]]
MakeBroker = Callable[..., Awaitable[BrokerClient]]


@pytest.fixture
async def control_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_sandbox(aiohttp_server: AiohttpServer, control_http: aiohttp.ClientSession) -> MakeSandbox:
    async def make(**kwargs: Any) -> Sandbox:
        server = await aiohttp_server(create_sandbox_app(SandboxSettings(**kwargs)))
        return Sandbox(url=server.make_url(""), http=control_http)

    return make


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    return await make_sandbox()


@pytest.fixture(params=["aiohttp", "lean"])
def transport(request: pytest.FixtureRequest) -> str:
    """``upstream.transport``: every test that starts a broker runs against both."""
    name: str = request.param
    return name


@pytest.fixture
def make_broker(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, transport: str
) -> MakeBroker:
    async def make(settings: Settings, registry: CollectorRegistry | None = None) -> BrokerClient:
        settings = replace(settings, upstream=replace(settings.upstream, transport=transport))
        app = create_app(settings, registry=registry or CollectorRegistry())
        # The production runner's access logger: request_finished lines in tests too.
        options = runner_options(settings)
        del options["handler_cancellation"]  # TestServer always sets it (True)
        server = await aiohttp_server(app, **options)
        return cast(BrokerClient, await aiohttp_client(server))

    return make


@pytest.fixture
async def broker(make_broker: MakeBroker, sandbox: Sandbox, transport: str) -> BrokerClient:
    return await make_broker(make_settings(sandbox.url, transport=transport))


async def new_session(
    client: BrokerClient, customer_id: str = "cus_alice", invoice_id: str = "inv_alice_1"
) -> str:
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": customer_id, "invoice_id": invoice_id},
        headers=auth(API_KEY),
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    token: str = body["token"]
    return token

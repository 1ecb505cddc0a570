"""Fixtures: a sandbox upstream on loopback, and the credentials its callers hold.

Modules change how the sandbox is configured by overriding ``sandbox_settings``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from broker.sandbox import SandboxSettings, create_sandbox_app

# Fixed so tests can decode the JWTs the sandbox mints.
SIGNING_SECRET = b"sandbox-test-signing-secret-0123"


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(signing_secret=SIGNING_SECRET)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, sandbox_settings: SandboxSettings
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_sandbox_app(sandbox_settings))


@pytest.fixture
def oauth_headers(sandbox_settings: SandboxSettings) -> dict[str, str]:
    """Good Basic credentials for ``POST /oauth/token``."""
    pair = f"{sandbox_settings.client_id}:{sandbox_settings.client_secret}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


@pytest.fixture
async def partner_token(
    client: TestClient[web.Request, web.Application], oauth_headers: dict[str, str]
) -> str:
    response = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=oauth_headers
    )
    assert response.status == 200, await response.text()
    token: str = (await response.json())["access_token"]
    return token


@pytest.fixture
def mint(
    client: TestClient[web.Request, web.Application], partner_token: str
) -> Callable[[str, str], Awaitable[str]]:
    """Mint a checkout JWT for (customer_id, invoice_id), asserting success."""

    async def mint(customer_id: str, invoice_id: str) -> str:
        response = await client.post(
            "/v1/checkout-auth/init",
            json={"customer_id": customer_id, "invoice_id": invoice_id},
            headers={"Authorization": f"Bearer {partner_token}"},
        )
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
        return token

    return mint


@pytest.fixture
async def alice_token(mint: Callable[[str, str], Awaitable[str]]) -> str:
    return await mint("cus_alice", "inv_alice_1")

"""CORS: exact origins only, preflights answered by the broker and never forwarded,
CORS headers on every answer to an allowed origin (errors included), and no
``Access-Control-*`` header from the upstream ever reaching the browser.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpRawServer

from broker.config.model import CorsSettings
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import Sandbox, auth
from tests.security.conftest import (
    ORIGIN,
    hardened_settings,
    roomy_limits,
    upstream_traffic,
)

CORS = CorsSettings(allowed_origins=(ORIGIN,), max_age=600)
PREFLIGHT_PATHS = [
    "/checkout/invoice",
    "/checkout/v1/payments",
    "/checkout/payment-methods/pm_1/cvv",
    "/checkout/not-on-the-allowlist",
    "/v1/checkout-auth/init",
    "/checkout-auth/init",
    "/.well-known/jwks.json",
]
FOREIGN_ORIGINS = [
    "https://evil.example",
    "https://shop.example.evil.example",
    "https://evilshop.example",
    "http://shop.example",
    "https://shop.example:8443",
    "https://shop.example/",
    "null",
    "*",
]


def tokens(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def assert_cors_for_origin(headers: CIMultiDictProxy[str], *, context: Any = None) -> None:
    assert headers.getall("Access-Control-Allow-Origin", []) == [ORIGIN], context
    assert "origin" in tokens(headers.get("Vary")), context
    assert {"retry-after", "x-request-id"} <= tokens(
        headers.get("Access-Control-Expose-Headers")
    ), context
    assert "Access-Control-Allow-Credentials" not in headers, context


@pytest.fixture
async def cors_broker(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    return await make_broker(hardened_settings(sandbox.url, cors=CORS))


@pytest.mark.parametrize("path", PREFLIGHT_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_preflight_from_an_allowed_origin_is_answered_here(
    cors_broker: BrokerClient, sandbox: Sandbox, path: str, method: str
) -> None:
    response = await cors_broker.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status == 204, await response.text()
    headers = response.headers
    assert headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
    assert {"get", "post"} <= tokens(headers.get("Access-Control-Allow-Methods"))
    assert {"authorization", "content-type", "accept", "idempotency-key"} <= tokens(
        headers.get("Access-Control-Allow-Headers")
    )
    assert int(headers["Access-Control-Max-Age"]) == 600
    assert "origin" in tokens(headers.get("Vary"))
    assert "Access-Control-Allow-Credentials" not in headers
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
async def test_preflight_from_another_origin_is_403_without_allow_origin(
    cors_broker: BrokerClient, sandbox: Sandbox, origin: str
) -> None:
    response = await cors_broker.options(
        "/checkout/invoice",
        headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
    )
    assert response.status == 403
    assert (await response.json())["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert upstream_traffic(await sandbox.requests()) == []


async def test_with_no_origins_configured_every_preflight_is_refused(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(hardened_settings(sandbox.url))
    for path in ("/checkout/invoice", "/v1/checkout-auth/init"):
        response = await client.options(
            path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert response.status == 403
        assert (await response.json())["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in response.headers
    assert upstream_traffic(await sandbox.requests()) == []


async def test_allowed_origin_gets_cors_headers_on_success_and_on_every_error(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    limits = roomy_limits(session_requests_per_second=0.01, session_burst=3)
    client = await make_broker(hardened_settings(sandbox.url, cors=CORS, limits=limits))
    origin = {"Origin": ORIGIN}
    init = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers={**origin, "Authorization": "Bearer test-api-key-0123456789"},
    )
    assert init.status == 200
    assert_cors_for_origin(init.headers, context="init 200")
    session = (await init.json())["token"]

    answers = {
        "200": await client.get("/checkout/invoice", headers={**origin, **auth(session)}),
        "401": await client.get("/checkout/invoice", headers=origin),
        "404": await client.get("/checkout/nowhere", headers={**origin, **auth(session)}),
        "405": await client.delete("/checkout/invoice", headers={**origin, **auth(session)}),
        "400": await client.get("/checkout/a;b", headers={**origin, **auth(session)}),
        "init 401": await client.post("/v1/checkout-auth/init", json={}, headers=origin),
    }
    await sandbox.faults(redirect=True)
    answers["502"] = await client.get("/checkout/invoice", headers={**origin, **auth(session)})
    await sandbox.faults(redirect=False)
    for _ in range(5):
        last = await client.get("/checkout/invoice", headers={**origin, **auth(session)})
    answers["429"] = last
    for name, response in answers.items():
        expected = int(name.split()[-1])
        assert response.status == expected, (name, await response.text())
        assert_cors_for_origin(response.headers, context=name)
    assert int(answers["429"].headers["Retry-After"]) >= 1


async def test_other_origins_get_no_cors_headers_on_actual_requests(
    cors_broker: BrokerClient,
) -> None:
    session = await new_session(cors_broker)
    for origin in FOREIGN_ORIGINS:
        for response in (
            await cors_broker.get("/checkout/invoice", headers={"Origin": origin, **auth(session)}),
            await cors_broker.get("/checkout/invoice", headers={"Origin": origin}),
        ):
            assert "Access-Control-Allow-Origin" not in response.headers, origin
            assert "Access-Control-Expose-Headers" not in response.headers, origin
            assert "Access-Control-Allow-Credentials" not in response.headers, origin


@pytest.mark.forwarding
async def test_upstream_cors_headers_are_never_relayed(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    """An upstream that sends permissive CORS headers must not widen the broker's."""

    async def upstream(request: web.BaseRequest) -> web.StreamResponse:
        async with sandbox.http.request(
            request.method,
            sandbox.url.with_path(request.raw_path, encoded=True),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            headers = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
            if request.path.startswith("/checkout"):
                headers |= {
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Credentials": "true",
                    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, PATCH",
                    "Access-Control-Allow-Headers": "X-Evil",
                    "Access-Control-Expose-Headers": "X-Upstream-Secret",
                    "Access-Control-Max-Age": "86400",
                    "Access-Control-Allow-Private-Network": "true",
                }
            return web.Response(status=answer.status, body=await answer.read(), headers=headers)

    raw = await aiohttp_raw_server(upstream)
    client = await make_broker(hardened_settings(raw.make_url(""), cors=CORS))
    session = await new_session(client)
    for origin in ({"Origin": ORIGIN}, {"Origin": "https://evil.example"}, {}):
        response = await client.get("/checkout/invoice", headers={**origin, **auth(session)})
        assert response.status == 200
        relayed = {k.lower(): v for k, v in response.headers.items()}
        assert relayed.get("access-control-allow-origin") in (None, ORIGIN), origin
        assert "access-control-allow-credentials" not in relayed
        assert "access-control-allow-headers" not in relayed
        assert "access-control-allow-methods" not in relayed
        assert "access-control-max-age" not in relayed
        assert "access-control-allow-private-network" not in relayed
        assert "x-upstream-secret" not in tokens(relayed.get("access-control-expose-headers"))
        if not origin or origin["Origin"] != ORIGIN:
            assert not any(name.startswith("access-control-") for name in relayed), origin

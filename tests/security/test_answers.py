"""What the browser receives is chosen, not relayed: an allowlist of upstream fields, a
Retry-After on every 429, no Referrer, and token answers no cache keeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer

from tests.conftest import MakeBroker, new_session
from tests.helpers import API_KEY, Sandbox, auth
from tests.security.conftest import hardened_settings

RawHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# These answers are forwarded: each runs on both upstream transports.
BOTH_TRANSPORTS = pytest.mark.parametrize("transport", ["aiohttp", "lean"], indirect=True)
LOUD_UPSTREAM_FIELDS = {
    "Set-Cookie": "session=upstream; Path=/",
    "Location": "https://elsewhere.example/",
    "Alt-Svc": 'h3=":443"; ma=86400',
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains; preload",
    "X-Powered-By": "upstream-framework 1.2.3",
    "X-Upstream-Debug": "internal-host-17",
    "Link": "</internal>; rel=preload",
    "Content-Disposition": 'attachment; filename="invoice.pdf"',
    "ETag": '"v1"',
}


def loud(sandbox: Sandbox, *, status: int | None = None) -> RawHandler:
    """The sandbox's answers, with fields no browser should see on every checkout call."""

    async def upstream(request: web.BaseRequest) -> web.StreamResponse:
        answer = await sandbox.delegate(request)
        if request.path.startswith("/checkout"):
            answer.headers.update(LOUD_UPSTREAM_FIELDS)
            if status is not None:
                answer.set_status(status)
        return answer

    return upstream


@BOTH_TRANSPORTS
async def test_only_allowlisted_upstream_fields_reach_the_browser(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    raw = await aiohttp_raw_server(loud(sandbox))
    client = await make_broker(hardened_settings(raw.make_url("")))
    response = await client.get("/checkout/invoice", headers=auth(await new_session(client)))
    assert response.status == 200
    received = {name.lower() for name in response.headers}
    for name in ("set-cookie", "location", "alt-svc", "strict-transport-security",
                 "x-powered-by", "x-upstream-debug", "link"):  # fmt: skip
        assert name not in received, name
    assert response.headers["Content-Disposition"] == 'attachment; filename="invoice.pdf"'
    assert response.headers["ETag"] == '"v1"'
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


@BOTH_TRANSPORTS
async def test_an_upstream_429_always_carries_retry_after(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    raw = await aiohttp_raw_server(loud(sandbox, status=429))
    client = await make_broker(hardened_settings(raw.make_url("")))
    response = await client.get("/checkout/invoice", headers=auth(await new_session(client)))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1


async def test_session_answers_are_kept_by_no_cache(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(hardened_settings(sandbox.url))
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(API_KEY),
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    error = await client.get("/checkout/invoice")
    assert error.status == 401
    assert error.headers["Referrer-Policy"] == "no-referrer"

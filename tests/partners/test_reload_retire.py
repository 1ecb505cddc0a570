"""A reload that retires an account while requests still wait on its mints.

A retired account is closed only after the longest such request could have finished
(its wait on the mint budget, the mint, the forwarded call); one that still waits when
it closes gets a clean 503 with Retry-After, never a dropped connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer

from broker.errors import ServiceUnavailable
from broker.gateway import Gateway
from broker.web.keys import gateway_key
from tests.conftest import MakeBroker, new_session
from tests.helpers import Sandbox, auth, make_settings


async def test_a_request_waiting_on_the_mint_budget_survives_a_reload(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    # A forwarded call's bound is 0 + 1 + 1 s, but a mint may wait 12 s for the budget.
    settings = make_settings(
        sandbox.url, read_timeout=1.0, rate_limit_per_second=0.25, rate_limit_max_wait=12.0
    )
    client = await make_broker(settings)
    gateway: Gateway = client.app[gateway_key]
    first = await new_session(client, "cus_alice", "inv_alice_1")
    assert (await client.get("/checkout/invoice", headers=auth(first))).status == 200
    second = await new_session(client, "cus_bob", "inv_bob_1")
    waiting = asyncio.ensure_future(client.get("/checkout/invoice", headers=auth(second)))
    await asyncio.sleep(0.3)  # now waiting on the budget for its mint
    outcome = await gateway.reload(
        replace(settings, tokens=replace(settings.tokens, refresh_margin=30.0))
    )
    assert outcome.partners == {"default": "replaced"}
    try:
        response = await waiting
    except aiohttp.ServerDisconnectedError:
        raise AssertionError("the broker dropped the connection without an answer") from None
    assert response.status == 200, await response.text()


async def test_a_request_whose_mint_is_in_flight_when_its_account_closes_gets_a_503(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    gateway: Gateway = client.app[gateway_key]
    account = gateway.accounts["default"]
    token = await new_session(client, "cus_bob", "inv_bob_1")
    await sandbox.faults(stall_customers=["cus_bob"], stall_seconds=3)
    waiting = asyncio.ensure_future(client.get("/checkout/invoice", headers=auth(token)))
    await asyncio.sleep(0.3)  # the mint is in flight, the request waits on it
    await account.close()  # as _retire does once the grace is over
    try:
        response = await waiting
    except aiohttp.ServerDisconnectedError:
        raise AssertionError("the broker dropped the connection without an answer") from None
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"


async def test_a_wait_on_the_partner_token_when_its_account_closes_is_a_503(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def upstream(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/oauth/token":  # held until the test lets it go
            arrived.set()
            await release.wait()
        return await sandbox.delegate(request)

    raw = await aiohttp_raw_server(upstream)
    client = await make_broker(make_settings(raw.make_url("")))
    account = client.app[gateway_key].accounts["default"]
    await arrived.wait()  # the start-up fetch of the partner token is in flight
    waiting = asyncio.ensure_future(account.partner_token.get())  # joins that fetch
    await asyncio.sleep(0)
    try:
        await account.close()
        with pytest.raises(ServiceUnavailable) as refused:
            await waiting
        assert refused.value.retry_after == 1.0
    finally:
        release.set()

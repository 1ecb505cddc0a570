"""Every wait on the upstream is bounded, on both transports, through the broker: a free
connection (``upstream.pool_wait``), one customer's share of the pool
(``upstream.max_connections_per_customer``), and the size of an answer's head (32 KiB)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer

from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import Sandbox, auth, make_settings

# /checkout/invoice hangs until the test releases it, or this long: far past every bound
# under test, so that a wait that is not bounded shows as a test over its own deadline,
# not as a hung suite.
STALL = 3.0
DEADLINE = 2.0

RawHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def upstream(
    sandbox: Sandbox, *, head_fields: int = 0, release: asyncio.Event | None = None
) -> RawHandler:
    """The sandbox, except that /checkout/invoice stalls (until *release* is set, at most
    STALL seconds) and other checkout answers carry *head_fields* extra fields of 4 KiB
    each."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/checkout/invoice":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((release or asyncio.Event()).wait(), STALL)
        answer = await sandbox.delegate(request)
        for index in range(head_fields):
            answer.headers[f"X-Pad-{index}"] = "p" * 4096
        return answer

    return handle


async def broker_before(
    make_broker: MakeBroker, raw: Any, **upstream_settings: Any
) -> BrokerClient:
    settings = make_settings(raw.make_url(""))
    settings = replace(settings, upstream=replace(settings.upstream, **upstream_settings))
    return await make_broker(settings)


async def within(seconds: float, call: Awaitable[Any]) -> Any:
    """*call*, or a test failure once *seconds* passed (an unbounded wait)."""
    async with asyncio.timeout(seconds):
        return await call


@pytest.mark.forwarding
async def test_a_call_waiting_for_a_pool_connection_gets_a_fast_503(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    """One connection, held by a hung call: another customer's call waits pool_wait,
    not for the hung one (it waited 5.5 s on the aiohttp transport)."""
    release = asyncio.Event()
    raw = await aiohttp_raw_server(upstream(sandbox, release=release))
    client = await broker_before(make_broker, raw, max_connections=1, pool_wait=0.2)
    alice = auth(await new_session(client, "cus_alice", "inv_alice_1"))
    bob = auth(await new_session(client, "cus_bob", "inv_bob_1"))
    assert (await client.get("/checkout/payment-methods", headers=bob)).status == 200
    hung = asyncio.ensure_future(client.get("/checkout/invoice", headers=alice))
    await asyncio.sleep(0.3)  # alice's call holds the only connection
    started = time.monotonic()
    response = await within(DEADLINE, client.get("/checkout/payment-methods", headers=bob))
    waited = time.monotonic() - started
    assert response.status == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert 0.15 <= waited < 1.5, waited
    release.set()
    assert (await hung).status == 200  # the hung call itself is served in the end


@pytest.mark.forwarding
async def test_one_customer_cannot_hold_the_whole_pool(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    release = asyncio.Event()
    raw = await aiohttp_raw_server(upstream(sandbox, release=release))
    client = await broker_before(
        make_broker, raw, max_connections=8, max_connections_per_customer=2
    )
    alice = auth(await new_session(client, "cus_alice", "inv_alice_1"))
    bob = auth(await new_session(client, "cus_bob", "inv_bob_1"))
    for headers in (alice, bob):  # both keys minted before the stalls
        assert (await client.get("/checkout/payment-methods", headers=headers)).status == 200
    hung = [asyncio.ensure_future(client.get("/checkout/invoice", headers=alice)) for _ in range(2)]
    await asyncio.sleep(0.3)  # alice holds her share
    over = await within(DEADLINE, client.get("/checkout/payment-methods", headers=alice))
    assert over.status == 503  # at once: her own calls are what is stuck
    assert int(over.headers["Retry-After"]) >= 1
    other = await within(DEADLINE, client.get("/checkout/payment-methods", headers=bob))
    assert other.status == 200
    release.set()
    assert [r.status for r in await asyncio.gather(*hung)] == [200, 200]


@pytest.mark.forwarding
@pytest.mark.parametrize(("fields", "status"), [(6, 200), (9, 502)])  # ~24 KiB, ~36 KiB
async def test_an_answer_head_over_32_kib_is_a_502(
    make_broker: MakeBroker,
    sandbox: Sandbox,
    aiohttp_raw_server: AiohttpRawServer,
    fields: int,
    status: int,
) -> None:
    """Each field under aiohttp's own 8 KiB limit: only the broker's bound refuses."""
    raw = await aiohttp_raw_server(upstream(sandbox, head_fields=fields))
    client = await broker_before(make_broker, raw)
    session = auth(await new_session(client))
    response = await within(DEADLINE, client.get("/checkout/payment-methods", headers=session))
    assert response.status == status
    assert not any(name.startswith("X-Pad") for name in response.headers)


def dropping(sandbox: Sandbox, drops: list[str]) -> RawHandler:
    """The sandbox, except that the checkout calls named in *drops* (one each) find
    their connection closed before any answer byte. Every answer closes its connection,
    so each call is on a fresh one (aiohttp's client retries a reused one by itself)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path in drops:
            drops.remove(request.path)
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError  # the connection is gone: nothing to answer
        answer = await sandbox.delegate(request)
        answer.force_close()
        return answer

    return handle


@pytest.mark.forwarding
async def test_a_get_reset_before_its_answer_is_retried_once_and_a_post_never(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    drops = ["/checkout/invoice", "/checkout/payments"]
    raw = await aiohttp_raw_server(dropping(sandbox, drops))
    client = await broker_before(make_broker, raw)
    session = auth(await new_session(client))
    assert (await client.get("/checkout/payment-methods", headers=session)).status == 200
    assert (await client.get("/checkout/invoice", headers=session)).status == 200
    payment = {"amount": "1.00", "payment_date": "2026-12-02T00:00:00Z",
               "payment_method": "card", "payment_method_id": "pm_1"}  # fmt: skip
    posted = await client.post("/checkout/payments", json=payment, headers=session)
    assert posted.status == 503  # the upstream may have acted on it: never sent twice
    assert drops == []

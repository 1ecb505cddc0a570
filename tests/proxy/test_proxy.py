"""End to end: session in, checkout JWT swapped in, the SDK's calls proxied."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer
from yarl import URL

from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import Sandbox, auth, make_settings


def bearer_seen(request: dict[str, object]) -> list[str]:
    headers = request["headers"]
    assert isinstance(headers, list)
    return [value for name, value in headers if name.lower() == "authorization"]


@pytest.mark.forwarding
async def test_session_gets_invoice_with_checkout_jwt_swapped_in(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    session = await new_session(broker)
    response = await broker.get("/checkout/invoice", headers=auth(session))
    assert response.status == 200
    invoice = await response.json()
    assert invoice["id"] == "inv_alice_1"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.text()

    seen = [r for r in await sandbox.requests() if r["raw_path"] == "/checkout/invoice"]
    assert len(seen) == 1
    (upstream_bearer,) = bearer_seen(seen[0])
    checkout_jwt = upstream_bearer.removeprefix("Bearer ")
    assert checkout_jwt != session
    claims = jwt.decode(checkout_jwt, options={"verify_signature": False})
    assert (claims["customer_id"], claims["invoice_id"]) == ("cus_alice", "inv_alice_1")
    # The upstream never saw the session token; the browser never saw the checkout JWT.
    for request in await sandbox.requests():
        assert session not in str(request)
    assert checkout_jwt not in body
    assert all(checkout_jwt not in value for value in response.headers.values())


@pytest.mark.forwarding
async def test_both_checkout_prefixes_are_forwarded(broker: BrokerClient) -> None:
    session = await new_session(broker)
    for path in ("/checkout/payment-methods", "/checkout/v1/payment-methods"):
        response = await broker.get(path, headers=auth(session))
        assert response.status == 200, path
        assert "data" in await response.json()


@pytest.mark.forwarding
async def test_post_body_and_idempotency_key_reach_upstream(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    session = await new_session(broker)
    body = {
        "amount": "10.00",
        "payment_date": "2026-11-28T00:00:00Z",
        "payment_method": "card",
        "payment_method_id": "pm_x",
    }
    response = await broker.post(
        "/checkout/payments",
        json=body,
        headers={**auth(session), "Idempotency-Key": "payment-inv-1", "Accept": "application/json"},
    )
    # The sandbox refuses the unknown payment method; the 400 is passed through as is.
    assert response.status == 400
    assert (await response.json())["validation_errors"]["payment_method_id"]
    (seen,) = [r for r in await sandbox.requests() if r["raw_path"] == "/checkout/payments"]
    names = {name.lower(): value for name, value in seen["headers"]}
    assert names["idempotency-key"] == "payment-inv-1"
    assert names["content-type"] == "application/json"
    assert '"payment_method_id": "pm_x"' in seen["body"]


@pytest.mark.forwarding
@pytest.mark.parametrize(
    "connection",
    [
        ["keep-alive, X-Secret-Hop, Accept-Language"],
        # Past the length whose parse is remembered, and split over two fields.
        ["keep-alive, X-Secret-Hop, Accept-Language, " + ", ".join(f"X-Pad-{i}" for i in range(9))],
        ["keep-alive, X-Secret-Hop", "Accept-Language"],
    ],
)
async def test_browser_credentials_and_connection_named_headers_never_reach_upstream(
    broker: BrokerClient, sandbox: Sandbox, connection: list[str]
) -> None:
    session = await new_session(broker)
    response = await broker.get(
        "/checkout/invoice",
        headers=[
            *auth(session).items(),
            ("Cookie", "sid=canary-cookie"),
            *(("Connection", value) for value in connection),
            ("X-Secret-Hop", "canary-hop"),
            ("Accept-Language", "fr"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Proxy-Authorization", "Basic canary"),
        ],
    )
    assert response.status == 200
    (seen,) = [r for r in await sandbox.requests() if r["raw_path"] == "/checkout/invoice"]
    names = {name.lower() for name, _ in seen["headers"]}
    assert not names & {"cookie", "x-secret-hop", "accept-language", "x-forwarded-for"}
    assert "proxy-authorization" not in names
    assert "canary" not in str(seen)


@pytest.mark.forwarding
async def test_query_arrives_byte_exact(broker: BrokerClient, sandbox: Sandbox) -> None:
    session = await new_session(broker)
    query = "after=gaFpxBACEaXBVABEYbHG+X9LyLnH&a=1+2&a=%2B3&b=%20"
    response = await broker.get(f"/checkout/payment-methods?{query}", headers=auth(session))
    assert response.status == 200
    paths = [r["raw_path"] for r in await sandbox.requests()]
    assert f"/checkout/payment-methods?{query}" in paths


@pytest.mark.parametrize(
    "path",
    [
        "/checkout/..%2F..%2Foauth/token",
        "/checkout//x",
        "/checkout/../oauth/token",
        "/checkout/%2e%2e/oauth/token",
        "/checkout/invoice%00",
        "/checkout/a%5cb",
        "/checkout/a;b",
        "/checkout/./invoice",
    ],
)
async def test_dangerous_paths_are_refused_without_upstream_call(
    broker: BrokerClient, sandbox: Sandbox, path: str
) -> None:
    session = await new_session(broker)
    await sandbox.reset()
    # Sent exactly as written: the test client must not normalise the path first.
    raw_url = URL(str(broker.make_url("")).rstrip("/") + path, encoded=True)
    response = await broker.session.get(raw_url, headers=auth(session), allow_redirects=False)
    assert response.status in {400, 404}
    assert (await response.json())["code"] in {"bad_request", "not_found"}
    assert await sandbox.requests() == []


@pytest.mark.forwarding
async def test_upstream_revoking_a_token_costs_one_mint_not_an_error(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    session = await new_session(broker)
    assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200
    await sandbox.post(
        "/_sandbox/revoke", {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    )
    response = await broker.get("/checkout/invoice", headers=auth(session))
    assert response.status == 200
    stats = await sandbox.stats()
    assert stats["mints_per_key"]["cus_alice/inv_alice_1"] == 2
    assert stats["unauthorized_served"] == 1


@pytest.mark.forwarding
async def test_upstream_that_always_answers_401_gives_502_after_one_replay(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    session = await new_session(broker)
    await sandbox.faults(unauthorized_always=True)
    response = await broker.get("/checkout/invoice", headers=auth(session))
    assert response.status == 502
    assert (await response.json())["code"] == "bad_gateway"
    stats = await sandbox.stats()
    assert stats["requests_per_path"]["GET /checkout/invoice"] == 2
    assert stats["tokens_issued"] == 2


@pytest.mark.forwarding
async def test_upstream_redirect_is_not_followed(broker: BrokerClient, sandbox: Sandbox) -> None:
    session = await new_session(broker)
    await sandbox.faults(redirect=True)
    response = await broker.get("/checkout/invoice", headers=auth(session), allow_redirects=False)
    assert response.status == 502
    assert "Location" not in response.headers


@pytest.mark.forwarding
async def test_upstream_4xx_passes_through_unchanged(broker: BrokerClient) -> None:
    session = await new_session(broker)
    response = await broker.post("/checkout/payment-methods/bank", json={}, headers=auth(session))
    assert response.status == 400
    body = await response.json()
    assert body["code"]


async def test_unreachable_upstream_is_503_with_retry_after(
    make_broker: MakeBroker, unused_tcp_port: int
) -> None:
    client = await make_broker(make_settings(f"http://127.0.0.1:{unused_tcp_port}"))
    session = await new_session(client)
    response = await client.get("/checkout/invoice", headers=auth(session))
    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()


@pytest.mark.forwarding
async def test_slow_upstream_is_504(make_broker: MakeBroker, sandbox: Sandbox) -> None:
    client = await make_broker(make_settings(sandbox.url, read_timeout=0.3))
    session = await new_session(client)
    assert (await client.get("/checkout/invoice", headers=auth(session))).status == 200
    await sandbox.faults(latency_ms=1500)
    response = await client.get("/checkout/invoice", headers=auth(session))
    assert response.status == 504
    assert (await response.json())["code"] == "upstream_timeout"


def is_token_endpoint(request: web.BaseRequest) -> bool:
    return request.path == "/oauth/token" or "checkout-auth" in request.path


@pytest.mark.forwarding
async def test_an_empty_204_from_upstream_is_relayed(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if is_token_endpoint(request):
            return await sandbox.delegate(request)
        return web.Response(status=204)

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url("")))
    session = await new_session(client)
    response = await client.get("/checkout/payment-methods", headers=auth(session))
    assert response.status == 204
    assert await response.read() == b""


@pytest.mark.forwarding
async def test_upstream_dying_mid_body_truncates_the_response(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    """After headers are sent, a broken upstream must break the client's body too."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if is_token_endpoint(request):
            return await sandbox.delegate(request)
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()
        return response

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url("")))
    session = await new_session(client)
    response = await client.get("/checkout/invoice", headers=auth(session))
    assert response.status == 200
    with pytest.raises(Exception, match=r"(?i)payload|connection|closed|transfer"):
        await response.read()


@pytest.mark.forwarding
async def test_concurrent_requests_on_cold_keys_mint_once_per_key(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    keys = [(f"cus_load{i}", f"inv_load{i}") for i in range(20)]
    sessions = [await new_session(broker, c, i) for c, i in keys]

    async def call(n: int) -> int:
        response = await broker.get("/checkout/invoice", headers=auth(sessions[n % 20]))
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(call(n) for n in range(200)))
    assert statuses == [200] * 200
    stats = await sandbox.stats()
    assert stats["tokens_issued"] == 20
    assert sorted(stats["mints_per_key"].values()) == [1] * 20


@pytest.mark.forwarding
async def test_a_stalled_mint_does_not_slow_other_keys(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    await sandbox.faults(stall_customers=["cus_stall"], stall_seconds=3)
    stalled = await new_session(broker, "cus_stall", "inv_stall")
    fine = await new_session(broker, "cus_fine", "inv_fine")
    stalled_call = asyncio.ensure_future(broker.get("/checkout/invoice", headers=auth(stalled)))
    # Timed from the moment the stalled mint is held at the sandbox, however late that is.
    for _ in range(1000):
        if [r for r in await sandbox.requests() if "cus_stall" in r["body"]]:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the stalled mint never reached the sandbox")
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await broker.get("/checkout/invoice", headers=auth(fine))
    assert response.status == 200
    assert loop.time() - started < 1.0
    assert not stalled_call.done()
    await sandbox.reset()  # releases the stall: the stalled mint ends now, not seconds later
    stalled_response = await stalled_call
    assert stalled_response.status in {200, 504}

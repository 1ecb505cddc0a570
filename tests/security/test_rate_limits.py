"""Rate limits: token buckets per client IP (every route), per session (the proxy) and
per client IP on init, answered with 429 ``rate_limited`` and an integer Retry-After.
The client IP is the TCP peer; X-Forwarded-For counts only when the peer is a trusted
proxy, read right to left past trusted hops, so a client cannot spoof its way out.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import ClientResponse

from broker.config.model import ServerSettings
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import API_KEY, Sandbox, auth
from tests.security.conftest import (
    hardened_settings,
    hs256_mode,
    idp_claims,
    roomy_limits,
    sign_idp,
    upstream_traffic,
)

SLOW = 0.01  # tokens per second: nothing refills during a test


async def assert_rate_limited(response: ClientResponse) -> None:
    assert response.status == 429, await response.text()
    assert (await response.json())["code"] == "rate_limited"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1, retry_after


async def ip_limited(make_broker: MakeBroker, sandbox: Sandbox, **server: Any) -> BrokerClient:
    limits = roomy_limits(ip_requests_per_second=SLOW, ip_burst=3)
    settings = hardened_settings(
        sandbox.url, limits=limits, server=ServerSettings(**server), jwt_auth=hs256_mode()
    )
    return await make_broker(settings)


async def test_per_ip_limit_covers_the_proxy_and_public_routes_despite_x_forwarded_for(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await ip_limited(make_broker, sandbox)
    spoofed = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(10)]
    assert (await client.get("/checkout/invoice", headers=spoofed[0])).status == 401
    assert (await client.get("/.well-known/jwks.json", headers=spoofed[1])).status == 200
    assert (await client.get("/checkout/nowhere", headers=spoofed[2])).status == 404
    for headers in spoofed[3:]:
        for response in (
            await client.get("/checkout/invoice", headers=headers),
            await client.post("/checkout/payments", json={}, headers=headers),
            await client.get("/.well-known/jwks.json", headers=headers),
        ):
            await assert_rate_limited(response)
    assert upstream_traffic(await sandbox.requests()) == []


async def test_the_proxy_ip_bucket_does_not_cover_init(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    """Init has its own per-IP bucket (for callers without an API key, see below), so an IP
    that spent its proxy budget can still get a session for its next checkout."""
    client = await ip_limited(make_broker, sandbox)
    for _ in range(3):
        await client.get("/.well-known/jwks.json")
    await assert_rate_limited(await client.get("/.well-known/jwks.json"))
    body = {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    response = await client.post("/v1/checkout-auth/init", json=body, headers=auth(API_KEY))
    assert response.status == 200


async def test_per_session_limit_is_per_session_and_stops_forwarding(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    limits = roomy_limits(session_requests_per_second=SLOW, session_burst=3)
    client = await make_broker(hardened_settings(sandbox.url, limits=limits))
    first = await new_session(client, "cus_alice", "inv_alice_1")
    second = await new_session(client, "cus_bob", "inv_bob_1")
    for _ in range(3):
        assert (await client.get("/checkout/invoice", headers=auth(first))).status == 200
    for _ in range(3):
        await assert_rate_limited(await client.get("/checkout/invoice", headers=auth(first)))
    # Same IP, another session: its own bucket.
    for _ in range(3):
        assert (await client.get("/checkout/invoice", headers=auth(second))).status == 200
    await assert_rate_limited(await client.get("/checkout/v1/invoice", headers=auth(second)))
    stats = await sandbox.stats()
    assert stats["requests_per_path"]["GET /checkout/invoice"] == 6
    assert "GET /checkout/v1/invoice" not in stats["requests_per_path"]


async def init_limited(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    limits = roomy_limits(init_requests_per_second=SLOW, init_burst=2)
    settings = hardened_settings(sandbox.url, limits=limits, jwt_auth=hs256_mode())
    return await make_broker(settings)


async def test_per_ip_init_limit_stops_browsers_and_key_guessers(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await init_limited(make_broker, sandbox)
    idp = auth(sign_idp("hs256", idp_claims("cus_alice")))
    body = {"invoice_id": "inv_alice_1"}
    assert (await client.post("/v1/checkout-auth/init", json=body, headers=idp)).status == 200
    assert (await client.post("/checkout-auth/init", json=body, headers=idp)).status == 200
    for headers in (
        idp,
        auth("guessed-key-0000000000"),
        {**idp, "X-Forwarded-For": "198.51.100.7"},
    ):
        for path in ("/v1/checkout-auth/init", "/checkout-auth/init"):
            await assert_rate_limited(await client.post(path, json=body, headers=headers))
    # Sessions already issued keep working: the proxy has its own buckets.
    session = await new_session(client, "cus_bob", "inv_bob_1")
    assert (await client.get("/checkout/invoice", headers=auth(session))).status == 200


async def test_partner_backends_with_a_valid_api_key_are_not_limited_per_ip_on_init(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    """A partner backend issues sessions for all its users from a few addresses: its valid
    key exempts it from the init bucket, which browsers and key guessers spend."""
    client = await init_limited(make_broker, sandbox)
    body = {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    for _ in range(3):
        for path in ("/v1/checkout-auth/init", "/checkout-auth/init"):
            assert (await client.post(path, json=body, headers=auth(API_KEY))).status == 200
    for _ in range(2):
        await client.post("/v1/checkout-auth/init", json=body, headers=auth("guess-" + "x" * 20))
    await assert_rate_limited(
        await client.post("/v1/checkout-auth/init", json=body, headers=auth("guess-" + "y" * 20))
    )
    assert (
        await client.post("/checkout-auth/init", json=body, headers=auth(API_KEY))
    ).status == 200


async def test_behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_hop(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await ip_limited(
        make_broker,
        sandbox,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")),
    )

    async def status(*forwarded: str) -> int:
        headers = [("X-Forwarded-For", value) for value in forwarded]
        response = await client.get("/.well-known/jwks.json", headers=headers)
        return response.status

    # 203.0.113.7 spends its burst of 3, in every spelling a proxy chain produces.
    assert await status("203.0.113.7") == 200
    assert await status("198.51.100.66, 203.0.113.7") == 200  # spoofed left entry ignored
    assert await status("203.0.113.7, 10.1.2.3") == 200  # trusted hop skipped
    assert await status("203.0.113.7") == 429
    assert await status("1.2.3.4, 203.0.113.7, 10.0.0.9, 127.0.0.1") == 429
    assert await status("198.51.100.1", "203.0.113.7") == 429  # two fields, in order
    # Other clients behind the same proxy have their own buckets...
    assert await status("203.0.113.8") == 200
    assert await status("203.0.113.7, 203.0.113.9") == 200  # the rightmost untrusted one
    # ...and a spoofed leftmost address never buys a fresh bucket.
    for n in range(5):
        assert await status(f"192.0.2.{n}, 203.0.113.7") == 429


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await ip_limited(
        make_broker, sandbox, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    statuses = [
        (
            await client.get("/.well-known/jwks.json", headers={"X-Forwarded-For": f"10.0.0.{n}"})
        ).status
        for n in range(6)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]

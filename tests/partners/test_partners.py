"""Two partner accounts in one broker, each in front of its own sandbox upstream (own
OAuth client, own checkout-JWT signing secret): sessions, tokens, budgets and metrics
stay with their partner, whatever the customer and invoice ids."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import replace

import jwt
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from broker.config.model import CacheSettings, PartnerSettings, Settings
from broker.web.keys import gateway_key
from tests.conftest import MakeBroker, MakeSandbox
from tests.helpers import Sandbox, auth, make_settings
from tests.redis.processes import RedisServer

KEY_A = "partner-a-api-key-0123456789"
KEY_B = "partner-b-api-key-0123456789"


def partner(
    partner_id: str, sandbox: Sandbox, api_key: str, client_id: str, **fields: object
) -> PartnerSettings:
    values: dict[str, object] = {
        "id": partner_id,
        "base_url": sandbox.url,
        "client_id": client_id,
        "client_secret": f"{client_id}-secret",
        "rate_limit_per_second": 1000.0,
        "api_keys": (api_key,),
        **fields,
    }
    return PartnerSettings(**values)  # type: ignore[arg-type]


def two_partners(a: Sandbox, b: Sandbox, **b_fields: object) -> Settings:
    settings = make_settings(a.url)
    return replace(
        settings,
        declared_partners=(
            partner("alpha", a, KEY_A, "client-a"),
            partner("beta", b, KEY_B, "client-b", **b_fields),
        ),
    )


async def two_sandboxes(make_sandbox: MakeSandbox) -> tuple[Sandbox, Sandbox]:
    a = await make_sandbox(client_id="client-a", client_secret="client-a-secret",
                           partner_id="partner_alpha")  # fmt: skip
    b = await make_sandbox(client_id="client-b", client_secret="client-b-secret",
                           partner_id="partner_beta")  # fmt: skip
    return a, b


async def session(client: object, api_key: str, customer: str, invoice: str) -> str:
    response = await client.post(  # type: ignore[attr-defined]
        "/v1/checkout-auth/init",
        json={"customer_id": customer, "invoice_id": invoice},
        headers=auth(api_key),
    )
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    return token


def minted_client(sandbox_requests: list[dict[str, object]]) -> set[str]:
    """The client_id claims of the checkout JWTs the broker forwarded to a sandbox."""
    clients = set()
    for entry in sandbox_requests:
        if not str(entry["raw_path"]).startswith("/checkout/"):
            continue
        headers = dict(entry["headers"])  # type: ignore[call-overload]
        bearer = headers.get("Authorization", "").removeprefix("Bearer ")
        clients.add(jwt.decode(bearer, options={"verify_signature": False})["client_id"])
    return clients


@pytest.mark.forwarding
async def test_each_partner_is_served_by_its_own_upstream_with_its_own_tokens(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    registry = CollectorRegistry()
    client = await make_broker(two_partners(a, b), registry)
    # The same customer and invoice under both partners: two sessions, two tokens.
    sessions = {
        "alpha": await session(client, KEY_A, "cus_alice", "inv_alice_1"),
        "beta": await session(client, KEY_B, "cus_alice", "inv_alice_1"),
    }
    for token in sessions.values():
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims.get("partner") in sessions
    for _ in range(3):
        for token in sessions.values():
            response = await client.get("/checkout/invoice", headers=auth(token))
            assert response.status == 200, await response.text()
    # Each upstream saw only its own partner's checkout JWTs, three calls each.
    assert minted_client(await a.requests()) == {"client-a"}
    assert minted_client(await b.requests()) == {"client-b"}
    for sandbox in (a, b):
        stats = await sandbox.stats()
        assert stats["tokens_issued"] == 1, stats
        assert stats["unauthorized_served"] == 0, stats
    gateway = client.app[gateway_key]
    assert {pid: len(acc.tokens.store) for pid, acc in gateway.accounts.items()} == {
        "alpha": 1,
        "beta": 1,
    }
    # The partner label takes the configured ids, and only those.
    values = {
        s.labels["partner"]
        for metric in registry.collect()
        for s in metric.samples
        if "partner" in s.labels
    }
    assert values == {"alpha", "beta"}


async def test_a_partners_api_key_issues_only_its_partners_sessions(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    client = await make_broker(two_partners(a, b))
    token = await session(client, KEY_B, "cus_bob", "inv_bob_1")
    assert jwt.decode(token, options={"verify_signature": False})["partner"] == "beta"
    # A key of neither partner gets the one uniform 401.
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_bob", "invoice_id": "inv_bob_1"},
        headers=auth("no-such-partner-key-0123456789"),
    )
    assert response.status == 401


async def test_each_partner_has_its_own_rate_budget(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    """alpha's budget is one call a second: its cold keys queue (and past the wait get
    503); beta, at its own budget, is not held up by them."""
    a, b = await two_sandboxes(make_sandbox)
    settings = two_partners(a, b)
    alpha = replace(settings.partners[0], rate_limit_per_second=1.0)
    settings = replace(
        settings,
        declared_partners=(alpha, settings.partners[1]),
        upstream=replace(settings.upstream, rate_limit_max_wait=1.5),
    )
    client = await make_broker(settings)
    alpha_sessions = [await session(client, KEY_A, f"cus_a{i}", f"inv_a{i}") for i in range(6)]
    beta_sessions = [await session(client, KEY_B, f"cus_b{i}", f"inv_b{i}") for i in range(6)]

    async def timed(token: str) -> tuple[int, float]:
        started = time.monotonic()
        response = await client.get("/checkout/invoice", headers=auth(token))
        return response.status, time.monotonic() - started

    alpha_calls = [asyncio.ensure_future(timed(t)) for t in alpha_sessions]
    await asyncio.sleep(0.05)  # alpha's queue is there first
    beta = await asyncio.gather(*(timed(t) for t in beta_sessions))
    alpha_results = await asyncio.gather(*alpha_calls)
    assert all(status == 200 for status, _ in beta), beta
    assert max(seconds for _, seconds in beta) < 1.0, beta
    # alpha: the partner token and one mint a second; the rest wait or are refused.
    assert sorted(status for status, _ in alpha_results).count(503) >= 2, alpha_results
    assert (await b.stats())["tokens_issued"] == 6


async def test_a_session_names_a_partner_the_broker_does_not_serve_gets_401(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, logs: object
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    client = await make_broker(two_partners(a, b))
    token = await session(client, KEY_B, "cus_bob", "inv_bob_1")
    gateway = client.app[gateway_key]
    # The same broker without beta (what a reload that removes it leaves).
    one = replace(gateway.settings, declared_partners=gateway.settings.partners[:1])
    await gateway.reload(one)
    response = await client.get("/checkout/invoice", headers=auth(token))
    assert response.status == 401
    body = await response.json()
    assert "beta" not in json.dumps(body)


async def test_with_redis_each_partners_keys_are_named_after_it(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, redis_server: RedisServer
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    namespace = f"p{uuid.uuid4().hex[:10]}"
    cache = CacheSettings(
        backend="redis",
        redis_url=redis_server.url,
        encryption_keys=(os.urandom(32),),
        namespace=namespace,
        redis_timeout=1.0,
    )
    client = await make_broker(replace(two_partners(a, b), cache=cache))
    for key in (KEY_A, KEY_B):
        token = await session(client, key, "cus_alice", "inv_alice_1")
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    redis = Redis.from_url(redis_server.url)
    try:
        names = {name.decode() async for name in redis.scan_iter(match=f"{namespace}:*")}
    finally:
        await redis.aclose()
    checkout = {name for name in names if ":checkout:" in name}
    assert checkout == {
        f"{namespace}:partner=alpha:checkout:cus_alice:inv_alice_1",
        f"{namespace}:partner=beta:checkout:cus_alice:inv_alice_1",
    }
    assert all(
        name.startswith((f"{namespace}:partner=alpha:", f"{namespace}:partner=beta:"))
        for name in names
    ), names

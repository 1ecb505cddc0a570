"""Reloading the configuration while traffic flows: nothing in flight fails, a bad
configuration changes nothing, a rotated credential or signing key logs no one out,
and a partner taken out stops being served."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from broker.config.model import Settings
from broker.gateway import Gateway, ReloadRefused
from broker.web.keys import gateway_key
from tests.conftest import BrokerClient, MakeBroker, MakeSandbox, new_session
from tests.helpers import API_KEY, Sandbox, auth, make_settings
from tests.partners.test_partners import KEY_A, KEY_B, session, two_partners, two_sandboxes

NEW_KEY = "a-second-api-key-0123456789"


@contextlib.asynccontextmanager
async def traffic(
    client: BrokerClient, tokens: Callable[[], list[str]], *, fresh_keys: bool = False
) -> AsyncIterator[Counter[int]]:
    """Eight callers forwarding in a loop until the block ends; the statuses they got.
    *fresh_keys*: each call uses a new session (a new customer: a mint each time)."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    serial = itertools.count()

    async def caller() -> None:
        while not stop.is_set():
            if fresh_keys:
                n = next(serial)
                token = await new_session(client, f"cus_r{n}", f"inv_r{n}")
            else:
                token = tokens()[next(serial) % len(tokens())]
            response = await client.get("/checkout/invoice", headers=auth(token))
            statuses[response.status] += 1
            await response.read()

    callers = [asyncio.ensure_future(caller()) for _ in range(8)]
    try:
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*callers)


@pytest.mark.forwarding
async def test_reloads_under_continuous_load_fail_no_request(
    sandbox: Sandbox, make_broker: MakeBroker
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    gateway: Gateway = client.app[gateway_key]
    settings = gateway.settings  # as running (the transport under test)
    sessions = [await new_session(client, f"cus_l{i}", f"inv_l{i}") for i in range(20)]
    rotated_key = ec.generate_private_key(ec.SECP256R1())
    variants: list[Settings] = [
        # A second API key; the CORS origins; the session signing key rotated.
        replace(settings, sessions=replace(settings.sessions, api_keys=(API_KEY, NEW_KEY))),
        replace(settings, cors=replace(settings.cors, allowed_origins=("https://shop.test",))),
        replace(settings, sessions=replace(settings.sessions, signing_key=rotated_key)),
        replace(settings, tokens=replace(settings.tokens, refresh_margin=30.0)),  # new account
        settings,
    ]
    outcomes = []
    async with traffic(client, lambda: sessions) as statuses:
        for variant in [*variants, *variants, settings]:
            await asyncio.sleep(0.15)
            outcomes.append(await gateway.reload(variant))
        await asyncio.sleep(0.15)
    assert set(statuses) == {200}, statuses
    # Traffic flowed across the reloads (a loaded machine serves fewer, none fail).
    assert sum(statuses.values()) >= 3 * len(outcomes), statuses
    # Each reload against the one before it.
    assert outcomes[0].partners == {"default": "updated"}  # an API key added
    assert outcomes[1].partners == {"default": "updated"}  # and taken out again
    assert outcomes[2].signing_key_rotated
    assert outcomes[3].partners == {"default": "replaced"}  # what its tokens are made with
    assert outcomes[-1].partners == {"default": "kept"}  # the same configuration again
    assert not outcomes[-1].signing_key_rotated
    # Sessions signed before the rotation still work after it.
    for token in sessions:
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200


async def test_a_configuration_that_needs_a_restart_is_refused_and_nothing_changes(
    sandbox: Sandbox, make_broker: MakeBroker
) -> None:
    settings = make_settings(sandbox.url)
    client = await make_broker(settings)
    gateway: Gateway = client.app[gateway_key]
    token = await new_session(client)
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    before = gateway.accounts["default"]
    changed = replace(
        settings,
        server=replace(settings.server, port=9999),
        sessions=replace(settings.sessions, api_keys=(NEW_KEY,)),
    )
    with pytest.raises(ReloadRefused) as refused:
        await gateway.reload(changed)
    assert refused.value.problems == [
        "server.port: changed, which needs a restart (a reload cannot)"
    ]
    # The running configuration stands: the old key works, the new one does not.
    assert gateway.accounts["default"] is before
    assert len(before.tokens.store) == 1
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(NEW_KEY),
    )
    assert response.status == 401
    await new_session(client)


async def test_an_unchanged_partner_keeps_its_tokens_and_an_updated_one_its_cache(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    settings = two_partners(a, b)
    client = await make_broker(settings)
    gateway: Gateway = client.app[gateway_key]
    for key in (KEY_A, KEY_B):
        token = await session(client, key, "cus_alice", "inv_alice_1")
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    beta = settings.partners[1]
    new_keys = replace(beta, api_keys=(KEY_B, NEW_KEY))  # beta gains a key: "updated"
    outcome = await gateway.reload(
        replace(settings, declared_partners=(settings.partners[0], new_keys))
    )
    assert outcome.partners == {"alpha": "kept", "beta": "updated"}
    assert {pid: len(a.tokens.store) for pid, a in gateway.accounts.items()} == {
        "alpha": 1,
        "beta": 1,
    }
    token = await session(client, NEW_KEY, "cus_alice", "inv_alice_1")
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    assert (await b.stats())["tokens_issued"] == 1  # the cached token served the new session


async def test_a_partner_removed_by_reload_gets_401_and_its_tokens_are_dropped(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    a, b = await two_sandboxes(make_sandbox)
    settings = two_partners(a, b)
    registry = CollectorRegistry()
    client = await make_broker(settings, registry)
    gateway: Gateway = client.app[gateway_key]
    alpha = await session(client, KEY_A, "cus_alice", "inv_alice_1")
    beta = await session(client, KEY_B, "cus_alice", "inv_alice_1")
    for token in (alpha, beta):
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    retiring = gateway.accounts["beta"]
    outcome = await gateway.reload(replace(settings, declared_partners=settings.partners[:1]))
    assert outcome.partners == {"alpha": "kept", "beta": "removed"}
    assert len(retiring.tokens.store) == 0
    assert (await client.get("/checkout/invoice", headers=auth(beta))).status == 401
    assert (await client.get("/checkout/invoice", headers=auth(alpha))).status == 200
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(KEY_B),
    )
    assert response.status == 401
    gauge = registry.get_sample_value("broker_token_cache_entries", {"partner": "beta"})
    assert gauge is None  # its series is gone, not left at a stale value


@pytest.mark.forwarding
async def test_a_client_secret_rotated_at_the_upstream_under_traffic_fails_no_request(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    """The vendor's way: a second credential first, then the old one revoked. The broker
    holds both; when the upstream refuses the primary it falls back, says so, and an
    operator promotes the secondary."""
    sandbox = await make_sandbox(oauth_ttl=3600)
    settings = make_settings(sandbox.url)
    upstream = replace(
        settings.upstream, secondary_client_id="client-2", secondary_client_secret="secret-2"
    )
    registry = CollectorRegistry()
    client = await make_broker(replace(settings, upstream=upstream), registry)
    gateway: Gateway = client.app[gateway_key]
    await sandbox.put("/_sandbox/clients/client-2", {"client_secret": "secret-2"})
    async with traffic(client, list, fresh_keys=True) as statuses:
        await asyncio.sleep(0.3)
        await sandbox.delete("/_sandbox/clients/sandbox-client")  # the old one revoked
        await asyncio.sleep(1.0)
    assert set(statuses) == {200}, statuses
    account = gateway.accounts["default"]
    assert account.api.active_client_id == "client-2"
    fallbacks = registry.get_sample_value(
        "broker_partner_credential_fallbacks_total", {"partner": "default"}
    )
    assert fallbacks == 1
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert any("secondary credential" in note for note in ready["notes"]), ready
    assert gateway.promote("default", "client-2")
    assert not account.api.on_secondary
    assert "notes" not in await (await client.get("/readyz")).json()


async def test_an_account_rebuilt_by_a_reload_keeps_its_tokens_and_mints_nothing(
    sandbox: Sandbox, make_broker: MakeBroker
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    gateway: Gateway = client.app[gateway_key]
    sessions = [await new_session(client, f"cus_k{i}", f"inv_k{i}") for i in range(10)]
    for token in sessions:
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    minted = (await sandbox.stats())["tokens_issued"]
    settings = gateway.settings
    before = gateway.accounts["default"]
    # A setting the account is built with, not one its tokens depend on.
    outcome = await gateway.reload(
        replace(settings, tokens=replace(settings.tokens, refresh_margin=30.0))
    )
    assert outcome.partners == {"default": "replaced"}
    assert gateway.accounts["default"] is not before
    assert len(gateway.accounts["default"].tokens.store) == 10
    for token in sessions:
        assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    assert (await sandbox.stats())["tokens_issued"] == minted

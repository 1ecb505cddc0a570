"""Partner accounts' Redis key names: stable for ``default``, never overlapping.

The ``default`` account's keys are ``{namespace}:...`` however many partners are
declared, so a reload that adds or removes one never moves them (and with them the
shared revocations every replica reads). A declared partner's keys are
``{namespace}:partner=<id>:...``: no key name or SCAN pattern of one matches another's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from broker.accounts import redis_namespace
from broker.config.model import CacheSettings, PartnerSettings, Settings
from broker.credentials import token_key
from broker.errors import ServiceUnavailable
from broker.gateway import Gateway
from broker.web.keys import gateway_key
from tests.conftest import MakeBroker, MakeSandbox, new_session
from tests.helpers import API_KEY, CLIENT_ID, CLIENT_SECRET, Sandbox, auth, make_settings
from tests.partners.test_partners import KEY_B, partner
from tests.redis.conftest import MakeBackend
from tests.redis.processes import RedisServer
from tests.redis.test_redis_coordinator import Minter
from tests.redis.test_redis_degraded import own_redis


def _default(sandbox: Sandbox) -> PartnerSettings:
    return PartnerSettings(
        id="default", base_url=sandbox.url, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, rate_limit_per_second=1000.0, api_keys=(API_KEY,),
    )  # fmt: skip


def _with_beta(settings: Settings, sandbox: Sandbox, other: Sandbox) -> Settings:
    beta = partner("beta", other, KEY_B, "client-b")
    return replace(settings, declared_partners=(_default(sandbox), beta))


def test_the_default_accounts_keys_keep_their_names_whatever_the_partners(
    sandbox: Sandbox,
) -> None:
    single = make_settings(sandbox.url)
    namespace = single.cache.namespace
    (default,) = single.partners
    assert redis_namespace(single, default) == namespace
    declared = _with_beta(single, sandbox, sandbox)
    default, beta = declared.partners
    assert redis_namespace(declared, default) == namespace
    assert redis_namespace(declared, beta) == f"{namespace}:partner=beta"


async def test_default_and_a_declared_partner_never_touch_each_others_keys(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    namespace = cache_settings.namespace
    beta_settings = dataclasses.replace(cache_settings, namespace=f"{namespace}:partner=beta")
    default, beta = await make_backend(), await make_backend(beta_settings)
    for backend in (default, beta):
        for key in (token_key("cus_1", "inv_a"), token_key("cus_2", "inv_b")):
            await backend.coordinator.obtain(key, Minter(), current=None)
    now = time.time()

    await default.revoke_sessions("cus_1", before=now, until=now + 30)
    assert await beta.revoked_before("cus_1") is None
    await beta.revoke_sessions("cus_2", before=now, until=now + 30)
    assert await default.revoked_before("cus_2") is None

    # Each account's SCAN (the eviction of a customer's tokens) finds its own keys only.
    assert await default.coordinator.evict_customer("cus_1") == 1
    assert await beta.coordinator.evict_customer("cus_2") == 1
    names = {name.decode() async for name in redis.scan_iter(match=f"{namespace}:*")}
    assert {name for name in names if ":checkout:" in name} == {
        f"{namespace}:checkout:cus_2:inv_b",
        f"{namespace}:partner=beta:checkout:cus_1:inv_a",
    }
    assert f"{namespace}:revoked:cus_1" in names
    assert f"{namespace}:partner=beta:revoked:cus_2" in names


async def test_a_revocation_survives_a_reload_that_adds_a_partner(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, sandbox: Sandbox,
    redis_server: RedisServer,
) -> None:  # fmt: skip
    other = await make_sandbox(client_id="client-b", client_secret="client-b-secret",
                               partner_id="partner_beta")  # fmt: skip
    cache = CacheSettings(
        backend="redis",
        redis_url=redis_server.url,
        encryption_keys=(os.urandom(32),),
        namespace=f"r{uuid.uuid4().hex[:10]}",
        redis_timeout=1.0,
    )
    settings = replace(make_settings(sandbox.url), cache=cache)
    first = await make_broker(settings, CollectorRegistry())
    second = await make_broker(settings, CollectorRegistry())
    token = await new_session(first)
    for replica in (first, second):
        assert (await replica.get("/checkout/invoice", headers=auth(token))).status == 200
    await first.app[gateway_key].revoke_customer("cus_alice", time.time())
    assert (await second.get("/checkout/invoice", headers=auth(token))).status == 401

    gateway: Gateway = second.app[gateway_key]
    outcome = await gateway.reload(_with_beta(settings, sandbox, other))
    assert outcome.partners == {"default": "kept", "beta": "added"}
    response = await second.get("/checkout/invoice", headers=auth(token))
    assert response.status == 401, "the revoked session is served again"


async def test_a_revocation_while_redis_is_down_still_evicts_every_accounts_tokens(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, sandbox: Sandbox,
    cache_settings: CacheSettings, tmp_path: Path,
) -> None:  # fmt: skip
    """The operator gets a 503 (not shared with the other replicas), but here every
    account's cached tokens of the customer are gone, not only the first account's."""
    other = await make_sandbox(client_id="client-b", client_secret="client-b-secret",
                               partner_id="partner_beta")  # fmt: skip
    server, cache = own_redis(cache_settings, tmp_path)
    await asyncio.to_thread(server.start)
    try:
        settings = _with_beta(replace(make_settings(sandbox.url), cache=cache), sandbox, other)
        broker = await make_broker(settings, CollectorRegistry())
        for api_key in (API_KEY, KEY_B):
            response = await broker.post(
                "/v1/checkout-auth/init",
                json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
                headers=auth(api_key),
            )
            token = (await response.json())["token"]
            assert (await broker.get("/checkout/invoice", headers=auth(token))).status == 200
        gateway: Gateway = broker.app[gateway_key]
        key = token_key("cus_alice", "inv_alice_1")
        accounts = [gateway.account("default"), gateway.account("beta")]
        assert all(account.tokens.cached(key) is not None for account in accounts)

        await asyncio.to_thread(server.kill)
        with pytest.raises(ServiceUnavailable):
            await gateway.revoke_customer("cus_alice", time.time())
        assert [account.tokens.cached(key) for account in accounts] == [None, None]
    finally:
        await asyncio.to_thread(server.kill)

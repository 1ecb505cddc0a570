"""Short-lived checkout JWTs under continuous traffic: renewed ahead, never waited on.

The scenarios run on the token tiers over a fake partner API in virtual time
(tests/tokens/fakes.py): seconds of traffic in milliseconds. Two of them also run end to
end, through a broker in front of the sandbox in real time (``slow``).
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from broker.credentials import token_key
from tests.conftest import LogCapture, MakeBroker, MakeSandbox, new_session
from tests.helpers import auth, make_settings
from tests.tokens.fakes import in_virtual_time, token_tier

KEY = token_key("cus_alice", "inv_alice_1")


def lookups(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "broker_token_lookups_total", {"partner": "default", "tier": "checkout", "outcome": outcome}
    )
    return value or 0.0


@in_virtual_time
async def test_three_second_tokens_under_fifteen_seconds_of_lookups() -> None:
    async with token_tier(token_ttl=3.0) as tier:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        statuses: list[int] = []

        async def traffic() -> None:
            while loop.time() < deadline:
                statuses.append(await tier.forward(KEY))
                await asyncio.sleep(0.02)

        await asyncio.gather(*(traffic() for _ in range(3)))

        assert len(statuses) > 300
        assert set(statuses) == {200}
        assert tier.api.unauthorized_served == 0
        assert tier.api.expired_tokens_seen == 0
        # Only the first lookup waited on a mint (the other two loops joined it).
        assert tier.lookups("minted") == 1
        assert tier.lookups("coalesced") <= 2
        assert tier.lookups("failed") == 0
        assert tier.lookups("refreshed_ahead") >= 4
        # About one mint per usable lifetime, not one per lookup.
        assert 5 <= tier.api.tokens_issued <= 12


@pytest.mark.forwarding
@pytest.mark.slow
async def test_three_second_tokens_under_fifteen_seconds_of_traffic(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    """The scenario above end to end: a broker in front of the sandbox, in real time."""
    sandbox = await make_sandbox(token_ttl=3.0)
    registry = CollectorRegistry()
    client = await make_broker(make_settings(sandbox.url), registry)
    session = await new_session(client)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    statuses: list[int] = []

    async def traffic() -> None:
        while loop.time() < deadline:
            response = await client.get("/checkout/invoice", headers=auth(session))
            await response.read()
            statuses.append(response.status)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(traffic() for _ in range(3)))

    assert len(statuses) > 300
    assert set(statuses) == {200}
    stats = await sandbox.stats()
    assert stats["unauthorized_served"] == 0
    assert stats["expired_tokens_seen"] == 0
    # Only the first request waited on a mint (the other two loops joined it).
    assert lookups(registry, "minted") == 1
    assert lookups(registry, "coalesced") <= 2
    assert lookups(registry, "failed") == 0
    assert lookups(registry, "refreshed_ahead") >= 4
    # About one mint per usable lifetime, not one per request.
    assert 5 <= stats["tokens_issued"] <= 12


@in_virtual_time
async def test_idle_key_is_not_renewed_and_leaves_the_cache_when_expired() -> None:
    async with token_tier(token_ttl=2.0) as tier:
        assert await tier.forward(KEY) == 200
        assert tier.cache_entries() == 1
        await asyncio.sleep(2.5)
        assert tier.api.tokens_issued == 1
        # Nobody looked the key up: the scheduler dropped it when it expired.
        assert tier.cache_entries() == 0


@in_virtual_time
async def test_a_key_whose_renewals_fail_leaves_the_cache_when_its_token_expires() -> None:
    """Found by bench/soak.py: after the last failed renewal of a key no longer looked
    up, nothing looked at it again, and its dead token stayed cached until the cache
    filled (tokens cached grew past the keys in use after every upstream 429 minute)."""
    async with token_tier(token_ttl=5.0) as tier:
        assert await tier.forward(KEY) == 200
        assert await tier.forward(KEY) == 200  # in use: renewed ahead of its expiry
        tier.api.reject_credentials = True  # every renewal fails
        await asyncio.sleep(10.0)  # past its expiry, with no lookup
        assert tier.api.tokens_issued == 1
        assert tier.api.mint_calls > 1  # renewals were tried
        assert tier.cache_entries() == 0


@in_virtual_time
async def test_a_failing_renewal_is_not_retried_on_every_lookup(logs: LogCapture) -> None:
    """While renewals fail (here: the partner credentials are refused), steady traffic
    must not start one renewal per lookup: they are retried about once a second, and
    the current token keeps serving until it may no longer be forwarded."""
    async with token_tier(token_ttl=5.0) as tier:
        assert await tier.forward(KEY) == 200
        tier.api.reject_credentials = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        statuses: list[int] = []
        while loop.time() < deadline:
            statuses.append(await tier.forward(KEY))
            await asyncio.sleep(0.02)
        assert len(statuses) > 100
        assert statuses[0] == 200
        assert set(statuses) <= {200, 503}
        failures = logs.events("checkout_token_renewal_failed")
        # About one per second of the renewal window (the window is under 2 s of a 5 s token).
        assert 1 <= len(failures) <= 4, len(failures)


@pytest.mark.forwarding
@pytest.mark.slow
async def test_a_failing_renewal_is_not_retried_on_every_request(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, logs: LogCapture
) -> None:
    """The scenario above end to end, the sandbox refusing the credentials."""
    sandbox = await make_sandbox(token_ttl=5.0)
    client = await make_broker(make_settings(sandbox.url))
    session = await new_session(client)
    assert (await client.get("/checkout/invoice", headers=auth(session))).status == 200
    await sandbox.faults(reject_credentials=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    statuses: list[int] = []
    while loop.time() < deadline:
        response = await client.get("/checkout/invoice", headers=auth(session))
        await response.read()
        statuses.append(response.status)
        await asyncio.sleep(0.02)
    assert len(statuses) > 100
    assert statuses[0] == 200
    assert set(statuses) <= {200, 503}
    failures = logs.events("checkout_token_renewal_failed")
    # About one per second of the renewal window (the window is under 2 s of a 5 s token).
    assert 1 <= len(failures) <= 4, len(failures)


@in_virtual_time
async def test_a_stalled_mint_does_not_slow_other_keys() -> None:
    async with token_tier() as tier:
        tier.api.stall["cus_stall"] = 3.0
        stalled = asyncio.ensure_future(tier.forward(token_key("cus_stall", "inv_stall")))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await tier.forward(token_key("cus_fine", "inv_fine")) == 200
        assert loop.time() - started < 1.0
        assert not stalled.done()
        assert await stalled == 200
        assert loop.time() - started >= 2.9  # the stall really lasted

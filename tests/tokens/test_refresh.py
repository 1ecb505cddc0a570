"""Short-lived checkout JWTs under continuous traffic: renewed ahead, never waited on."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import LogCapture, MakeBroker, MakeSandbox, new_session
from tests.helpers import auth, make_settings


def lookups(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "broker_token_lookups_total", {"tier": "checkout", "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.forwarding
@pytest.mark.slow
async def test_three_second_tokens_under_fifteen_seconds_of_traffic(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
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


@pytest.mark.forwarding
async def test_idle_key_is_not_renewed_and_leaves_the_cache_when_expired(
    make_sandbox: MakeSandbox, make_broker: MakeBroker
) -> None:
    sandbox = await make_sandbox(token_ttl=2.0)
    registry = CollectorRegistry()
    client = await make_broker(make_settings(sandbox.url), registry)
    session = await new_session(client)
    assert (await client.get("/checkout/invoice", headers=auth(session))).status == 200
    assert registry.get_sample_value("broker_token_cache_entries") == 1
    await asyncio.sleep(2.5)
    assert (await sandbox.stats())["tokens_issued"] == 1
    # Nobody looked the key up: the scheduler dropped it when it expired.
    assert registry.get_sample_value("broker_token_cache_entries") == 0


@pytest.mark.forwarding
async def test_a_failing_renewal_is_not_retried_on_every_request(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, logs: LogCapture
) -> None:
    """While renewals fail (here: the partner credentials are refused), steady traffic
    must not start one renewal per request: they are retried about once a second, and
    the current token keeps serving until it may no longer be forwarded."""
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

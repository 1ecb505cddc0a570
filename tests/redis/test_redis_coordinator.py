"""One mint per key across replicas: adoption, waiting, takeover, refresh-ahead, forget."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.credentials import CheckoutToken, token_key
from broker.redis.coordinator import checkout_slot
from broker.redis.sealing import Sealer
from broker.redis.shared import SharedToken
from tests.redis.conftest import MakeBackend

KEY = token_key("cus_1", "inv_1")


class Minter:
    """A stand-in for the upstream mint: counts calls, takes *delay* seconds."""

    def __init__(self, delay: float = 0.0, lifetime: float = 300.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lifetime = lifetime
        self.called = asyncio.Event()  # set once the caller holds the lease and mints

    async def __call__(self) -> CheckoutToken:
        self.calls += 1
        self.called.set()
        await asyncio.sleep(self.delay)
        now = time.time()
        return CheckoutToken.create(
            f"jwt-{self.calls}-{now}", expires_at=now + self.lifetime, now=now, refresh_margin=60
        )


def test_slot_names_are_those_replicas_of_every_version_share() -> None:
    # As when a key was a (customer_id, invoice_id) pair: a rolling upgrade shares them.
    assert checkout_slot(KEY) == "checkout:cus_1:inv_1"
    assert checkout_slot(token_key("cus_10", "inv-1_a")) == "checkout:cus_10:inv-1_a"


async def test_concurrent_replicas_mint_a_key_once_and_all_get_that_token(
    make_backend: MakeBackend,
) -> None:
    replicas = [await make_backend() for _ in range(3)]
    mint = Minter(delay=0.3)
    tokens = await asyncio.gather(
        *(replica.coordinator.obtain(KEY, mint, current=None) for replica in replicas)
    )
    assert mint.calls == 1
    assert len({token.value for token in tokens}) == 1


async def test_a_dead_lease_holder_is_taken_over_within_the_lease_ttl(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    survivor = await make_backend()
    # A replica took the lease and died: nobody renews or releases it.
    lease_key = f"{cache_settings.namespace}:lease:{checkout_slot(KEY)}"
    await redis.set(lease_key, "dead-owner", px=int(cache_settings.lease_ttl * 1000))
    mint = Minter()
    started = time.monotonic()
    token = await survivor.coordinator.obtain(KEY, mint, current=None)
    waited = time.monotonic() - started
    assert mint.calls == 1
    assert token.value.startswith("jwt-1-")
    assert cache_settings.lease_ttl * 0.8 <= waited < cache_settings.lease_ttl + 1.0


async def test_a_token_another_replica_renewed_is_adopted_instead_of_minting(
    make_backend: MakeBackend,
) -> None:
    first, second = await make_backend(), await make_backend()
    held = await first.coordinator.obtain(KEY, Minter(), current=None)
    # `second` holds the same token and its renewal is due...
    same = await second.coordinator.obtain(KEY, Minter(), current=None)
    assert same.value == held.value
    renewal = Minter()
    renewed = await first.coordinator.obtain(KEY, renewal, current=held)
    assert renewal.calls == 1  # the stored token is what `first` holds: mint anew
    late = Minter()
    adopted = await second.coordinator.obtain(KEY, late, current=same)
    assert late.calls == 0
    assert adopted.value == renewed.value
    assert adopted.refreshed_ahead


async def test_a_waiter_adopts_a_token_stored_without_any_event(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis, encryption_key: bytes
) -> None:
    replica = await make_backend()
    lease_key = f"{cache_settings.namespace}:lease:{checkout_slot(KEY)}"
    token_key = f"{cache_settings.namespace}:{checkout_slot(KEY)}"
    await redis.set(lease_key, "someone", px=5000)
    mint = Minter()
    waiting = asyncio.create_task(replica.coordinator.obtain(KEY, mint, current=None))
    await asyncio.sleep(0.1)
    # "someone" finishes: its token is stored and its lease released, but the
    # event is lost; the waiter must find the token by polling, not mint.
    now = time.time()
    stored = SharedToken("jwt-from-someone", expires_at=now + 300, obtained_at=now)
    blob = Sealer((encryption_key,)).seal(token_key, stored.encode())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(token_key, blob, px=300_000)
        pipe.delete(lease_key)
        await pipe.execute()
    adopted = await asyncio.wait_for(waiting, timeout=2.0)
    assert adopted.value == "jwt-from-someone"
    assert mint.calls == 0


async def test_forget_drops_only_the_token_that_was_refused(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    replica = await make_backend()
    token_key = f"{cache_settings.namespace}:{checkout_slot(KEY)}"
    first = await replica.coordinator.obtain(KEY, Minter(), current=None)
    second = await replica.coordinator.obtain(KEY, Minter(), current=first)
    await replica.coordinator.forget(KEY, first)  # stale: a newer token is stored
    assert await redis.exists(token_key) == 1
    await replica.coordinator.forget(KEY, second)
    assert await redis.exists(token_key) == 0


async def test_stored_tokens_never_outlive_their_lifetime(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    replica = await make_backend()
    await replica.coordinator.obtain(KEY, Minter(lifetime=30.0), current=None)
    ttl_ms = await redis.pttl(f"{cache_settings.namespace}:{checkout_slot(KEY)}")
    assert 0 < ttl_ms <= 30_000


async def test_a_failed_mint_releases_the_lease_for_the_next_replica(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    replica = await make_backend()

    async def failing() -> CheckoutToken:
        raise RuntimeError("upstream said no")

    with pytest.raises(RuntimeError, match="upstream said no"):
        await replica.coordinator.obtain(KEY, failing, current=None)
    assert await redis.exists(f"{cache_settings.namespace}:lease:{checkout_slot(KEY)}") == 0

"""The partner OAuth token: fetched once for the cluster, never re-adopted once refused."""

from __future__ import annotations

import asyncio
import itertools

from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.upstream.partner_api import OAuthToken
from tests.redis.conftest import MakeBackend


class Fetcher:
    def __init__(self, expires_in: float = 3600.0) -> None:
        self.calls = 0
        self._numbers = itertools.count(1)
        self._expires_in = expires_in

    async def __call__(self) -> OAuthToken:
        self.calls += 1
        await asyncio.sleep(0.1)
        return OAuthToken(f"oauth-{next(self._numbers)}", self._expires_in)


async def test_replicas_starting_together_fetch_one_partner_token(
    make_backend: MakeBackend, redis: Redis, cache_settings: CacheSettings
) -> None:
    replicas = [await make_backend() for _ in range(3)]
    fetch = Fetcher()
    answers = await asyncio.gather(
        *(replica.partner_cache.obtain(fetch, current=None) for replica in replicas)
    )
    assert fetch.calls == 1
    assert {answer.access_token for answer in answers} == {"oauth-1"}
    assert 0 < await redis.pttl(f"{cache_settings.namespace}:partner") <= 3_600_000
    assert all(3500 < answer.expires_in <= 3600 for answer in answers)


async def test_a_refused_token_is_not_adopted_again(make_backend: MakeBackend) -> None:
    first, second = await make_backend(), await make_backend()
    fetch = Fetcher()
    await first.partner_cache.obtain(fetch, current=None)
    renewed = await second.partner_cache.obtain(fetch, current="oauth-1")
    assert renewed.access_token == "oauth-2"
    adopted = await first.partner_cache.obtain(fetch, current="oauth-1")
    assert adopted.access_token == "oauth-2"
    assert fetch.calls == 2


async def test_a_token_due_for_renewal_is_renewed_not_adopted(make_backend: MakeBackend) -> None:
    first, second = await make_backend(), await make_backend()
    short = Fetcher(expires_in=1.0)  # its margin is a fifth of that: 0.2 s
    await first.partner_cache.obtain(short, current=None)
    await asyncio.sleep(0.7)  # now 0.3 s left: less than two margins (0.4 s)
    await second.partner_cache.obtain(short, current=None)
    assert short.calls == 2

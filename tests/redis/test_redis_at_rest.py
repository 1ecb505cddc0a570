"""A dump of Redis reveals no usable token: values sealed, names free of tokens."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

from redis.asyncio import Redis

from broker.config.model import CacheSettings
from broker.credentials import CheckoutToken, token_key
from broker.upstream.partner_api import OAuthToken
from tests.redis.conftest import MakeBackend


def revealing_forms(secret: bytes) -> list[bytes]:
    """The secret, and the core of its base64 (standard, urlsafe) at every alignment."""
    forms = [secret]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            forms.append(encode(b"x" * offset + secret)[4:-4])
    return forms


def as_bytes(value: bytes | str | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


async def every_raw_byte(redis: Redis, namespace: str) -> list[bytes]:
    raw: list[bytes] = []
    async for key in redis.scan_iter(match=f"{namespace}:*"):
        raw.append(key)
        dumped = await redis.dump(key)
        assert dumped is not None
        raw.append(dumped)
        kind = await redis.type(key)
        if kind == b"string":
            raw.append(as_bytes(await redis.get(key)))
        elif kind == b"list":
            raw.extend(as_bytes(item) for item in await redis.lrange(key, 0, -1))
    return raw


async def test_no_key_or_value_in_the_namespace_reveals_a_token(
    make_backend: MakeBackend, cache_settings: CacheSettings, redis: Redis
) -> None:
    checkout_canary = "eyJhbGciOiJIUzI1NiJ9.canary." + secrets.token_urlsafe(24)
    partner_canary = "partner-canary-" + secrets.token_urlsafe(24)
    replica = await make_backend(rate=5.0)
    minting = asyncio.Event()
    release = asyncio.Event()

    async def mint() -> CheckoutToken:
        minting.set()
        await release.wait()  # keep the lease held while we look
        now = time.time()
        return CheckoutToken.create(
            checkout_canary, expires_at=now + 300, now=now, refresh_margin=60
        )

    async def fetch() -> OAuthToken:
        return OAuthToken(access_token=partner_canary, expires_in=3600)

    key = token_key("cus_canary", "inv_canary")
    pending = asyncio.create_task(replica.coordinator.obtain(key, mint, current=None))
    await asyncio.wait_for(minting.wait(), timeout=2.0)
    await replica.partner_cache.obtain(fetch, current=None)
    await replica.budget.acquire(max_wait=1.0)
    replica.budget.pause(0.5)
    await replica.revoke_sessions("cus_canary", before=time.time(), until=time.time() + 60)
    during = await every_raw_byte(redis, cache_settings.namespace)
    release.set()
    await pending
    after = await every_raw_byte(redis, cache_settings.namespace)

    names = {key async for key in redis.scan_iter(match=f"{cache_settings.namespace}:*")}
    assert f"{cache_settings.namespace}:checkout:cus_canary:inv_canary".encode() in names
    assert f"{cache_settings.namespace}:partner".encode() in names
    assert any(b":lease:" in raw for raw in during)
    for secret in (checkout_canary, partner_canary):
        for form in revealing_forms(secret.encode()):
            for raw in during + after:
                assert form not in raw

"""The cluster-wide ``MintCoordinator``: checkout JWTs shared through Redis, one mint per key.

Each replica keeps its in-process ``MemoryTokenStore`` in front; this coordinator is
asked only when that store has no usable token or a renewal is due. A token another
replica stored is adopted when it is usable now and, for a renewal, newer than the
one this replica holds, so refresh-ahead also happens once per key cluster-wide.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

from broker.credentials import CheckoutToken, TokenKey, fingerprint, key_ids
from broker.observability.logs import get_logger
from broker.redis.link import RedisUnavailable
from broker.redis.shared import SharedToken, SharedTokens
from broker.tokens.coordination import MintHere

log = get_logger("broker.redis")


def checkout_slot(key: TokenKey) -> str:
    # IDs are validated [A-Za-z0-9_-]{1,64}, so ':' cannot make two keys collide. The
    # slot names stay what they were when a key was a (customer, invoice) pair: replicas
    # of either version share one Redis.
    customer_id, invoice_id = key_ids(key)
    return f"checkout:{customer_id}:{invoice_id}"


class RedisCoordinator:
    def __init__(
        self,
        shared: SharedTokens,
        *,
        refresh_margin: float,
        wait_bound: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self._refresh_margin = refresh_margin
        self._wait_bound = wait_bound
        self._clock = clock

    async def obtain(
        self, key: TokenKey, mint_here: MintHere, *, current: CheckoutToken | None
    ) -> CheckoutToken:
        codec = _CheckoutCodec(key, current, self._refresh_margin, self._clock)
        return await self._shared.obtain(
            checkout_slot(key), mint_here, codec, wait_bound=self._wait_bound
        )

    async def forget(self, key: TokenKey, token: CheckoutToken | None) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self._shared.discard(checkout_slot(key), None if token is None else token.value)

    async def evict_customer(self, customer_id: str) -> int:
        """Delete every shared checkout JWT of *customer_id*; raises ``RedisUnavailable``."""
        slots = [slot async for slot in self._shared.slots_matching(f"checkout:{customer_id}:*")]
        for slot in slots:
            await self._shared.discard(slot)
        return len(slots)


class _CheckoutCodec:
    def __init__(
        self,
        key: TokenKey,
        current: CheckoutToken | None,
        refresh_margin: float,
        clock: Callable[[], float],
    ) -> None:
        self._key = key
        self._current = current
        self._refresh_margin = refresh_margin
        self._clock = clock

    def adopt(self, shared: SharedToken) -> CheckoutToken | None:
        current = self._current
        if current is not None and (
            shared.value == current.value or shared.expires_at < current.expires_at
        ):
            return None  # what we hold, or older: renewing is still to be done
        now = self._clock()
        token = CheckoutToken.create(
            shared.value,
            expires_at=shared.expires_at,
            # The minting replica's time keeps the margin true to the full lifetime;
            # min() guards against a peer whose clock runs ahead of ours.
            now=min(shared.obtained_at, now),
            refresh_margin=self._refresh_margin,
            jitter=random.random(),  # noqa: S311 - spreading renewals, not security
            refreshed_ahead=current is not None,
        )
        if not token.forwardable(now):
            return None
        customer_id, invoice_id = key_ids(self._key)
        log.info(
            "checkout_token_adopted",
            customer_id=customer_id,
            invoice_id=invoice_id,
            token_fp=fingerprint(shared.value),
            expires_in_s=round(shared.expires_at - now, 3),
            ahead=current is not None,
        )
        return token

    def share(self, value: CheckoutToken) -> SharedToken:
        # Called as soon as the token is minted here: now is when it was obtained.
        return SharedToken(value.value, value.expires_at, self._clock())

"""The partner OAuth token shared through Redis, so that replicas do not each fetch one.

It plugs into ``PartnerToken`` as its ``share``: the fetch runs under the same
one-producer protocol as checkout JWTs, and a replica renewing its token adopts the
one a peer fetched since, as long as that one is not itself due for renewal.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from broker.credentials import margin_for
from broker.redis.shared import SharedToken, SharedTokens
from broker.tokens.partner import REFRESH_MARGIN
from broker.upstream.partner_api import OAuthToken

PARTNER_SLOT = "partner"


class RedisPartnerShare:
    def __init__(
        self, shared: SharedTokens, *, wait_bound: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._shared = shared
        self._wait_bound = wait_bound
        self._clock = clock

    async def obtain(
        self, fetch: Callable[[], Awaitable[OAuthToken]], *, current: str | None
    ) -> OAuthToken:
        """A token other than *current* (which may have been refused): adopted or fetched."""
        codec = _PartnerCodec(current, self._clock)
        return await self._shared.obtain(PARTNER_SLOT, fetch, codec, wait_bound=self._wait_bound)


class _PartnerCodec:
    def __init__(self, current: str | None, clock: Callable[[], float]) -> None:
        self._current = current
        self._clock = clock

    def adopt(self, shared: SharedToken) -> OAuthToken | None:
        now = self._clock()
        remaining = shared.expires_at - now
        margin = margin_for(shared.expires_at - shared.obtained_at, REFRESH_MARGIN)
        # A token inside its renewal window (up to two margins before expiry, as
        # PartnerToken jitters it) is renewed here rather than adopted and renewed at once.
        if shared.value == self._current or remaining <= 2 * margin:
            return None
        return OAuthToken(access_token=shared.value, expires_in=remaining)

    def share(self, value: OAuthToken) -> SharedToken:
        now = self._clock()
        return SharedToken(value.access_token, now + value.expires_in, now)

"""Who mints: the seam where replicas sharing Redis agree on one mint per key.

``CheckoutTokens`` never calls the upstream directly; it asks a ``MintCoordinator``
to *obtain* a token, handing it the function that mints one here. In one process
that is all there is to it. A cluster-wide coordinator first looks for a token
another replica already minted, takes a lease so that only one replica mints, and
publishes the result for the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from broker.credentials import CheckoutToken, TokenKey

MintHere = Callable[[], Awaitable[CheckoutToken]]


class MintCoordinator(Protocol):
    async def obtain(
        self, key: TokenKey, mint_here: MintHere, *, current: CheckoutToken | None
    ) -> CheckoutToken:
        """A fresh token for *key*: adopted from elsewhere, or ``await mint_here()``.

        *current* is the token this process holds (for a renewal ahead of expiry), so
        that a token another replica renewed since counts as fresh.
        """

    def forget(self, key: TokenKey, token: CheckoutToken | None) -> Awaitable[None]:
        """Drop *key* everywhere (only *token*, if given): the upstream refused it."""


class LocalCoordinator:
    """One process: always mint here; there is nobody else to tell."""

    async def obtain(
        self, key: TokenKey, mint_here: MintHere, *, current: CheckoutToken | None
    ) -> CheckoutToken:
        return await mint_here()

    async def forget(self, key: TokenKey, token: CheckoutToken | None) -> None:
        return None

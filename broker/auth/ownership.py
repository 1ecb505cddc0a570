"""Who owns an invoice, according to the upstream: checked before a browser gets a session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cachetools import TLRUCache

from broker.errors import NotFound
from broker.tokens.budget import RateBudget
from broker.tokens.partner import PartnerToken
from broker.upstream.partner_api import PartnerApi, PartnerTokenRejected

MAX_REMEMBERED_INVOICES = 100_000
_UNKNOWN = ""  # cached "does not exist": answered like "not yours"


class Ownership:
    def __init__(
        self,
        api: PartnerApi,
        partner: PartnerToken,
        budget: RateBudget,
        *,
        ttl: float,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._partner = partner
        self._budget = budget
        self._max_wait = max_wait
        self._owners: TLRUCache[str, str] = TLRUCache(
            maxsize=MAX_REMEMBERED_INVOICES, ttu=lambda _k, _v, now: now + ttl, timer=clock
        )
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._ttl = ttl

    async def require_owner(self, invoice_id: str, customer_id: str) -> None:
        """Raise the uniform NotFound unless *customer_id* owns *invoice_id*."""
        if await self.owner_of(invoice_id) != customer_id:
            raise NotFound("invoice not owned by the caller, or not existing")

    async def owner_of(self, invoice_id: str) -> str:
        owner = self._owners.get(invoice_id)
        if owner is not None:
            return owner
        task = self._inflight.get(invoice_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(invoice_id))
            self._inflight[invoice_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(invoice_id, None))
        owner = await asyncio.shield(task)
        if self._ttl > 0:
            self._owners[invoice_id] = owner
        return owner

    async def _lookup(self, invoice_id: str) -> str:
        for attempt in (1, 2):
            bearer = await self._partner.get()  # before the slot: see CheckoutTokens
            await self._budget.acquire(self._max_wait)
            try:
                invoice = await self._api.get_json(bearer, f"/invoices/{invoice_id}", "ownership")
            except PartnerTokenRejected:
                self._partner.invalidate(bearer)
                if attempt == 2:
                    raise
                continue
            owner = invoice.get("customer_id") if invoice is not None else None
            return owner if isinstance(owner, str) else _UNKNOWN
        raise AssertionError("unreachable")  # pragma: no cover

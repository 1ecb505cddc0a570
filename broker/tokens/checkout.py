"""Tier 2: checkout JWTs per (customer, invoice): cached, minted once, renewed ahead.

Only the first request for a key waits on a mint. A key still in use after its mint is
renewed in the background before its forwarding deadline, by a single scheduler task
over a heap of refresh times (no timer per key, so a million keys stay cheap).
Concurrent requests for one key share one mint task, shielded so that a caller who
disconnects does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Final

from broker.credentials import (
    FRESH,
    FRESH_AHEAD,
    IN_USE,
    CheckoutToken,
    TokenKey,
    effective_expiry,
    fingerprint,
    key_ids,
)
from broker.errors import BadGateway, BrokerError, RateBudgetExhausted, TokenMismatch
from broker.observability.logs import get_logger
from broker.observability.metrics import TIER_CHECKOUT, Metrics
from broker.observability.tracing import Tracing, maybe_span
from broker.tokens.budget import RateBudget
from broker.tokens.coordination import LocalCoordinator, MintCoordinator
from broker.tokens.partner import PartnerToken, joined
from broker.tokens.schedule import RefreshSchedule
from broker.tokens.store import TokenStore
from broker.upstream.partner_api import (
    MintedToken,
    PartnerApi,
    PartnerTokenRejected,
    TransientUpstreamError,
    UpstreamRateLimited,
)

log = get_logger("broker.tokens.checkout")

# Final: compiled code uses these as constants, not module attributes read per use.
HIT: Final = "hit"
REFRESHED_AHEAD: Final = "refreshed_ahead"
MINTED: Final = "minted"
COALESCED: Final = "coalesced"
FAILED: Final = "failed"
# A failed background renewal is retried this much later while the token lasts.
RENEWAL_RETRY_DELAY = 1.0
# Skew between our clock and the upstream's that is logged (once per change).
SKEW_WARNING = 5.0
# How long a token is used when it looks expired and the upstream's clock is unknown.
SKEW_FLOOR = 10.0
# A mint that failed transiently is sent again after about this long (jittered).
RETRY_PAUSE = 0.1


class Lookup:
    """A token that may be forwarded now, and how it was found (the lookup metric's
    outcome). A plain class: mypyc compiles its ``__init__``, not a NamedTuple's."""

    __slots__ = ("outcome", "token")

    def __init__(self, token: CheckoutToken, outcome: str) -> None:
        self.token = token
        self.outcome = outcome


class CheckoutTokens:
    def __init__(
        self,
        *,
        store: TokenStore,
        api: PartnerApi,
        partner: PartnerToken,
        budget: RateBudget,
        metrics: Metrics,
        refresh_margin: float,
        max_wait: float,
        coordinator: MintCoordinator | None = None,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._tracing = tracing
        self._coordinator = coordinator or LocalCoordinator()
        self._api = api
        self._partner = partner
        self._budget = budget
        self._metrics = metrics
        self._refresh_margin = refresh_margin
        self._max_wait = max_wait
        self._clock = clock
        self._inflight: dict[TokenKey, asyncio.Task[CheckoutToken]] = {}
        self._warned_skew = 0.0
        self._schedule: RefreshSchedule[TokenKey] = RefreshSchedule()
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._outcomes = {
            outcome: metrics.token_lookups.labels(
                partner=metrics.partner, tier=TIER_CHECKOUT, outcome=outcome
            )
            for outcome in (HIT, REFRESHED_AHEAD, MINTED, COALESCED, FAILED)
        }
        self._remaining = metrics.token_remaining.labels(
            partner=metrics.partner, tier=TIER_CHECKOUT
        )
        self._mint_duration = metrics.mint_duration.labels(
            partner=metrics.partner, tier=TIER_CHECKOUT
        )
        metrics.track_cache_size(lambda: len(store))

    @property
    def store(self) -> TokenStore:
        return self._store

    def start(self) -> None:
        self._scheduler = asyncio.get_running_loop().create_task(self._run_scheduler())

    async def close(self) -> None:
        tasks = [*self._inflight.values()]
        if self._scheduler is not None:
            tasks.append(self._scheduler)  # type: ignore[arg-type]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cached(self, key: TokenKey) -> Lookup | None:
        """The cached token if it may be forwarded now; no await, so the hot path stays
        a plain call (``get`` for the rest)."""
        now = self._clock()
        token = self._store.get(key)
        if token is None or now >= token.forward_until:
            return None
        outcome = REFRESHED_AHEAD if token.state == FRESH_AHEAD else HIT
        token.state = IN_USE
        if now >= token.refresh_at and key not in self._inflight:
            self._start_mint(key, ahead=True)  # the scheduler is late; catch up
        self._count(outcome, token, now)
        return Lookup(token, outcome)

    async def get(self, key: TokenKey) -> Lookup:
        """A token that may be forwarded now; waits on a mint only when none is cached."""
        return self.cached(key) or await self.wait_for_mint(key)

    async def replace_rejected(self, key: TokenKey, rejected: CheckoutToken) -> Lookup:
        """The upstream refused *rejected*: evict it (if still cached) and get another."""
        if self._store.discard(key, rejected):
            await self._coordinator.forget(key, rejected)
        current = self._store.get(key)
        if current is not None and current is not rejected:
            return await self.get(key)  # another request already replaced it
        return await self.wait_for_mint(key)

    def adopt(self, other: CheckoutTokens) -> int:
        """Take over *other*'s cached tokens (valid for the same partner credentials), and
        their renewals: a reload that rebuilt the account keeps what it had minted."""
        adopted = 0
        for key, token in list(other.store.items()):
            if self._store.get(key) is None:
                self._store.put(key, token)
                self._push(token.refresh_at, key)
                adopted += 1
        return adopted

    def evict_all(self) -> int:
        """Drop every cached token (the partner account is going away)."""
        keys = [key for key, _ in self._store.items()]
        for key in keys:
            self._store.discard(key)
        return len(keys)

    def evict_customer(self, customer_id: str) -> int:
        keys = self._store.keys_of_customer(customer_id)
        for key in keys:
            self._store.discard(key)
        return len(keys)

    async def wait_for_mint(self, key: TokenKey) -> Lookup:
        """Join the mint in flight for *key*, or start one: for when ``cached`` had none."""
        task = self._inflight.get(key)
        if task is None:
            outcome, task = MINTED, self._start_mint(key, ahead=False)
        else:
            outcome = COALESCED
        try:
            token = await joined(task)
        except BrokerError:
            self._outcomes[FAILED].inc()
            raise
        now = self._clock()
        if token.state == FRESH_AHEAD:
            token.state = FRESH  # served to the requests that waited: not "in use" yet
        self._count(outcome, token, now)
        return Lookup(token, outcome)

    def _count(self, outcome: str, token: CheckoutToken, now: float) -> None:
        self._outcomes[outcome].inc()
        self._remaining.observe(token.expires_at - now)

    def _start_mint(self, key: TokenKey, *, ahead: bool) -> asyncio.Task[CheckoutToken]:
        task = asyncio.get_running_loop().create_task(self._mint(key, ahead=ahead))
        self._inflight[key] = task  # referenced until done: no GC footgun
        task.add_done_callback(lambda done: self._mint_done(key, done, ahead=ahead))
        return task

    def _mint_done(self, key: TokenKey, task: asyncio.Task[CheckoutToken], *, ahead: bool) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and ahead:
            current = self._store.get(key)
            retry_at = self._clock() + RENEWAL_RETRY_DELAY
            if current is not None:
                # Lookups in the window must not retry on every request: one retry
                # a second, by the scheduler, while the current token lasts.
                current.refresh_at = retry_at
                # Past its last chance, looked at once more when it expires, so that it
                # leaves the cache then (nothing else would look at an unused key).
                self._push(min(retry_at, current.forward_until), key)
            log.warning("checkout_token_renewal_failed", key=key, error=type(exc).__name__)

    async def _mint(self, key: TokenKey, *, ahead: bool) -> CheckoutToken:
        current = self._store.get(key) if ahead else None

        async def mint_here() -> CheckoutToken:
            return await self._mint_upstream(key, ahead=ahead, current=current)

        token = await self._coordinator.obtain(key, mint_here, current=current)
        self._store.put(key, token)
        self._push(token.refresh_at, key)
        return token

    async def _mint_upstream(
        self, key: TokenKey, *, ahead: bool, current: CheckoutToken | None
    ) -> CheckoutToken:
        with maybe_span(self._tracing, "broker.token.mint") as span:
            customer_id, invoice_id = key_ids(key)
            span.set("broker.customer_id", customer_id)
            span.set("broker.invoice_id", invoice_id)
            span.set("broker.token.ahead", ahead)
            token = await self._mint_checked(key, ahead=ahead, current=current)
            span.set("broker.token.lifetime_s", round(token.expires_at - self._clock(), 3))
            return token

    async def _mint_checked(
        self, key: TokenKey, *, ahead: bool, current: CheckoutToken | None
    ) -> CheckoutToken:
        started = self._clock()
        max_wait = self._max_wait
        if current is not None:
            # A renewal never waits past the moment the current token stops being usable.
            max_wait = min(max_wait, max(0.0, current.forward_until - started))
        minted = await self._call_upstream(key, max_wait)
        expires_at, claims = effective_expiry(minted.token, minted.expires_at)
        customer_id, invoice_id = key_ids(key)
        if claims is not None:
            for claim, expected in (("customer_id", customer_id), ("invoice_id", invoice_id)):
                if claim in claims and claims[claim] != expected:
                    log.error("checkout_token_mismatch", key=key, claim=claim)
                    raise TokenMismatch(f"minted token carries another {claim}")
        now = self._clock()
        expires_at = self._on_our_clock(minted, expires_at, now)
        token = self.token_from(minted.token, expires_at=expires_at, now=now, ahead=ahead)
        self._mint_duration.observe(now - started)
        log.info(
            "checkout_token_minted",
            customer_id=customer_id,
            invoice_id=invoice_id,
            token_fp=fingerprint(minted.token),
            expires_in_s=round(expires_at - now, 3),
            ahead=ahead,
        )
        return token

    def _on_our_clock(self, minted: MintedToken, expires_at: float, now: float) -> float:
        """*expires_at* (the upstream's clock) moved onto ours by the measured skew, so
        that a broker clock running ahead does not see every fresh token as expired."""
        upstream_now, received_at = minted.upstream_now, minted.received_at
        if upstream_now is None or received_at is None:
            if expires_at > now:
                return expires_at
            # No measure of the upstream's clock and the token looks expired: trust
            # the upstream for a short floor (a real expiry ends in one 401, one mint).
            log.warning("checkout_token_expiry_unverifiable", floor_s=SKEW_FLOOR)
            return now + SKEW_FLOOR
        if expires_at <= upstream_now:
            raise BadGateway("minted token is already expired by the upstream's clock")
        skew = upstream_now - received_at
        self._metrics.upstream_clock_skew.labels(partner=self._metrics.partner).set(skew)
        if abs(skew) > SKEW_WARNING and abs(skew - self._warned_skew) > SKEW_WARNING:
            self._warned_skew = skew  # once per change, not once per mint
            log.warning("upstream_clock_skew", skew_s=round(skew, 1), hint="check NTP")
        return expires_at - skew

    def token_from(
        self, value: str, *, expires_at: float, now: float, ahead: bool = False
    ) -> CheckoutToken:
        """A cache entry for *value*, with this broker's margin and a little jitter."""
        return CheckoutToken.create(
            value,
            expires_at=expires_at,
            now=now,
            refresh_margin=self._refresh_margin,
            jitter=random.random(),  # noqa: S311 - spreading load, not security
            refreshed_ahead=ahead,
        )

    async def _call_upstream(self, key: TokenKey, max_wait: float) -> MintedToken:
        """One mint, retried once: after a refused partner token (with a new one), a
        429 the budget can wait out, or a transient failure (5xx, reset, truncated
        answer; after a jittered pause). Every wait stays within *max_wait*."""
        deadline = self._clock() + max_wait
        for attempt in (1, 2):
            # The bearer first, then the slot: a slot reserved before waiting on an
            # OAuth fetch would be spent later than reserved, next to the slots
            # reserved after it, and more than `rate` calls would land in one window.
            bearer = await self._partner.get()
            await self._acquire_budget(max(0.0, deadline - self._clock()))
            try:
                return await self._api.mint_checkout_token(bearer, key)
            except PartnerTokenRejected:
                self._partner.invalidate(bearer)  # revoked or rotated: fetch anew, once
                if attempt == 2:
                    raise
            except UpstreamRateLimited as exc:
                retry_after = exc.retry_after or 1.0
                self._budget.pause(retry_after)
                log.warning("upstream_rate_limited", kind="mint", retry_after_s=retry_after)
                if attempt == 2 or retry_after > deadline - self._clock():
                    self._metrics.rate_budget_exhausted.labels(partner=self._metrics.partner).inc()
                    raise RateBudgetExhausted("upstream 429", retry_after=retry_after) from exc
            except TransientUpstreamError as exc:
                pause = RETRY_PAUSE * (0.5 + random.random())  # noqa: S311 - spreading load
                if attempt == 2 or pause > deadline - self._clock():
                    raise
                log.warning("checkout_token_mint_retried", key=key, detail=exc.detail)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acquire_budget(self, max_wait: float) -> None:
        try:
            waited = await self._budget.acquire(max_wait)
        except RateBudgetExhausted:
            self._metrics.rate_budget_exhausted.labels(partner=self._metrics.partner).inc()
            log.warning("rate_budget_exhausted", kind="mint")
            raise
        if waited > 0:
            log.info("rate_budget_waited", kind="mint", waited_s=round(waited, 3))

    def _push(self, when: float, key: TokenKey) -> None:
        if self._schedule.add(when, key):
            self._wakeup.set()

    async def _run_scheduler(self) -> None:
        while True:
            due = self._schedule.next_due()
            if due is None:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            delay = due - self._clock()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                continue
            now = self._clock()
            for key in self._schedule.pop_due(now):
                self._look_at(key, now)

    def _look_at(self, key: TokenKey, now: float) -> None:
        """A key's scheduled time came: renew it if in use, else let it expire and go."""
        token = self._store.get(key)  # drops an expired token
        if token is None or token.refresh_at > now:
            return  # gone, or rescheduled: a later entry exists
        if token.in_use:
            if key not in self._inflight:  # else the mint in flight schedules the next
                self._start_mint(key, ahead=True)
        elif token.forward_until > now:
            # Idle: not renewed. Looked at again when it expires, so that it leaves the
            # cache then rather than when the cache is full (a lookup before that still
            # renews it: see ``cached``).
            self._push(token.forward_until, key)
        else:
            self._store.discard(key, token)

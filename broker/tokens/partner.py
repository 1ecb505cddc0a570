"""Tier 1: the partner OAuth token, cached, renewed ahead of expiry, one fetch at a time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from broker.credentials import margin_for
from broker.errors import BrokerError, CredentialsRejected, ServiceUnavailable
from broker.observability.logs import get_logger
from broker.observability.metrics import TIER_PARTNER, Metrics
from broker.tokens.budget import RateBudget
from broker.upstream.partner_api import OAuthToken, PartnerApi

log = get_logger("broker.tokens.partner")

# Backoff after failed fetches: long enough not to hammer a vendor that refuses our
# credentials, short enough that readiness comes back soon after they are fixed.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# The OAuth token lives an hour; renew it a minute early at most.
REFRESH_MARGIN = 60.0
# What a request waiting on a fetch or mint that its account's close cancelled is told:
# by then a reload has put the account's successor in place, which serves the retry.
CLOSED_RETRY_AFTER = 1.0

T = TypeVar("T")


async def joined(task: asyncio.Task[T]) -> T:
    """*task*'s result, shielded: a waiter that is cancelled (its client went away) does
    not cancel it for the others. When *task* itself was cancelled, by the close of an
    account a reload retired, ServiceUnavailable: the waiter answers 503 with
    Retry-After, where a CancelledError would have dropped its connection."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        waiter = asyncio.current_task()
        if task.cancelled() and (waiter is None or not waiter.cancelling()):
            raise ServiceUnavailable(
                "partner account closed", retry_after=CLOSED_RETRY_AFTER
            ) from None
        raise


class PartnerTokenShare(Protocol):
    """Where replicas share the partner token (Redis); there is none in one process."""

    async def obtain(
        self, fetch: Callable[[], Awaitable[OAuthToken]], *, current: str | None
    ) -> OAuthToken:
        """A token other than *current* (held or refused): a peer's, or ``await fetch()``."""


class PartnerToken:
    """Holds the partner's bearer token and knows whether it can currently get one."""

    def __init__(
        self,
        api: PartnerApi,
        budget: RateBudget,
        metrics: Metrics,
        *,
        max_wait: float,
        share: PartnerTokenShare | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._share = share
        self._budget = budget
        self._metrics = metrics
        self._max_wait = max_wait
        self._clock = clock
        self._token: str | None = None
        self._refused: str | None = None  # never adopt a peer's copy of it again
        self._use_until = 0.0
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._inflight: asyncio.Task[str] | None = None
        self._failures = 0
        self._retry_not_before = 0.0
        self.last_error: BrokerError | None = None

    @property
    def credentials_rejected(self) -> bool:
        return isinstance(self.last_error, CredentialsRejected)

    def has_valid_token(self) -> bool:
        return self._token is not None and self._clock() < self._use_until

    async def get(self) -> str:
        now = self._clock()
        if self._token is not None and now < self._use_until:
            if now >= self._refresh_at and self._inflight is None:
                self._start_fetch()  # renew in the background; this caller goes on
            self._metrics.token_lookups.labels(
                partner=self._metrics.partner, tier=TIER_PARTNER, outcome="hit"
            ).inc()
            self._metrics.token_remaining.labels(
                partner=self._metrics.partner, tier=TIER_PARTNER
            ).observe(self._expires_at - now)
            return self._token
        if self._inflight is None:
            if now < self._retry_not_before and self.last_error is not None:
                self._metrics.token_lookups.labels(
                    partner=self._metrics.partner, tier=TIER_PARTNER, outcome="failed"
                ).inc()
                error = CredentialsRejected if self.credentials_rejected else ServiceUnavailable
                raise error(
                    "partner token fetch backing off",
                    retry_after=max(1.0, self._retry_not_before - now),
                )
            outcome = "minted"
            task = self._start_fetch()
        else:
            outcome, task = "coalesced", self._inflight
        try:
            token = await joined(task)
        except BrokerError:
            self._metrics.token_lookups.labels(
                partner=self._metrics.partner, tier=TIER_PARTNER, outcome="failed"
            ).inc()
            raise
        self._metrics.token_lookups.labels(
            partner=self._metrics.partner, tier=TIER_PARTNER, outcome=outcome
        ).inc()
        return token

    def invalidate(self, token: str) -> None:
        """The upstream refused *token*: stop using it (unless already replaced)."""
        if token == self._token:
            self._token = None
            self._refused = token
            self._use_until = 0.0

    async def probe(self) -> None:
        """Try to obtain a token now unless backing off; used by readiness checks."""
        if self.has_valid_token() or self._clock() < self._retry_not_before:
            return
        try:
            await self.get()
        except BrokerError:
            return  # the reason is in last_error

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)

    def _start_fetch(self) -> asyncio.Task[str]:
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task  # referenced until done: no GC footgun
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[str]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # background renewals log their own failure; mark retrieved

    async def _fetch(self) -> str:
        started = self._clock()
        try:
            if self._share is None:
                answer = await self._fetch_upstream()
            else:
                current = self._token or self._refused
                answer = await self._share.obtain(self._fetch_upstream, current=current)
        except BrokerError as exc:
            self._record_failure(exc)
            raise
        self._record_success(answer, started)
        return answer.access_token

    async def _fetch_upstream(self) -> OAuthToken:
        await self._budget.acquire(self._max_wait)
        api = self._api
        try:
            return await api.fetch_oauth_token()
        except CredentialsRejected:
            rejected = api.active_client_id
            if not api.fall_back():
                raise
        # The account's other credential (rotation): a call of its own in the budget.
        await self._budget.acquire(self._max_wait)
        answer = await api.fetch_oauth_token()
        self._metrics.credential_fallbacks.labels(partner=self._metrics.partner).inc()
        log.warning(
            "partner_credential_fallback",
            partner=api.partner_id,
            rejected_client_id=rejected,
            client_id=api.active_client_id,
            hint="the upstream refused a configured credential: make the one that works the"
            " primary (`token-broker promote`, or the configuration and a reload)",
        )
        return answer

    def _record_success(self, answer: OAuthToken, started: float) -> None:
        now = self._clock()
        margin = margin_for(answer.expires_in, REFRESH_MARGIN)
        self._token = answer.access_token
        self._expires_at = now + answer.expires_in
        self._use_until = self._expires_at - margin
        self._refresh_at = self._use_until - margin * random.uniform(0.5, 1.0)  # noqa: S311
        if self.credentials_rejected:
            log.warning("partner_credentials_accepted_again")
        self._failures = 0
        self._retry_not_before = 0.0
        self.last_error = None
        self._metrics.credentials_rejected.labels(partner=self._metrics.partner).set(0)
        self._metrics.mint_duration.labels(
            partner=self._metrics.partner, tier=TIER_PARTNER
        ).observe(now - started)
        log.info("partner_token_fetched", expires_in=answer.expires_in)

    def _record_failure(self, exc: BrokerError) -> None:
        self._failures += 1
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1))
        self._retry_not_before = self._clock() + backoff
        self.last_error = exc
        if isinstance(exc, CredentialsRejected):
            self._metrics.credentials_rejected.labels(partner=self._metrics.partner).set(1)
            # Loud on purpose: nothing works until an operator fixes the credentials.
            log.error(
                "partner_credentials_rejected",
                detail=exc.detail,
                retry_in_s=round(backoff, 1),
                partner=self._api.partner_id,
                hint="check the partner's client_id / client_secret for this environment",
            )
        else:
            log.warning(
                "partner_token_fetch_failed",
                code=exc.code,
                detail=exc.detail,
                retry_in_s=round(backoff, 1),
            )

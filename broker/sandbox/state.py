"""SandboxState: everything one sandbox app remembers, stored once under an AppKey."""

from __future__ import annotations

import random
from datetime import datetime

from aiohttp import web

from broker.sandbox.catalog import Catalog
from broker.sandbox.checkout_tokens import CheckoutTokens
from broker.sandbox.demo_data import seed
from broker.sandbox.faults import Faults, Stalls
from broker.sandbox.partner_tokens import PartnerCredentials
from broker.sandbox.ratelimit import SlidingWindowLimiter
from broker.sandbox.request_log import RequestLog
from broker.sandbox.settings import SandboxSettings
from broker.sandbox.stats import Stats


class SandboxState:
    """Data and issued tokens live as long as the app; ``reset`` clears the rest."""

    def __init__(self, settings: SandboxSettings, *, now: datetime) -> None:
        self.settings = settings
        self.catalog = Catalog()
        seed(self.catalog, now)
        self.partners = PartnerCredentials(
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            ttl=settings.oauth_ttl,
        )
        self.checkout_tokens = CheckoutTokens(
            secret=settings.signing_secret,
            partner_id=settings.partner_id,
            client_ids=self.partners.known_clients,
            ttl=settings.token_ttl,
        )
        self.stalls = Stalls()
        # Fault dice; SystemRandom so no module-level generator state is shared.
        self.random = random.SystemRandom()
        self.reset()

    def reset(self) -> None:
        """Forget traffic and faults (stats, request log, rate windows); wake stalls."""
        self.stats = Stats()
        self.requests = RequestLog()
        self.faults = Faults()
        self.limiter = SlidingWindowLimiter(
            self.settings.rate_limit_per_second, window=self.settings.rate_limit_window
        )
        self.stalls.release_all()


sandbox_state_key = web.AppKey("sandbox_state", SandboxState)

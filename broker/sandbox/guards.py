"""Endpoint guards: who may call (partner bearer, checkout JWT) and the faults in the way.

Each guard wraps a handler that takes the state and the verified caller as
arguments, so handlers never parse ``Authorization`` themselves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broker.sandbox.authorization import bearer_token
from broker.sandbox.checkout_tokens import CheckoutGrant, Rejection, TokenRejected
from broker.sandbox.errors import ApiError, rate_limited, unauthorized
from broker.sandbox.state import SandboxState, sandbox_state_key

PartnerHandler = Callable[[web.Request, SandboxState, str], Awaitable[web.StreamResponse]]
CheckoutHandler = Callable[
    [web.Request, SandboxState, CheckoutGrant], Awaitable[web.StreamResponse]
]

REDIRECT_TARGET = "https://elsewhere.invalid/"

_REJECTION_MESSAGES = {
    Rejection.MALFORMED: "Invalid access token",
    Rejection.FOREIGN: "Access token was not issued for this partner",
    Rejection.EXPIRED: "Access token expired",
    Rejection.REVOKED: "Access token revoked",
}


def admit_partner_call(state: SandboxState, client_id: str) -> None:
    """Count a partner-credentialed call against the rate limit, or raise 429."""
    if state.faults.rate_limit:
        raise rate_limited(state.faults.retry_after)
    wait = state.limiter.admit(client_id, time.monotonic())
    if wait is not None:
        raise rate_limited(max(1, math.ceil(wait)))


def partner_endpoint(handler: PartnerHandler) -> Handler:
    """Require a live partner OAuth bearer token; pass its client_id on."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.app[sandbox_state_key]
        client_id = state.partners.holder(request.headers.get(hdrs.AUTHORIZATION), time.monotonic())
        if client_id is None or state.faults.reject_credentials:
            raise unauthorized("Missing or expired access token")
        admit_partner_call(state, client_id)
        return await handler(request, state, client_id)

    return guarded


def checkout_endpoint(handler: CheckoutHandler) -> Handler:
    """Require a checkout JWT of this partner; apply the checkout faults around it."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.app[sandbox_state_key]
        if state.faults.latency_ms:
            await asyncio.sleep(state.faults.latency_ms / 1000)
        if state.faults.redirect:
            return web.Response(status=302, headers={hdrs.LOCATION: REDIRECT_TARGET})
        if state.faults.claim_unauthorized():
            raise unauthorized("Access token expired")
        grant = _verified_grant(state, request.headers.get(hdrs.AUTHORIZATION))
        # After authentication, so an injected 500 never hides a 401.
        if state.random.random() < state.faults.error_rate:
            raise ApiError(500, "internal_server_error", "Simulated upstream failure")
        return await handler(request, state, grant)

    return guarded


def _verified_grant(state: SandboxState, authorization: str | None) -> CheckoutGrant:
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized("Missing access token")
    try:
        return state.checkout_tokens.verify(token, time.time())
    except TokenRejected as exc:
        if exc.reason is Rejection.EXPIRED:
            state.stats.expired_tokens_seen += 1
        raise unauthorized(_REJECTION_MESSAGES[exc.reason]) from exc

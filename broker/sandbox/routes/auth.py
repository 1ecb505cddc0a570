"""Credential endpoints: ``POST /oauth/token`` and ``POST /[v1/]checkout-auth/init``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from aiohttp import hdrs, web

from broker.sandbox.bodies import read_object
from broker.sandbox.demo_data import make_invoice
from broker.sandbox.errors import ApiError, bad_request, not_found
from broker.sandbox.guards import admit_partner_call, partner_endpoint
from broker.sandbox.identifiers import is_valid_id
from broker.sandbox.state import SandboxState, sandbox_state_key

# Credentials must never be cached by anything between the sandbox and its caller.
_NO_STORE = {hdrs.CACHE_CONTROL: "no-store"}


async def issue_oauth_token(request: web.Request) -> web.Response:
    state = request.app[sandbox_state_key]
    if state.faults.token_endpoint_down:
        raise ApiError(503, "service_unavailable", "The token endpoint is temporarily unavailable")
    client_id = state.partners.authenticate(request.headers.get(hdrs.AUTHORIZATION))
    if client_id is None or state.faults.reject_credentials:
        raise ApiError(403, "forbidden", "Invalid credentials")
    admit_partner_call(state, client_id)
    if request.content_type != "application/x-www-form-urlencoded":
        raise bad_request("Content-Type must be application/x-www-form-urlencoded")
    form = parse_qs((await request.read()).decode("utf-8", errors="replace"))
    if form.get("grant_type") != ["client_credentials"]:
        raise bad_request("grant_type must be client_credentials")
    token = state.partners.issue(client_id, time.monotonic())
    state.stats.oauth_tokens_issued += 1
    return web.json_response(
        {
            "access_token": token,
            "expires_in": state.settings.oauth_ttl,
            "token_type": "bearer",
        },
        headers=_NO_STORE,
    )


@partner_endpoint
async def init_checkout(request: web.Request, state: SandboxState, client_id: str) -> web.Response:
    if state.faults.mint_latency_ms:
        await asyncio.sleep(state.faults.mint_latency_ms / 1000)
    body = await read_object(request)
    customer_id, invoice_id = body.get("customer_id"), body.get("invoice_id")
    # The vendor's wording, as field reports quote it.
    if not is_valid_id(invoice_id):
        raise bad_request("invalid invoice id")
    if not is_valid_id(customer_id):
        raise bad_request("invalid customer id")
    if customer_id in state.faults.stall_customers:
        await state.stalls.hold(state.faults.stall_seconds)
    _require_owned_invoice(state, customer_id, invoice_id)
    token, grant = state.checkout_tokens.mint(customer_id, invoice_id, time.time(), client_id)
    state.stats.record_mint(
        customer_id, invoice_id, wall=grant.issued_at, monotonic=time.monotonic()
    )
    # expires_at is floored so it never promises more than the JWT's exp allows.
    return web.json_response(
        {"token": token, "expires_at": int(grant.expires_at)}, headers=_NO_STORE
    )


def _require_owned_invoice(state: SandboxState, customer_id: str, invoice_id: str) -> None:
    """404 unless *customer_id* owns *invoice_id*, synthesising unknown keys if allowed."""
    invoice = state.catalog.invoice(invoice_id)
    if invoice is None and state.settings.synthesize_unknown:
        invoice = make_invoice(state.catalog, customer_id, invoice_id, datetime.now(UTC))
    # One answer for "not yours" and "does not exist": no existence oracle.
    if invoice is None or invoice.customer_id != customer_id:
        raise not_found("Customer or invoice not found")

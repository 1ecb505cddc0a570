"""The control plane under ``/_sandbox/``: stats, request log, faults, revocation, data.

Unauthenticated on purpose: the sandbox is a simulator bound to loopback, and
tests, benchmarks and demos steer it from outside the process.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal

from aiohttp import web

from broker.sandbox.bodies import Fields, read_object
from broker.sandbox.demo_data import make_invoice
from broker.sandbox.errors import bad_request
from broker.sandbox.identifiers import ID_PATTERN, ID_RULE, is_valid_id
from broker.sandbox.records import invoice_json
from broker.sandbox.state import sandbox_state_key

DEFAULT_LOG_LIMIT = 100
_CURRENCY = re.compile(r"[A-Za-z]{3}")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[sandbox_state_key].stats.snapshot())


async def requests(request: web.Request) -> web.Response:
    raw_limit = request.query.get("limit", str(DEFAULT_LOG_LIMIT))
    if not raw_limit.isdigit():
        raise bad_request("limit must be a non-negative integer")
    entries = request.app[sandbox_state_key].requests.recent(int(raw_limit))
    return web.json_response([entry.to_json() for entry in entries])


async def reset(request: web.Request) -> web.Response:
    request.app[sandbox_state_key].reset()
    return web.json_response({"reset": True})


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[sandbox_state_key].faults.to_json())


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[sandbox_state_key]
    state.faults.apply(await read_object(request))
    return web.json_response(state.faults.to_json())


async def revoke(request: web.Request) -> web.Response:
    body = await read_object(request)
    customer_id, invoice_id = body.get("customer_id"), body.get("invoice_id")
    if not (is_valid_id(customer_id) and is_valid_id(invoice_id)):
        raise bad_request("customer_id and invoice_id must be valid IDs")
    now = time.time()
    request.app[sandbox_state_key].checkout_tokens.revoke(customer_id, invoice_id, now)
    return web.json_response(
        {"customer_id": customer_id, "invoice_id": invoice_id, "revoked_before": now}
    )


async def clients(request: web.Request) -> web.Response:
    return web.json_response({"client_ids": request.app[sandbox_state_key].partners.client_ids})


async def put_client(request: web.Request) -> web.Response:
    """Add an OAuth client to the partner, or rotate its secret (credential rotation)."""
    client_id = request.match_info["client_id"]
    secret = (await read_object(request)).get("client_secret")
    if not isinstance(secret, str) or not secret:
        raise bad_request("client_secret must be a non-empty string")
    request.app[sandbox_state_key].partners.set_client(client_id, secret)
    return web.json_response({"client_id": client_id})


async def delete_client(request: web.Request) -> web.Response:
    """Revoke a client: its secret and its OAuth tokens stop working at once."""
    client_id = request.match_info["client_id"]
    if not request.app[sandbox_state_key].partners.remove_client(client_id):
        raise web.HTTPNotFound(text="no such client")
    return web.json_response({"client_id": client_id, "removed": True})


async def put_invoice(request: web.Request) -> web.Response:
    """Create or overwrite an invoice (and its customer), e.g. to move ownership."""
    body = await read_object(request)
    fields = Fields(body)
    invoice_id = fields.text("id", pattern=ID_PATTERN, hint=ID_RULE)
    customer_id = fields.text("customer_id", pattern=ID_PATTERN, hint=ID_RULE)
    currency = "usd"
    if "currency" in body:
        currency = fields.text("currency", pattern=_CURRENCY, hint="must be 3 letters")
    total_cents = None
    if "total" in body:
        total_cents = _cents(body["total"])
        if total_cents is None:
            fields.errors["total"] = "must be a positive amount in major units"
    fields.check()
    invoice = make_invoice(
        request.app[sandbox_state_key].catalog,
        customer_id,
        invoice_id,
        datetime.now(UTC),
        currency=currency.lower(),
        total_cents=total_cents,
    )
    return web.json_response(invoice_json(invoice))


def _cents(total: object) -> int | None:
    if isinstance(total, bool) or not isinstance(total, int | float | str):
        return None
    try:
        cents = Decimal(str(total)) * 100
    except ArithmeticError:  # decimal.InvalidOperation for "abc"
        return None
    if not cents.is_finite() or cents <= 0 or cents != cents.to_integral_value():
        return None
    return int(cents)

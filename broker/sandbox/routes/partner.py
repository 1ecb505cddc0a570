"""Partner REST endpoints the broker uses for ownership checks (OAuth bearer, no /v1)."""

from __future__ import annotations

from aiohttp import web

from broker.sandbox.errors import not_found
from broker.sandbox.guards import partner_endpoint
from broker.sandbox.records import customer_json, invoice_json
from broker.sandbox.state import SandboxState


@partner_endpoint
async def get_invoice(request: web.Request, state: SandboxState, client_id: str) -> web.Response:
    state.stats.ownership_checks += 1
    invoice = state.catalog.invoice(request.match_info["invoice_id"])
    if invoice is None:
        raise not_found("Invoice not found")
    return web.json_response(invoice_json(invoice))


@partner_endpoint
async def get_customer(request: web.Request, state: SandboxState, client_id: str) -> web.Response:
    customer = state.catalog.customer(request.match_info["customer_id"])
    if customer is None:
        raise not_found("Customer not found")
    return web.json_response(customer_json(customer))

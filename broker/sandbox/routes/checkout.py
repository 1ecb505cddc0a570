"""Checkout endpoints about the token's invoice: theme, invoice, PDF, card form, payments.

Every handler here is reached only through ``checkout_endpoint``: the JWT has been
verified and its grant names the one customer and invoice the caller may see.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from aiohttp import web

from broker.sandbox.bodies import Fields, read_object
from broker.sandbox.checkout_tokens import CheckoutGrant
from broker.sandbox.errors import not_found, unprocessable, validation_failed
from broker.sandbox.guards import checkout_endpoint
from broker.sandbox.records import Invoice, invoice_json
from broker.sandbox.state import SandboxState

PDF_HOST = "pay.sandbox.local"
_AMOUNT = re.compile(r"\d{1,12}(\.\d{1,2})?")
_METHOD_TYPES = {"card": "card", "standard_ach": "ach", "same_day_ach": "ach"}
_PAYMENT_METHODS = (*_METHOD_TYPES, "manual")


def token_invoice(state: SandboxState, grant: CheckoutGrant) -> Invoice:
    """The grant's invoice, while its customer still owns it."""
    invoice = state.catalog.owned_invoice(grant.customer_id, grant.invoice_id)
    if invoice is None:
        raise not_found("Invoice not found")
    return invoice


@checkout_endpoint
async def theme(request: web.Request, state: SandboxState, grant: CheckoutGrant) -> web.Response:
    return web.json_response(
        {
            "partner_name": "Sandbox Partner",
            "theme": {
                "color": "#2563eb",
                "logo_url": f"https://{PDF_HOST}/static/logo.svg",
            },
        }
    )


@checkout_endpoint
async def invoice(request: web.Request, state: SandboxState, grant: CheckoutGrant) -> web.Response:
    return web.json_response(invoice_json(token_invoice(state, grant), checkout=True))


@checkout_endpoint
async def pdf_link(request: web.Request, state: SandboxState, grant: CheckoutGrant) -> web.Response:
    # Scheme-less, like the vendor's: the SDK prepends https:// itself.
    invoice_id = token_invoice(state, grant).id
    return web.json_response({"url": f"{PDF_HOST}/pdf/{invoice_id}"})


@checkout_endpoint
async def card_form_credentials(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    return web.json_response({"team_id": "team_sandbox", "app_id": "app_sandbox"})


@checkout_endpoint
async def create_payment(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    target = token_invoice(state, grant)
    fields = Fields(await read_object(request))
    amount_text = fields.text(
        "amount", pattern=_AMOUNT, hint='must be a decimal string such as "123.45"'
    )
    payment_date = fields.text("payment_date")
    kind = fields.text("payment_method", choices=_PAYMENT_METHODS)
    method_id = fields.text("payment_method_id")
    fields.check()
    errors: dict[str, str] = {}
    amount = Decimal(amount_text)
    if amount <= 0:
        errors["amount"] = "must be greater than 0"
    if not _is_iso_datetime(payment_date):
        errors["payment_date"] = "must be an ISO-8601 date"
    method = next(
        (m for m in state.catalog.payment_methods(grant.customer_id) if m.id == method_id),
        None,
    )
    if method is None:
        errors["payment_method_id"] = "is not one of this customer's payment methods"
    elif kind != "manual" and _METHOD_TYPES[kind] != method.type:
        errors["payment_method"] = f"does not match a {method.type} payment method"
    if errors:
        raise validation_failed(errors)
    # A business rule, not a malformed field: 422, as the vendor documents.
    if amount * 100 > target.total_cents:
        raise unprocessable("Amount exceeds the invoice balance")
    return web.json_response({"status": "processing", "message": "Payment is being processed"})


def _is_iso_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True

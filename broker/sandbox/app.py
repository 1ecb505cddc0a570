"""create_sandbox_app: the composition root of the sandbox upstream."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler

from broker.sandbox.middlewares import CONTROL_PREFIX, error_responses, observe
from broker.sandbox.routes import address, auth, checkout, control, partner
from broker.sandbox.routes import payment_methods as methods
from broker.sandbox.settings import SandboxSettings
from broker.sandbox.state import SandboxState, sandbox_state_key

# The docs put checkout under /checkout/v1, the shipped SDK calls /checkout:
# both are served, so either client works against the sandbox.
CHECKOUT_PREFIXES = ("/checkout", "/checkout/v1")
CHECKOUT_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/preferences/theme", checkout.theme),
    ("GET", "/invoice", checkout.invoice),
    ("GET", "/invoice/pdf-link", checkout.pdf_link),
    ("GET", "/payment-methods", methods.list_methods),
    ("GET", "/card-form/credentials", checkout.card_form_credentials),
    ("POST", "/payment-methods/card", methods.add_card),
    ("POST", "/payment-methods/bank", methods.add_bank_account),
    ("POST", "/payment-methods/{card_id}/cvv", methods.verify_cvv),
    ("POST", "/payments", checkout.create_payment),
    ("POST", "/address/autocomplete", address.autocomplete),
    ("POST", "/address/details", address.details),
)


def create_sandbox_app(settings: SandboxSettings) -> web.Application:
    """A fresh simulator of the Alternative Payments API with seeded demo data."""
    app = web.Application(middlewares=[observe, error_responses])
    app[sandbox_state_key] = SandboxState(settings, now=datetime.now(UTC))
    app.on_shutdown.append(_release_stalls)

    add = app.router.add_route
    add("POST", "/oauth/token", auth.issue_oauth_token)
    # Field reports disagree on the /v1; serve both like the vendor seems to.
    add("POST", "/v1/checkout-auth/init", auth.init_checkout)
    add("POST", "/checkout-auth/init", auth.init_checkout)
    for prefix in CHECKOUT_PREFIXES:
        for method, path, handler in CHECKOUT_ROUTES:
            add(method, prefix + path, handler)
    add("GET", "/invoices/{invoice_id}", partner.get_invoice)
    add("GET", "/customers/{customer_id}", partner.get_customer)

    control_routes = (
        ("GET", "stats", control.stats),
        ("GET", "requests", control.requests),
        ("POST", "reset", control.reset),
        ("GET", "faults", control.get_faults),
        ("POST", "faults", control.set_faults),
        ("POST", "revoke", control.revoke),
        ("POST", "invoices", control.put_invoice),
        ("GET", "clients", control.clients),
        ("PUT", "clients/{client_id}", control.put_client),
        ("DELETE", "clients/{client_id}", control.delete_client),
    )
    for method, name, handler in control_routes:
        add(method, CONTROL_PREFIX + name, handler)
    return app


async def _release_stalls(app: web.Application) -> None:
    # Runs before the server waits for open handlers, so a 30 s stall does not
    # hold up shutdown.
    app[sandbox_state_key].stalls.release_all()

"""The seeded demo customers and invoices, and the ones made up for unknown keys.

Dates are relative to start-up so that an OVERDUE invoice is overdue and an
UPCOMING one is still due whenever the sandbox runs.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta

from broker.sandbox.catalog import Catalog
from broker.sandbox.records import (
    Customer,
    Invoice,
    InvoiceStatus,
    LineItem,
    PaymentMethod,
)

_CUSTOMERS = (
    ("cus_alice", "Alice Johnson", "alice@example.com"),
    ("cus_bob", "Bob Tremblay", "bob@example.ca"),
    ("cus_carol", "Carol Nguyen", "carol@example.com"),
)


def seed(catalog: Catalog, now: datetime) -> None:
    """Fill *catalog* with the demo customers, invoices and Alice's saved card."""
    for customer_id, name, email in _CUSTOMERS:
        catalog.add_customer(
            Customer(id=customer_id, name=name, email=email, created_at=now - _days(90))
        )

    def add_invoice(
        invoice_id: str,
        customer_id: str,
        status: InvoiceStatus,
        *items: LineItem,
        currency: str = "usd",
        due_in_days: int,
        tax_cents: int = 0,
    ) -> None:
        catalog.put_invoice(
            Invoice(
                id=invoice_id,
                customer_id=customer_id,
                invoice_number=catalog.next_invoice_number(),
                status=status,
                currency=currency,
                line_items=items,
                due_date=(now + _days(due_in_days)).date(),
                created_at=now - _days(20),
                description=f"Services for {customer_id.removeprefix('cus_').title()}",
                tax_cents=tax_cents,
            )
        )

    add_invoice(
        "inv_alice_1",
        "cus_alice",
        InvoiceStatus.UPCOMING,
        LineItem("Managed IT services, monthly plan", 1, 125_000),
        LineItem("Microsoft 365 Business Premium seat", 12, 2_200),
        due_in_days=14,
    )
    add_invoice(
        "inv_alice_2",
        "cus_alice",
        InvoiceStatus.OVERDUE,
        LineItem("Firewall appliance", 1, 89_999),
        LineItem("On-site installation (hours)", 3, 12_500),
        due_in_days=-10,
    )
    # Ontario HST at 13% makes total differ from sub_total, as on real invoices.
    add_invoice(
        "inv_bob_1",
        "cus_bob",
        InvoiceStatus.UPCOMING,
        LineItem("Bookkeeping, first quarter", 1, 180_000),
        currency="cad",
        due_in_days=21,
        tax_cents=23_400,
    )
    add_invoice(
        "inv_carol_1",
        "cus_carol",
        InvoiceStatus.UPCOMING,
        LineItem("Website hosting, annual", 1, 24_000),
        LineItem("Domain renewal", 2, 1_850),
        due_in_days=30,
    )
    catalog.add_payment_method(
        "cus_alice",
        PaymentMethod(
            id="pm_alice_visa",
            type="card",
            last4="4242",
            default=True,
            brand="visa",
            exp_month=12,
            exp_year=now.year + 3,
        ),
    )


def make_invoice(
    catalog: Catalog,
    customer_id: str,
    invoice_id: str,
    now: datetime,
    *,
    currency: str = "usd",
    total_cents: int | None = None,
) -> Invoice:
    """Create (or overwrite) *invoice_id* owned by *customer_id*, adding the customer.

    Without *total_cents* the amount is derived from the ID, so a synthesised
    invoice looks the same every time it is made.
    """
    if catalog.customer(customer_id) is None:
        catalog.add_customer(
            Customer(
                id=customer_id,
                name=f"Sandbox customer {customer_id}",
                email=f"{customer_id.lower()}@customers.sandbox.invalid",
                created_at=now,
            )
        )
    if total_cents is None:
        total_cents = 1_000 + zlib.crc32(invoice_id.encode()) % 99_000
    invoice = Invoice(
        id=invoice_id,
        customer_id=customer_id,
        invoice_number=catalog.next_invoice_number(),
        status=InvoiceStatus.UPCOMING,
        currency=currency,
        line_items=(LineItem("Sandbox services", 1, total_cents),),
        due_date=(now + _days(30)).date(),
        created_at=now,
        description="Sandbox invoice",
    )
    catalog.put_invoice(invoice)
    return invoice


def _days(count: int) -> timedelta:
    return timedelta(days=count)

"""The demo partner's own record of its customers and their invoices.

A real partner backend knows which invoices belong to the signed-in user from its own
database, and asks the broker for a session only for those. The demo's "database" is
the sandbox's seeded data, built from the same seed the sandbox upstream starts with,
so that the page offers exactly what the sandbox can pay. Invoices the sandbox would
make up for unknown IDs are not in it: the demo backend refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.sandbox.catalog import Catalog
from broker.sandbox.demo_data import seed

# The seed adds each customer's invoices; these are the IDs it uses (demo_data.py).
_SEEDED_INVOICES = ("inv_alice_1", "inv_alice_2", "inv_bob_1", "inv_carol_1")


@dataclass(frozen=True, slots=True)
class DemoInvoice:
    id: str
    number: str
    status: str
    currency: str
    total: str  # major units, as the SDK shows it: "1514.00"
    description: str

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "number": self.number,
            "status": self.status,
            "currency": self.currency,
            "total": self.total,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    id: str
    name: str
    email: str
    invoices: tuple[DemoInvoice, ...]

    def owns(self, invoice_id: str) -> bool:
        return any(invoice.id == invoice_id for invoice in self.invoices)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "invoices": [invoice.to_json() for invoice in self.invoices],
        }


class Directory:
    """Customers by ID, in the seed's order (the page lists them in that order)."""

    def __init__(self, customers: tuple[DemoCustomer, ...]) -> None:
        self.customers = customers
        self._by_id = {customer.id: customer for customer in customers}

    @classmethod
    def seeded(cls) -> Directory:
        catalog = Catalog()
        seed(catalog, datetime.now(UTC))
        invoices: dict[str, list[DemoInvoice]] = {}
        for invoice_id in _SEEDED_INVOICES:
            invoice = catalog.invoice(invoice_id)
            if invoice is None:  # pragma: no cover - the seed and this list disagree
                raise RuntimeError(f"the sandbox seed has no {invoice_id}")
            invoices.setdefault(invoice.customer_id, []).append(
                DemoInvoice(
                    id=invoice.id,
                    number=invoice.invoice_number,
                    status=invoice.status.value,
                    currency=invoice.currency,
                    total=f"{invoice.total_cents // 100}.{invoice.total_cents % 100:02d}",
                    description=invoice.line_items[0].description,
                )
            )
        customers = []
        for customer_id, owned in invoices.items():
            customer = catalog.customer(customer_id)
            if customer is None:  # pragma: no cover - put_invoice refuses unknown owners
                raise RuntimeError(f"the sandbox seed has no {customer_id}")
            customers.append(
                DemoCustomer(
                    id=customer.id, name=customer.name, email=customer.email, invoices=tuple(owned)
                )
            )
        return cls(tuple(customers))

    def customer(self, customer_id: str) -> DemoCustomer | None:
        return self._by_id.get(customer_id)

    def to_json(self) -> list[dict[str, object]]:
        return [customer.to_json() for customer in self.customers]

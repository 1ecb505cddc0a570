"""Customers, invoices and payment methods as the upstream models them, and their JSON.

Money is held in integer cents so sums are exact, and rendered in major units
(decimal dollars) because that is what the SDK formats and what the API returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Literal


class InvoiceStatus(StrEnum):
    """The SDK's enum; the payment flow treats RECEIVED as already paid."""

    UPCOMING = "UPCOMING"
    OVERDUE = "OVERDUE"
    RECEIVED = "RECEIVED"
    PAID = "PAID"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class LineItem:
    description: str
    quantity: int
    unit_cents: int

    @property
    def total_cents(self) -> int:
        return self.quantity * self.unit_cents


@dataclass(frozen=True, slots=True, kw_only=True)
class Customer:
    id: str
    name: str
    email: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    id: str
    customer_id: str
    invoice_number: str
    status: InvoiceStatus
    currency: str
    line_items: tuple[LineItem, ...]
    due_date: date
    created_at: datetime
    description: str = ""
    tax_cents: int = 0

    @property
    def sub_total_cents(self) -> int:
        return sum(item.total_cents for item in self.line_items)

    @property
    def total_cents(self) -> int:
        return self.sub_total_cents + self.tax_cents


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentMethod:
    id: str
    type: Literal["card", "ach"]
    last4: str
    default: bool
    brand: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


def money(cents: int) -> float:
    return cents / 100


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def customer_json(customer: Customer) -> dict[str, object]:
    return {
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "created_at": timestamp(customer.created_at),
    }


def invoice_json(invoice: Invoice, *, checkout: bool = False) -> dict[str, object]:
    """The partner ``GET /invoices/{id}`` shape; ``checkout`` adds what the SDK reads."""
    body: dict[str, object] = {
        "id": invoice.id,
        "customer_id": invoice.customer_id,
        "invoice_number": invoice.invoice_number,
        "status": invoice.status.value,
        "currency": invoice.currency,
        "sub_total": money(invoice.sub_total_cents),
        "total": money(invoice.total_cents),
        "due_date": invoice.due_date.isoformat(),
        "created_at": timestamp(invoice.created_at),
        "line_items": [
            {
                "description": item.description,
                "quantity": item.quantity,
                "amount": money(item.unit_cents),
                "total": money(item.total_cents),
            }
            for item in invoice.line_items
        ],
    }
    if checkout:
        body["description"] = invoice.description
        body["updated_at"] = timestamp(invoice.created_at)
    return body


def payment_method_json(method: PaymentMethod) -> dict[str, object]:
    body: dict[str, object] = {
        "id": method.id,
        "type": method.type,
        "last4": method.last4,
        "default": method.default,
    }
    # Optional in the SDK's type: bank accounts carry no brand or expiry.
    if method.brand is not None:
        body["brand"] = method.brand
    if method.exp_month is not None:
        body["exp_month"] = method.exp_month
    if method.exp_year is not None:
        body["exp_year"] = method.exp_year
    return body

"""Catalog: the sandbox's customers, invoices and saved payment methods, in memory."""

from __future__ import annotations

import itertools
from dataclasses import replace

from broker.sandbox.records import Customer, Invoice, PaymentMethod


class Catalog:
    """The data a token can reach; a token sees its own invoice and its customer's methods."""

    def __init__(self, *, first_invoice_number: int = 1001) -> None:
        self._customers: dict[str, Customer] = {}
        self._invoices: dict[str, Invoice] = {}
        self._methods: dict[str, list[PaymentMethod]] = {}
        self._numbers = itertools.count(first_invoice_number)

    def customer(self, customer_id: str) -> Customer | None:
        return self._customers.get(customer_id)

    def invoice(self, invoice_id: str) -> Invoice | None:
        return self._invoices.get(invoice_id)

    def owned_invoice(self, customer_id: str, invoice_id: str) -> Invoice | None:
        """The invoice only if *customer_id* owns it now (ownership can be reassigned)."""
        invoice = self._invoices.get(invoice_id)
        if invoice is None or invoice.customer_id != customer_id:
            return None
        return invoice

    def next_invoice_number(self) -> str:
        return f"INV-{next(self._numbers)}"

    def add_customer(self, customer: Customer) -> None:
        self._customers[customer.id] = customer

    def put_invoice(self, invoice: Invoice) -> None:
        if invoice.customer_id not in self._customers:
            raise KeyError(f"unknown customer {invoice.customer_id}")
        self._invoices[invoice.id] = invoice

    def payment_methods(self, customer_id: str) -> tuple[PaymentMethod, ...]:
        return tuple(self._methods.get(customer_id, ()))

    def add_payment_method(self, customer_id: str, method: PaymentMethod) -> PaymentMethod:
        """Append *method*; the customer's first method becomes the default."""
        methods = self._methods.setdefault(customer_id, [])
        method = replace(method, default=not methods)
        methods.append(method)
        return method

"""What a handler learned about one request, for the canonical ``request_finished`` line."""

from __future__ import annotations

from dataclasses import dataclass

# The route label of requests no route took (and of those refused before routing).
UNMATCHED = "unmatched"


@dataclass(slots=True)
class Exchange:
    request_id: str
    route: str = UNMATCHED
    customer_id: str | None = None
    invoice_id: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    token_outcome: str | None = None
    error_code: str | None = None
    auth: str | None = None

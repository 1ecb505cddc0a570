"""What a handler learned about one request, for the canonical ``request_finished`` line."""

from __future__ import annotations

from typing import Final

# The route label of requests no route took (and of those refused before routing).
UNMATCHED: Final = "unmatched"


class Exchange:
    """One per request, filled in as the request goes. A plain class rather than a
    dataclass: mypyc leaves a dataclass's generated ``__init__`` interpreted, and this
    one runs on every request."""

    __slots__ = (
        "auth",
        "caller",
        "customer_id",
        "error_code",
        "invoice_id",
        "reason",
        "request_id",
        "route",
        "token_outcome",
        "upstream_error_code",
        "upstream_ms",
        "upstream_status",
    )

    def __init__(self, request_id: str, route: str = UNMATCHED) -> None:
        self.request_id = request_id
        self.route = route
        self.customer_id: str | None = None
        self.invoice_id: str | None = None
        self.upstream_status: int | None = None
        self.upstream_ms: float | None = None
        # The ``code`` of an upstream 5xx body, for the log; never sent to the browser.
        self.upstream_error_code: str | None = None
        self.token_outcome: str | None = None
        self.error_code: str | None = None
        # How the caller authenticated, or tried to: "session", "api_key", "jwt".
        self.auth: str | None = None
        # Only for refusals, on their request_finished line: why (an AuthFailure's
        # reason, else the error's detail), and for an IdP caller refused a session,
        # the customer its token speaks for (customer_id is then what it asked for).
        self.reason: str | None = None
        self.caller: str | None = None

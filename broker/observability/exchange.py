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


# The logger of the request_finished lines, and as much of a path as they keep.
ACCESS_LOGGER: Final = "broker.access"
MAX_LOGGED_PATH: Final = 256
# Every field a request_finished line can have, besides the pipeline's own (event,
# level, logger, timestamp, trace ids): judged not secret once, by the renderer.
REQUEST_LINE_FIELDS: Final = (
    "method",
    "path",
    "status",
    "duration_ms",
    "bytes_sent",
    "request_id",
    "route",
    "customer_id",
    "invoice_id",
    "upstream_status",
    "upstream_ms",
    "upstream_error_code",
    "token_outcome",
    "error_code",
    "reason",
    "auth",
    "caller",
)


class FinishedRequest:
    """One answered request, as its ``request_finished`` line needs it: what was known
    when it was logged, kept until the line is rendered (after the event loop's
    iteration, with the other lines of it). The fields are built only then."""

    __slots__ = ("bytes_sent", "exchange", "method", "raw_path", "request_id", "seconds", "status")

    def __init__(
        self,
        method: str,
        raw_path: str,
        status: int,
        seconds: float,
        bytes_sent: int,
        exchange: Exchange | None,
        request_id: str | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.status = status
        self.seconds = seconds
        self.bytes_sent = bytes_sent
        # None for a request refused before any route (the parser's, CONNECT).
        self.exchange = exchange
        self.request_id = request_id

    def fields(self) -> dict[str, object]:
        """The line's own fields, in their order, those without a value left out."""
        fields: dict[str, object] = {
            "method": self.method,
            "path": logged_path(self.raw_path),
            "status": self.status,
            "duration_ms": to_microseconds(self.seconds * 1000),
            "bytes_sent": self.bytes_sent,
        }
        if self.request_id is not None:
            fields["request_id"] = self.request_id
        exchange = self.exchange
        if exchange is None:
            fields["route"] = UNMATCHED
            return fields
        fields["route"] = exchange.route
        if exchange.customer_id is not None:
            fields["customer_id"] = exchange.customer_id
        if exchange.invoice_id is not None:
            fields["invoice_id"] = exchange.invoice_id
        if exchange.upstream_status is not None:
            fields["upstream_status"] = exchange.upstream_status
        if exchange.upstream_ms is not None:
            fields["upstream_ms"] = to_microseconds(exchange.upstream_ms)
        if exchange.upstream_error_code is not None:
            fields["upstream_error_code"] = exchange.upstream_error_code
        if exchange.token_outcome is not None:
            fields["token_outcome"] = exchange.token_outcome
        if exchange.error_code is not None:
            fields["error_code"] = exchange.error_code
        if exchange.reason is not None:  # a refusal: who asked, and why (never in the answer)
            fields["reason"] = exchange.reason
            if exchange.auth is not None:
                fields["auth"] = exchange.auth
            if exchange.caller is not None:
                fields["caller"] = exchange.caller
        return fields


def logged_path(raw_path: str) -> str:
    """As much of a request's path as logs and spans keep. Never the query string: it
    may carry cursors or, by mistake, credentials."""
    return raw_path.partition("?")[0][:MAX_LOGGED_PATH]


def to_microseconds(milliseconds: float) -> float:
    """*milliseconds* rounded to the microsecond (three decimals). round() to an integer
    is a fast path; round(x, 3) formats and parses a decimal string, ~4x the cost."""
    try:
        return round(milliseconds * 1000) / 1000
    except (OverflowError, ValueError):  # infinite or NaN: nothing to round
        return milliseconds

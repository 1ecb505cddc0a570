"""The canonical ``request_finished`` line, emitted through aiohttp's access-log hook.

aiohttp calls this for every answered request, including those its parser refused
before any handler ran, so each request gets exactly one line. The query string is
never logged: it may carry cursors or, by mistake, credentials.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from broker.observability.exchange import UNMATCHED, Exchange
from broker.observability.logs import get_logger, log_fields
from broker.web.keys import exchange_key

LOGGER_NAME = "broker.access"
log = get_logger(LOGGER_NAME)
MAX_LOGGED_PATH = 256


class AccessLogger(AbstractAccessLogger):
    """aiohttp makes one per connection, after logging is configured; the line's fields
    are built once, here, those without a value left out."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # For the level, read once per connection (``enabled``): the module's lazy proxy
        # would rebuild the logger on every read.
        self._log = log.bind()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        exchange = request.get(exchange_key)
        path = request.raw_path.partition("?")[0][:MAX_LOGGED_PATH]
        fields: dict[str, object] = {
            "method": request.method,
            "path": path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "bytes_sent": response.body_length,
        }
        if exchange is None:  # refused before any route (parser, CONNECT): no front door
            fields["route"] = UNMATCHED
        else:
            _add_exchange(fields, exchange)
        log_fields(LOGGER_NAME, "request_finished", fields)

    @property
    def enabled(self) -> bool:
        # Read by aiohttp once per connection: below info it then neither times the
        # requests nor calls log(), which would build the fields for nothing.
        return bool(self._log.is_enabled_for(logging.INFO))


def _add_exchange(fields: dict[str, object], exchange: Exchange) -> None:
    # Only what has a value: log_fields does not drop a None.
    fields["request_id"] = exchange.request_id
    fields["route"] = exchange.route
    if exchange.customer_id is not None:
        fields["customer_id"] = exchange.customer_id
    if exchange.invoice_id is not None:
        fields["invoice_id"] = exchange.invoice_id
    if exchange.upstream_status is not None:
        fields["upstream_status"] = exchange.upstream_status
    if exchange.upstream_ms is not None:  # rounded here, for the lines written
        fields["upstream_ms"] = round(exchange.upstream_ms, 3)
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

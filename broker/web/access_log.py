"""The canonical ``request_finished`` line, emitted through aiohttp's access-log hook.

aiohttp calls this for every answered request, including those its parser refused
before any handler ran, so each request gets exactly one line. The query string is
never logged: it may carry cursors or, by mistake, credentials.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from broker.observability.exchange import UNMATCHED
from broker.observability.logs import get_logger, log_fields
from broker.web.keys import exchange_key

LOGGER_NAME = "broker.access"
log = get_logger(LOGGER_NAME)
MAX_LOGGED_PATH = 256


class AccessLogger(AbstractAccessLogger):
    """aiohttp makes one per connection, after logging is configured; the line's fields
    are built once, here, and those without a value (``None``) are left out where every
    line is rendered (``broker.observability.logs.LineRenderer``)."""

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
            fields |= {
                "request_id": exchange.request_id,
                "route": exchange.route,
                "customer_id": exchange.customer_id,
                "invoice_id": exchange.invoice_id,
                "upstream_status": exchange.upstream_status,
                "upstream_ms": _milliseconds(exchange.upstream_ms),
                "upstream_error_code": exchange.upstream_error_code,
                "token_outcome": exchange.token_outcome,
                "error_code": exchange.error_code,
            }
            if exchange.reason is not None:  # a refusal: who asked, and why (never in the answer)
                fields["reason"] = exchange.reason
                fields["auth"] = exchange.auth
                if exchange.caller is not None:
                    fields["caller"] = exchange.caller
        log_fields(LOGGER_NAME, "request_finished", fields)

    @property
    def enabled(self) -> bool:
        # Read by aiohttp once per connection: below info it then neither times the
        # requests nor calls log(), which would build the fields for nothing.
        return bool(self._log.is_enabled_for(logging.INFO))


def _milliseconds(value: float | None) -> float | None:
    # Rounded here, for the lines written, rather than for every request.
    return None if value is None else round(value, 3)

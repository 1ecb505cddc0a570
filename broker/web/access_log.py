"""The canonical ``request_finished`` line, emitted through aiohttp's access-log hook.

aiohttp calls this for every answered request, including those its parser refused
before any handler ran, so each request gets exactly one line (its fields:
``broker.observability.exchange.FinishedRequest``).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from broker.observability.exchange import ACCESS_LOGGER, FinishedRequest
from broker.observability.logs import get_logger, log_request, request_id_var
from broker.web.keys import exchange_key

log = get_logger(ACCESS_LOGGER)


class AccessLogger(AbstractAccessLogger):
    """aiohttp makes one per connection, after logging is configured."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # For the level, read once per connection (``enabled``): the module's lazy proxy
        # would rebuild the logger on every read.
        self._log = log.bind()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        exchange = request.get(exchange_key)
        # A request refused before any route has no exchange: its id, if any, is the
        # context's.
        request_id = request_id_var.get() if exchange is None else exchange.request_id
        finished = FinishedRequest(
            request.method,
            request.raw_path,
            response.status,
            time,
            response.body_length,
            exchange,
            request_id,
        )
        log_request(finished)

    @property
    def enabled(self) -> bool:
        # Read by aiohttp once per connection: below info it then neither times the
        # requests nor calls log(), which would build the fields for nothing.
        return bool(self._log.is_enabled_for(logging.INFO))

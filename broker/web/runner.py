"""The runner for every listener: aiohttp's own answers in the broker's shape.

aiohttp answers some requests before any route (and so before the front door) sees
them: those its parser refuses (a bad request line, a control byte in a header, an
unknown method, an oversized header) with 400, targets without a path, for which its
router tries no route (``CONNECT host:port``, ``GET http://host``), with 404, and a
handler that escapes with 500 or 504. Its answer is ``text/plain``, for a refusal one
that echoes the refused line, which may be a header holding the caller's bearer token,
under ``Server: Python/... aiohttp/...``. The server here answers them as the broker
answers every error instead: the JSON error shape, a request id, ``Server:
token-broker``, ``no-store``, and closed; CONNECT gets 405.

aiohttp has no hook for this, so it takes a subclass at each step that builds the
connection handler: ``RequestHandler.handle_error``, the ``Server`` that creates
handlers (and holds the request handler), and the ``AppRunner`` that creates the server.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError

from broker.errors import (
    BadRequest,
    BrokerError,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)
from broker.gateway import Gateway
from broker.observability.exchange import UNMATCHED
from broker.observability.logs import request_id_var
from broker.proxy.answer import Answer
from broker.proxy.finishing import finish_headers
from broker.web.front_door import new_request_id, shaped_error
from broker.web.keys import exchange_key, gateway_key, proxy_routes_key
from broker.web.routing import ProxyRoutes

# What aiohttp's statuses mean here: its parser refuses with 400, a handler that times
# out gives 504, anything else that escapes a handler gives 500.
_ERRORS: dict[int, type[BrokerError]] = {400: BadRequest, 504: GatewayTimeout}


def _error_for(status: int, exc: BaseException | None) -> BrokerError:
    if isinstance(exc, ContentEncodingError):
        # aiohttp's parser sets up a decoder for a compressed body and refuses the
        # encodings it cannot decode (br without Brotli): the broker refuses them all.
        return UnsupportedMediaType()
    return _ERRORS.get(status, BrokerError)()


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors as the broker,
    and take proxied requests to their route past the router (``ProxyRoutes``)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its routes are final
        gateway = self.app.get(gateway_key)  # the metrics listener has none
        proxy_routes = self.app.get(proxy_routes_key)  # the public listener's only
        if proxy_routes is not None:
            proxy_routes.freeze(self.app.router)
        return _GatewayServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            gateway=gateway,
            proxy_routes=proxy_routes,
            **server._kwargs,
        )


class _GatewayServer(web.Server):
    def __init__(
        self,
        *args: Any,
        gateway: Gateway | None,
        proxy_routes: ProxyRoutes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        routed = self.request_handler
        take = proxy_routes.take if proxy_routes is not None else _router_decides

        def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            # CONNECT's target (host:port) has no path: aiohttp's router tries no route
            # for it, not even the catch-all, and would answer 404 in its own text.
            if request.method == hdrs.METH_CONNECT:
                return self.refuse(request, MethodNotAllowed())
            # Nor for an absolute target without a path (``GET http://host``): its walk
            # never reaches "/", where the catch-all is.
            if not request.rel_url.path_safe:
                return self.refuse(request, NotFound())
            proxied = take(request)
            return routed(request) if proxied is None else proxied

        self.request_handler = handle

    def __call__(self) -> web.RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)

    async def refuse(self, request: web.BaseRequest, error: BrokerError) -> web.StreamResponse:
        return self.answer(request, error)

    def answer(self, request: web.BaseRequest, error: BrokerError) -> Answer:
        """*error* as the front door would answer it, for a request it did not see."""
        exchange = request.get(exchange_key)  # set when the front door saw the request
        request_id = new_request_id() if exchange is None else exchange.request_id
        request_id_var.set(request_id)
        response = shaped_error(error)
        finish_headers(request, response.headers, request_id, None)  # the Origin is unread
        response.force_close()
        if exchange is None and self.gateway is not None:  # else the front door counted it
            self.gateway.metrics.request_done(UNMATCHED, "OTHER", error.status, 0.0)
        return response


def _router_decides(_request: web.BaseRequest) -> Awaitable[web.StreamResponse] | None:
    return None


class _GatewayRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        manager = self._manager
        assert isinstance(manager, _GatewayServer)  # noqa: S101 - only _GatewayServer makes us
        response = manager.answer(request, _error_for(status, exc))  # binds the request id
        # aiohttp's part: the log line (the error's class, never the request's bytes) and
        # ConnectionError when an answer has started already. Its response is dropped.
        super().handle_error(request, status, exc, message)
        return response

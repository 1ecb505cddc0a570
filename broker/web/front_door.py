"""The front door (``front_door``), in the order it works on a request:

the request context comes first so that every log line carries the request id and
the metrics count the *mapped* status; then every refusal below it (and from the
handlers) gets the upstream's error shape; on the public listener, the guards refuse
ambiguous requests, apply the per-IP rate limit and answer CORS preflights before any
handler (or upstream) sees them.

It wraps each route's handler when the route is added, rather than running as an
aiohttp middleware: aiohttp's middleware chain adds a wrapper coroutine and a cache
lookup to every request. A last catch-all route (``add_unmatched``) gives paths and
methods no route takes the same treatment, answered 404 or 405.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import Final

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.typedefs import Handler

from broker.auth.sessions import AuthFailure
from broker.credentials import key_ids
from broker.errors import (
    BrokerError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from broker.gateway import Gateway
from broker.headers import (
    ALLOW,
    CACHE_CONTROL,
    EXPECT,
    ORIGIN,
    REQUEST_ID,
    RETRY_AFTER,
    WWW_AUTHENTICATE,
)
from broker.observability.exchange import UNMATCHED, Exchange, logged_path
from broker.observability.logs import get_logger, request_id_var
from broker.observability.tracing import Span, Tracing
from broker.proxy.answer import Answer, json_answer
from broker.proxy.finishing import finish_headers
from broker.proxy.throttle import client_ip
from broker.upstream.transport import STANDARD_METHODS
from broker.web.keys import exchange_key
from broker.web.routing import EveryTarget

log = get_logger("broker.requests")

# A caller's X-Request-Id is kept only when it is short and plain.
_SANE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes from the orchestrator are not rate limited per IP, and the session-issuing
# endpoints have their own limit (see handlers.issue_session). Scrapes of /metrics
# are: a wrong bearer there is an unauthenticated caller like any other.
_UNTHROTTLED_ROUTES: Final = frozenset(
    {"/healthz", "/readyz", "/v1/checkout-auth/init", "/checkout-auth/init"}
)
_ORIGIN_LOGGED: Final = 200  # characters of a refused Origin worth a log line
_perf_counter: Final = time.perf_counter


# The catch-all route's path; its requests are labelled "unmatched" in logs and metrics.
_UNMATCHED_PATH = "/{unmatched:[\\s\\S]*}"
_UNMATCHED_CANONICAL = "/{unmatched}"


def _template_of(resource: web.AbstractResource) -> str:
    canonical: str = resource.canonical
    return UNMATCHED if canonical == _UNMATCHED_CANONICAL else canonical


def request_id_for(request: web.BaseRequest) -> str:
    values = request.headers.getall(REQUEST_ID, ())
    if len(values) == 1 and _SANE_REQUEST_ID.fullmatch(values[0]):
        return values[0]
    return new_request_id()


def new_request_id() -> str:
    return _request_ids.new()


class _RequestIds:
    """Ids unique across processes and restarts without a syscall per request: a random
    64-bit prefix per process and a counter, as 32 hex digits. Correlation ids, not
    secrets (a caller may choose its own)."""

    def __init__(self) -> None:
        self._prefix = 0
        self._count = 0
        self.reseed()

    def reseed(self) -> None:
        # At import, and in a forked worker, which must not repeat its parent's ids.
        self._prefix = int.from_bytes(os.urandom(8), "big") << 64
        self._count = 0

    def new(self) -> str:
        self._count += 1
        return (self._prefix + self._count).to_bytes(16, "big").hex()


_request_ids: Final = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)


# A door wraps one route's handler; the route's label (its path template) is known when
# the route is added, so it is not looked up per request.
Door = Callable[[Handler, str], Handler]


def front_door(gateway: Gateway, *, public: bool) -> Door:
    """What wraps each handler: request context, error shape and, on the public
    listener, the guards and CORS. One layer instead of three: each costs a coroutine
    frame per request on the hot path. Add routes through it with ``add_routes``."""
    metrics = gateway.metrics
    tracing = gateway.tracing

    def door(handler: Handler, route: str) -> Handler:
        async def front(request: web.Request) -> web.StreamResponse:
            exchange = Exchange(request_id=request_id_for(request), route=route)
            request[exchange_key] = exchange
            request_id_var.set(exchange.request_id)
            method = request.method if request.method in STANDARD_METHODS else "OTHER"
            started = _perf_counter()
            status = 500  # counted if the connection is reset mid-answer
            metrics.inflight.inc()
            try:
                try:
                    preflight = _guard(request, gateway, route) if public else None
                    # Not `preflight or ...`: a response is a mapping, falsy when empty.
                    response = await handler(request) if preflight is None else preflight
                except Exception as exc:  # noqa: BLE001 - mapped (or re-raised) right here
                    response = _refusal(request, exc, gateway)
                status = response.status
                if not response.prepared:  # streamed answers got these before their headers
                    cors = gateway.cors if public else None
                    finish_headers(request, response.headers, exchange.request_id, cors)
                return response
            except web.HTTPException as exc:  # below 400: not an error, aiohttp answers it
                status = exc.status
                raise
            finally:
                metrics.inflight.dec()
                metrics.request_done(exchange.route, method, status, _perf_counter() - started)

        # Tracing off: the route gets the front as it is, not a wrapper that tests it.
        return front if tracing is None else _traced(tracing, front, route)

    return door


def _traced(tracing: Tracing, front: Handler, route: str) -> Handler:
    """*front* inside the request's server span (the one check per request is this
    choice, made when the route is added)."""

    async def traced(request: web.Request) -> web.StreamResponse:
        method = request.method if request.method in STANDARD_METHODS else "_OTHER"
        with tracing.server_span(f"{method} {route}", request.headers) as span:
            span.set("http.request.method", method)
            span.set("http.route", route)
            span.set("url.path", logged_path(request.raw_path))
            status = 500
            try:
                response = await front(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                span.set("http.response.status_code", status)
                exchange = request.get(exchange_key)
                if exchange is not None:
                    _describe(span, exchange)
                if status >= 500:  # the broker failed; a refusal (4xx) is not an error
                    span.fail(
                        exchange.error_code if exchange and exchange.error_code else str(status)
                    )

    return traced


def _describe(span: Span, exchange: Exchange) -> None:
    span.set("broker.request_id", exchange.request_id)
    for name, value in (
        ("broker.customer_id", exchange.customer_id),
        ("broker.invoice_id", exchange.invoice_id),
        ("broker.token.outcome", exchange.token_outcome),
        ("error.type", exchange.error_code),
        ("broker.refusal.reason", exchange.reason),
    ):
        if value is not None:
            span.set(name, value)


class FrontDoor:
    """A listener's front door (``front_door``) that remembers every handler it wrapped,
    so that its app refuses to start with a route added around it: such a route would
    answer without a request id, the error shape, metrics or the per-IP limit. Nor does
    it start with an ``on_response_prepare`` handler, which an Answer is never shown."""

    def __init__(self, gateway: Gateway, *, public: bool) -> None:
        self._wrap = front_door(gateway, public=public)
        self._fronts: set[Handler] = set()

    def __call__(self, handler: Handler, route: str) -> Handler:
        front = self._wrap(handler, route)
        self._fronts.add(front)
        return front

    def guard(self, app: web.Application) -> None:
        """Check *app*'s routes when it starts (routes can be added until then), before
        anything else starts."""
        app.on_startup.insert(0, self._refuse_routes_around_it)

    async def _refuse_routes_around_it(self, app: web.Application) -> None:
        if app.on_response_prepare:
            # Its refusals (and the relayed answers) are Answers, which it would not see.
            raise RuntimeError("on_response_prepare is not run for the front door's answers")
        around = [
            f"{route.method} {route.resource.canonical if route.resource else '?'}"
            for route in app.router.routes()
            if route.handler not in self._fronts
        ]
        if around:
            raise RuntimeError(
                "routes not served through the front door (add them with add_routes): "
                + ", ".join(around)
            )


def add_routes(
    router: web.UrlDispatcher, door: Door, methods: tuple[str, ...], path: str, handler: Handler
) -> Handler:
    """*handler* for *methods* on *path*, through *door*, labelled by its path template;
    returns what the routes call (the handler in its front door). (``GET_HEAD`` is what
    aiohttp's ``add_get`` adds.)"""
    resource = router.add_resource(path)
    front = door(handler, _template_of(resource))
    for method in methods:
        resource.add_route(method, front, expect_handler=expect_continue)
    return front


GET_HEAD = (hdrs.METH_GET, hdrs.METH_HEAD)


def add_unmatched(router: web.UrlDispatcher, door: Door) -> None:
    """Add last: any target or method no other route takes gets a 404 or 405 through
    *door* (logged, counted, rate limited, error-shaped) instead of aiohttp's text."""
    resource = EveryTarget(_UNMATCHED_PATH)
    router.register_resource(resource)
    resource.add_route(hdrs.METH_ANY, door(_unmatched, UNMATCHED), expect_handler=expect_continue)


async def expect_continue(request: web.Request) -> None:
    """Every route's ``Expect`` handler: ``100-continue`` is answered as aiohttp would,
    any other expectation is ignored (RFC 9110 §10.1.1 allows it) and never forwarded.
    aiohttp's default refuses those itself, before the front door: a plain-text 417
    echoing the value, under its own Server header."""
    if (
        request.version == HttpVersion11
        and request.headers.get(EXPECT, "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # an interim answer: the response has not started


async def _unmatched(request: web.Request) -> web.StreamResponse:
    # Only reached when no route took the request: another route with this path
    # (but not this method) makes it a 405, as aiohttp's router would say.
    catch_all = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not catch_all:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise MethodNotAllowed(allowed=allowed - {hdrs.METH_ANY})
    raise NotFound()


def _refusal(request: web.Request, exc: Exception, gateway: Gateway) -> Answer:
    """The upstream-shaped error for whatever refused the request (called while *exc*
    is being handled); re-raised when headers went out already or it is no error."""
    if isinstance(exc, BrokerError):
        if request.writer.output_size:  # headers already sent: only a reset is left
            raise exc
        return error_response(request, exc, gateway)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return error_response(request, _from_http_exception(exc), gateway)
    if request.writer.output_size:
        raise exc
    log.exception("unhandled_error")
    return error_response(request, BrokerError("unhandled error"), gateway)


def _guard(request: web.Request, gateway: Gateway, route: str) -> Answer | None:
    """Refuse ambiguous requests, apply the per-IP limit, answer CORS preflights."""
    # A repeated Host, Content-Length or Transfer-Encoding, or both framings at once, never
    # get here: aiohttp's request parser refuses them (llhttp, and since aiohttp 3.13.4 its
    # singleton-field check; the floor in pyproject is 3.14.3), answered 400 by the runner;
    # tests/security pins that. A repeated Authorization is refused where it is read.
    headers = request.headers
    if route not in _UNTHROTTLED_ROUTES:
        gateway.ip_throttle.take(remote_address(request, gateway))
    if gateway.cors.is_preflight(request):
        origin = headers.get(ORIGIN)
        if not gateway.cors.allows(origin):
            # The browser shows its page only a network error, so this line is where a
            # developer learns which origin to add (cors.allowed_origins, --cors-origin).
            # An origin is no credential; cut short, since the client chooses it.
            log.warning(
                "cors_origin_refused",
                origin=(origin or "")[:_ORIGIN_LOGGED],
                reason="not in cors.allowed_origins",
            )
            raise Forbidden("origin not allowed")
        return gateway.cors.preflight_response()
    return None


def remote_address(request: web.Request, gateway: Gateway) -> str:
    """The client's IP: X-Forwarded-For is believed only from trusted proxies."""
    trusted = gateway.settings.server.trusted_proxies
    if not trusted:  # the usual case: the TCP peer, whatever X-Forwarded-For claims
        return request.remote or "unknown"
    return client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)


def error_response(request: web.Request, exc: BrokerError, gateway: Gateway) -> Answer:
    exchange = request.get(exchange_key)
    if exchange is not None:
        exchange.error_code = exc.code
        # Why, for the request_finished line only: the answer stays uniform.
        exchange.reason = exc.reason if isinstance(exc, AuthFailure) else exc.detail or exc.code
        if isinstance(exc, AuthFailure) and exc.key is not None and exchange.customer_id is None:
            exchange.customer_id, exchange.invoice_id = key_ids(exc.key)
    if isinstance(exc, AuthFailure):
        gateway.metrics.auth_failures.labels(reason=exc.reason).inc()
    if exc.status >= 500:
        log.warning("request_failed", code=exc.code, detail=exc.detail)
    return shaped_error(exc)


def shaped_error(exc: BrokerError) -> Answer:
    """*exc* in the upstream's error shape, with the headers its status calls for."""
    headers = {CACHE_CONTROL: "no-store"}
    if exc.retry_after is not None:
        headers[RETRY_AFTER] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status == 401:
        headers[WWW_AUTHENTICATE] = 'Bearer error="invalid_token"'
    elif isinstance(exc, MethodNotAllowed):  # RFC 9110 §15.5.6: a 405 names what is allowed
        headers[ALLOW] = ", ".join(exc.allowed)
    return json_answer(exc.body(), status=exc.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> BrokerError:
    if exc.status == 404:
        return NotFound()
    if exc.status == 405:
        allowed = exc.allowed_methods if isinstance(exc, web.HTTPMethodNotAllowed) else ()
        return MethodNotAllowed(allowed=allowed)
    if exc.status == 413:
        return PayloadTooLarge()
    error = BrokerError(exc.reason)
    error.status = exc.status  # type: ignore[misc]  # keep the router's status
    error.code = exc.reason.lower().replace(" ", "_")  # type: ignore[misc]
    error.message = exc.reason  # type: ignore[misc]
    return error

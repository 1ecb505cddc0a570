"""The composition root: ``create_app`` wires settings, collaborators and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from broker.auth.sessions import ApiKeys, AuthFailure
from broker.config.model import Settings
from broker.errors import BadRequest
from broker.gateway import Gateway
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.proxy.finishing import finish_headers
from broker.web import admin, handlers
from broker.web.access_log import AccessLogger
from broker.web.front_door import GET_HEAD, FrontDoor, add_routes, add_unmatched, shaped_error
from broker.web.keys import gateway_key, proxy_routes_key, registry_key, reloader_key
from broker.web.reloading import LoadSettings, Reloader
from broker.web.routing import TAIL, ProxyRoutes

SESSION_INIT_PATHS = ("/v1/checkout-auth/init", "/checkout-auth/init")


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    load: LoadSettings | None = None,
    tracing: Tracing | None = None,
) -> web.Application:
    """The public app. *load*: how to read the configuration again (a reload);
    *tracing* (``open_tracing``) is closed with it."""
    registry = registry if registry is not None else CollectorRegistry()
    gateway = Gateway(settings, Metrics.create(registry), tracing)
    app = web.Application(client_max_size=settings.limits.max_body_bytes)
    app[gateway_key] = gateway
    app[registry_key] = registry
    app[reloader_key] = Reloader(gateway, load)
    app.cleanup_ctx.append(_gateway_lifetime)
    app.on_shutdown.append(_stop_being_ready)

    router, door = app.router, FrontDoor(gateway, public=True)
    door.guard(app)
    add_routes(router, door, GET_HEAD, "/healthz", handlers.health)
    add_routes(router, door, GET_HEAD, "/readyz", handlers.readiness)
    add_routes(router, door, GET_HEAD, "/.well-known/jwks.json", handlers.jwks)
    token = settings.metrics_bearer_token
    if token:
        # Never unauthenticated here: the public port is what browsers reach.
        add_routes(router, door, GET_HEAD, "/metrics", _bearer_only(registry, token))
    for path in SESSION_INIT_PATHS:
        add_routes(router, door, (hdrs.METH_POST,), path, handlers.issue_session)
    proxy_routes = app[proxy_routes_key] = ProxyRoutes()  # found past the router
    for prefix in settings.upstream.proxy_prefixes:
        # TAIL is [\s\S]*: aiohttp matches the *decoded* path, and "." would let an
        # encoded newline fall through to a 404 instead of the path checks' 400.
        path = prefix + TAIL
        front = add_routes(router, door, (hdrs.METH_ANY,), path, partial(handlers.proxy, gateway))
        proxy_routes.add(prefix, front)
    add_unmatched(router, door)
    return app


def runner_options(settings: Settings) -> dict[str, Any]:
    """``AppRunner`` keywords for the public listener (tests use the same ones)."""
    return {
        "access_log_class": AccessLogger,
        "handler_cancellation": True,  # a caller gone stops its upstream call
        # aiohttp arms this timer at connect and after each response, and data does
        # not reset it: a client must finish its next request's headers in time.
        "keepalive_timeout": settings.limits.header_timeout,
        # After an early refusal (413/415) aiohttp drains the rest of the body for this
        # long, inflating compressed ones; keep that cost bounded.
        "lingering_time": 1.0,
        "shutdown_timeout": settings.server.shutdown_timeout,
    }


def create_admin_app(main: web.Application) -> web.Application:
    """A separate application sharing *main*'s gateway (tokens, revocations, reloads)."""
    gateway = main[gateway_key]
    app = web.Application()
    app[gateway_key] = gateway
    app[reloader_key] = main[reloader_key]
    path = "/admin/v1/customers/{customer_id}/tokens"
    door = FrontDoor(gateway, public=False)
    door.guard(app)
    router, post = app.router, (hdrs.METH_POST,)
    add_routes(router, door, GET_HEAD, path, admin.customer_tokens)
    add_routes(router, door, (hdrs.METH_DELETE,), path, admin.revoke_customer)
    add_routes(router, door, GET_HEAD, "/admin/v1/partners", admin.partners)
    add_routes(router, door, post, "/admin/v1/partners/{partner}/promote", admin.promote)
    add_routes(router, door, post, "/admin/v1/reload", admin.reload)
    add_unmatched(app.router, door)
    return app


def create_metrics_app(registry: CollectorRegistry, token: str = "") -> web.Application:
    """``/metrics`` alone, for ``[metrics] port``: keeps scrapes off the public port
    (with *token*, for that bearer only)."""
    app = web.Application()
    handler = _bearer_only(registry, token) if token else make_aiohttp_handler(registry)
    app.router.add_get("/metrics", handler)
    app.on_response_prepare.append(_name_the_server)  # no front door here to do it
    return app


def _bearer_only(registry: CollectorRegistry, token: str) -> Handler:
    """The metrics for ``Authorization: Bearer <metrics.bearer_token>``, else a 401."""
    scrape = make_aiohttp_handler(registry)
    key = ApiKeys((token,))

    async def metrics(request: web.Request) -> web.StreamResponse:
        try:
            presented = handlers.bearer_token(request)
        except (AuthFailure, BadRequest):
            presented = ""
        if not presented or not key.check(presented):
            error = AuthFailure("unknown_metrics_token")
            if gateway_key not in request.app:  # the metrics listener: no front door
                return shaped_error(error)
            raise error
        return await scrape(request)

    return metrics


async def _name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    finish_headers(request, response.headers, None, None)  # our Server, not aiohttp's


async def _gateway_lifetime(app: web.Application) -> AsyncIterator[None]:
    gateway = app[gateway_key]
    await gateway.start()
    app[reloader_key].attach_peers()
    yield
    await gateway.close()


async def _stop_being_ready(app: web.Application) -> None:
    app[gateway_key].draining = True

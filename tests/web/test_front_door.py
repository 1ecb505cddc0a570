"""Every route goes through the front door: an app with one added around it won't start,
nor one with an ``on_response_prepare`` handler its answers would skip."""

from __future__ import annotations

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.config.model import AdminSettings
from broker.web.app import create_admin_app, create_app
from tests.helpers import Sandbox, make_settings


async def sneaky(_request: web.Request) -> web.Response:
    return web.Response(text="no request id, no error shape, no metrics, no limit")


async def test_a_route_added_around_the_front_door_stops_the_app_starting(
    sandbox: Sandbox,
) -> None:
    app = create_app(make_settings(sandbox.url), registry=CollectorRegistry())
    app.router.add_get("/sneaky", sneaky)
    runner = web.AppRunner(app)
    try:
        with pytest.raises(RuntimeError, match=r"not served through the front door.*/sneaky"):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_the_admin_app_refuses_one_too(sandbox: Sandbox) -> None:
    main = create_app(
        make_settings(sandbox.url, admin=AdminSettings(enabled=True, api_key="k" * 32)),
        registry=CollectorRegistry(),
    )
    admin = create_admin_app(main)
    admin.router.add_post("/admin/v1/backdoor", sneaky)
    runner = web.AppRunner(admin)
    try:
        with pytest.raises(RuntimeError, match=r"POST /admin/v1/backdoor"):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_an_on_response_prepare_handler_stops_the_app_starting(sandbox: Sandbox) -> None:
    """The front door's answers (broker.proxy.answer) are written without that signal:
    a handler for it, a security header say, would silently miss them."""

    async def stamp(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Stamp"] = "1"

    app = create_app(make_settings(sandbox.url), registry=CollectorRegistry())
    app.on_response_prepare.append(stamp)
    runner = web.AppRunner(app)
    try:
        with pytest.raises(RuntimeError, match="on_response_prepare"):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_the_apps_as_built_start(sandbox: Sandbox) -> None:
    app = create_app(make_settings(sandbox.url), registry=CollectorRegistry())
    runner = web.AppRunner(app)
    try:
        await runner.setup()
        served = {route.resource.canonical for route in app.router.routes() if route.resource}
        assert {"/healthz", "/readyz", "/v1/checkout-auth/init"} <= served
    finally:
        await runner.cleanup()

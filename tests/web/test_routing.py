"""The proxy routes found past aiohttp's router (broker.web.routing) are the router's.

For any request target and method, what ``ProxyRoutes.front_for`` chooses is either
nothing (the router is asked) or the very handler aiohttp's router resolves the request
to: never another route, never a proxy route the router would not take. The requests are
built with aiohttp's own test helper; the router is aiohttp's, resolving them as it does
for the server.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from broker.web.app import create_app
from broker.web.keys import proxy_routes_key
from broker.web.routing import ProxyRoutes
from tests.conftest import MakeBroker
from tests.helpers import Sandbox, make_settings

UPSTREAM = "http://127.0.0.1:9"  # never called: the apps here are not started
# The default, and overlapping prefixes with the session endpoints under one of them.
PREFIX_SETS = [("/checkout/",), ("/checkout/", "/checkout/v2/", "/v1/")]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]
SEGMENTS = [
    "checkout", "v1", "v2", "checkout-auth", "init", "healthz", "readyz", ".well-known",
    "jwks.json", "metrics", "invoices", "inv_1", "", ".", "..", "%2F", "%2e%2e", "%0A",
    "%20", "é", "%E9", "CHECKOUT", "a;b", "x=1",
]  # fmt: skip
EXACT = [
    "/healthz", "/readyz", "/.well-known/jwks.json", "/metrics", "/v1/checkout-auth/init",
    "/checkout-auth/init", "/checkout/", "/checkout", "/checkout/v2/", "/v1/", "/", "*",
]  # fmt: skip
SDK_CALLS = ["/checkout/v1/invoices/inv_1", "/checkout/v1/payment-methods", "/checkout/"]

paths = st.one_of(
    st.sampled_from(EXACT),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(
        lambda parts: "/" + "/".join(parts)
    ),
    st.builds(
        lambda path, query: path + query,
        st.sampled_from(EXACT + SDK_CALLS),
        st.sampled_from(["", "?a=1", "?x=/healthz", "#frag"]),
    ),
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@functools.cache
def routed_app(prefixes: tuple[str, ...]) -> tuple[web.Application, ProxyRoutes]:
    app = create_app(make_settings(UPSTREAM, proxy_prefixes=prefixes), registry=None)
    routes = app[proxy_routes_key]
    routes.freeze(app.router)
    return app, routes


@pytest.mark.parametrize("prefixes", PREFIX_SETS, ids=["default", "overlapping"])
@settings(max_examples=400, deadline=None)
@given(path=paths, method=st.sampled_from(METHODS), expect=st.booleans())
# A session endpoint under a proxy prefix is its own route for POST, proxied otherwise.
@example(path="/v1/checkout-auth/init", method="POST", expect=False)
@example(path="/v1/checkout-auth/init?x=1", method="POST", expect=False)
@example(path="/v1/checkout-auth/init", method="GET", expect=False)
@example(path="/checkout/v1/invoices", method="POST", expect=True)
def test_a_proxy_route_is_chosen_only_where_the_router_chooses_it(
    loop: asyncio.AbstractEventLoop,
    prefixes: tuple[str, ...],
    path: str,
    method: str,
    expect: bool,
) -> None:
    app, routes = routed_app(prefixes)
    headers = {"Expect": "100-continue"} if expect else {}
    request = make_mocked_request(method, path, headers=headers)
    chosen = routes.front_for(request)
    if chosen is None:
        return
    assert not expect  # the router answers an Expect before the handler runs
    match = loop.run_until_complete(app.router.resolve(request))
    assert match.http_exception is None, (method, path)
    assert chosen is match.handler, (method, path, match.route.resource)


@pytest.mark.parametrize("prefixes", PREFIX_SETS, ids=["default", "overlapping"])
@pytest.mark.parametrize("path", SDK_CALLS)
def test_the_sdk_calls_are_taken_past_the_router(
    loop: asyncio.AbstractEventLoop, prefixes: tuple[str, ...], path: str
) -> None:
    app, routes = routed_app(prefixes)
    for method in ("GET", "POST", "DELETE"):
        request = make_mocked_request(method, path)
        chosen = routes.front_for(request)
        assert chosen is not None, (method, path)
        assert chosen is loop.run_until_complete(app.router.resolve(request)).handler


def test_the_longer_of_two_prefixes_takes_what_both_cover(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app, routes = routed_app(PREFIX_SETS[1])
    request = make_mocked_request("GET", "/checkout/v2/invoices")
    match = loop.run_until_complete(app.router.resolve(request))
    assert match.route.resource is not None
    assert match.route.resource.canonical == "/checkout/v2/{tail}"
    assert routes.front_for(request) is match.handler


async def nothing(_request: web.Request) -> web.Response:
    return web.Response()


def test_an_app_with_another_pattern_route_leaves_every_choice_to_the_router() -> None:
    app = create_app(make_settings(UPSTREAM), registry=CollectorRegistry())
    app.router.add_get("/checkout/{anything}/x", nothing)
    routes = app[proxy_routes_key]
    routes.freeze(app.router)
    assert routes.front_for(make_mocked_request("GET", "/checkout/v1/invoices")) is None


async def test_the_production_runner_takes_proxied_requests_past_the_router(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    assert isinstance(client.app, web.Application)
    routes = client.app[proxy_routes_key]
    # The runner froze them when the app started: the SDK's calls are taken.
    assert routes.front_for(make_mocked_request("GET", SDK_CALLS[0])) is not None

"""broker/web/openapi.yaml, the broker's own HTTP surface, held to the code.

- The document is valid OpenAPI 3.1.
- Every route the apps register is in it and nothing else is (HEAD goes with GET); its
  proxied paths are exactly the route allowlist's, under both SDK prefixes.
- schemathesis against a broker on the sandbox (the production runner, real listeners
  on loopback, as ``serve --sandbox`` wires them): no 5xx, and every answer's status,
  headers, content type and body as declared. Bounded: a few examples per operation
  and no shrinking past a deadline, a few seconds in all.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import schemathesis
import yaml
from aiohttp import hdrs, web
from hypothesis import HealthCheck, Phase, settings
from prometheus_client import CollectorRegistry
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.config.model import AdminSettings
from broker.errors import MethodNotAllowed, NotFound
from broker.proxy.allowlist import SDK_PREFIXES, SDK_ROUTES, RouteTable
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.web.app import create_admin_app, create_app, runner_options
from broker.web.runner import GatewayRunner
from tests.helpers import API_KEY, METRICS_TOKEN, auth, make_settings

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiOperation

SPEC_PATH = Path(str(resources.files("broker.web") / "openapi.yaml"))
ADMIN_KEY = "schemathesis-admin-key-0123456789abcdef"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Enough to reach each operation's main answers; no shrinking, so a failure costs no
# more than a pass. The whole run takes ten seconds or more: the slow tests below.
BOUNDED = settings(
    max_examples=12,
    deadline=2000,
    derandomize=True,  # the same cases on every run: a failure reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# The inner loop's: the same checks on each operation, on fewer cases (a few seconds).
FEW = settings(BOUNDED, max_examples=3)


def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return document


def template(path: str) -> str:
    """A path with its parameters unnamed: ``/a/{x}/b`` -> ``/a/{}/b``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def spec_operations() -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete", "head", "options"}
    return {
        (method.upper(), template(path))
        for path, item in spec()["paths"].items()
        for method in item
        if method in methods
    }


def allowlist_operations() -> set[tuple[str, str]]:
    pairs = set()
    for prefix in SDK_PREFIXES:
        for pair in SDK_ROUTES:
            method, path = pair.split(" ", 1)
            pairs.add((method, template(prefix + path)))
    return pairs


def registered_operations() -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of every route the public and admin apps register (HEAD left out:
    it goes with GET), and the proxy's prefix routes, which the allowlist refines."""
    settings_ = make_settings(
        "http://127.0.0.1:1", admin=AdminSettings(enabled=True, api_key=ADMIN_KEY)
    )
    main = create_app(settings_, registry=CollectorRegistry())
    admin = create_admin_app(main)
    routes: set[tuple[str, str]] = set()
    proxied: set[str] = set()
    for app in (main, admin):
        for route in app.router.routes():
            canonical = route.resource.canonical if route.resource else ""
            if canonical == "/{unmatched}" or route.method == hdrs.METH_HEAD:
                continue  # the catch-all answers what no route takes: 404 or 405
            if route.method == hdrs.METH_ANY:
                proxied.add(canonical.removesuffix("{tail}"))
                continue
            routes.add((route.method, template(canonical)))
    return routes, proxied


def test_the_document_is_valid_openapi_3_1() -> None:
    document = spec()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()
    # The check can fail: an operation without its required responses is refused.
    broken = {**document, "paths": {"/healthz": {"get": {"responses": "none"}}}}
    with pytest.raises(Exception, match="none"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_registered_route_is_in_the_document_and_nothing_else() -> None:
    routes, proxied = registered_operations()
    documented = spec_operations()
    allowlisted = allowlist_operations()
    assert documented - allowlisted == routes
    # The document's proxied operations are the allowlist's, each under a proxy prefix.
    assert documented & allowlisted == allowlisted
    assert proxied == {"/checkout/"}
    assert all(path.startswith(tuple(proxied)) for _, path in allowlisted)


def test_the_route_allowlist_forwards_exactly_the_documented_checkout_operations() -> None:
    """What the allowlist does, not how it is written: each documented checkout operation
    passes it, and every other method on the same path is refused."""
    table = RouteTable()
    checkout = {
        path: {m.upper() for m in item if m in {"get", "post"}}
        for path, item in spec()["paths"].items()
        if "checkout" in next(iter(item[m] for m in item if m in {"get", "post"}))["tags"]
    }
    assert len(checkout) == len(SDK_ROUTES) * len(SDK_PREFIXES)
    for path, methods in checkout.items():
        raw = path.replace("{card_id}", "pm_alice_visa")
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method in methods:
                table.check(method, raw)
            else:
                with pytest.raises(MethodNotAllowed):
                    table.check(method, raw)
    with pytest.raises(NotFound):
        table.check("GET", "/checkout/not-documented")


@dataclass
class Running:
    """A broker (public and admin listeners) on a sandbox, served by a loop of its own
    in a thread, so that schemathesis's synchronous client can call it."""

    url: str
    admin_url: str
    session: str


def serve_in_thread() -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    started: Future[Running] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        runners: list[web.AppRunner] = []

        async def listen(runner: web.AppRunner) -> str:
            runners.append(runner)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{site.port}"

        try:
            sandbox = create_sandbox_app(SandboxSettings(client_secret="sandbox-secret"))
            sandbox_url = await listen(web.AppRunner(sandbox, access_log=None))
            settings_ = make_settings(
                sandbox_url,
                admin=AdminSettings(enabled=True, port=0, api_key=ADMIN_KEY),
            )
            settings_ = replace(settings_, log_level="error")
            app = create_app(settings_, registry=CollectorRegistry())
            options = {**runner_options(settings_), "access_log": None}  # quiet
            url = await listen(GatewayRunner(app, **options))
            admin_url = await listen(GatewayRunner(create_admin_app(app), access_log=None))
            async with aiohttp.ClientSession() as http:
                for _ in range(100):
                    async with http.get(url + "/readyz") as answer:
                        if answer.status == 200:
                            break
                    await asyncio.sleep(0.05)
                async with http.post(
                    url + "/v1/checkout-auth/init",
                    json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
                    headers=auth(API_KEY),
                ) as answer:
                    session = (await answer.json())["token"]
            started.set_result(Running(url, admin_url, session))
            await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            for runner in reversed(runners):
                await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    yield from serve_in_thread()


SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)


def credential(case: Case[OpenApiOperation], running: Running) -> str:
    tags = case.operation.definition.raw.get("tags", [])
    if "admin" in tags:
        return ADMIN_KEY
    if {"metricsToken": []} in case.operation.definition.raw.get("security", []):
        return METRICS_TOKEN
    if "checkout" in tags:
        return running.session
    return API_KEY


def call(case: Case[OpenApiOperation], running: Running, base: Callable[[Running], str]) -> None:
    """*case* with its credential, then (where one is required) without: both answers
    as documented, the second a 401."""
    case.headers["Authorization"] = f"Bearer {credential(case, running)}"
    case.call_and_validate(base_url=base(running), checks=CHECKS)
    # Not for a wrong-method probe or data outside the document: a refused path is 404
    # before any credential is read (the path that is checked is the path forwarded).
    positive = case.meta is None or case.meta.generation.mode.is_positive
    declared = case.method.upper() == case.operation.method.upper()
    if positive and declared and case.operation.definition.raw.get("security"):
        del case.headers["Authorization"]
        response = case.call(base_url=base(running))
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 401, response.text


PUBLIC = SCHEMA.exclude(tag="admin")
ADMIN = SCHEMA.include(tag="admin")


@PUBLIC.parametrize()
@FEW
def test_the_public_listener_answers_as_documented(
    case: Case[OpenApiOperation], running: Running
) -> None:
    call(case, running, lambda r: r.url)


@ADMIN.parametrize()
@FEW
def test_the_admin_listener_answers_as_documented(
    case: Case[OpenApiOperation], running: Running
) -> None:
    call(case, running, lambda r: r.admin_url)


# The two above on four times the cases; they hold the same checks in the inner loop.
@pytest.mark.slow
@PUBLIC.parametrize()
@BOUNDED
def test_the_public_listener_answers_as_documented_on_more_cases(
    case: Case[OpenApiOperation], running: Running
) -> None:
    call(case, running, lambda r: r.url)


# As above, for the admin listener.
@pytest.mark.slow
@ADMIN.parametrize()
@BOUNDED
def test_the_admin_listener_answers_as_documented_on_more_cases(
    case: Case[OpenApiOperation], running: Running
) -> None:
    call(case, running, lambda r: r.admin_url)


def undeclared_method_answers(running: Running) -> list[tuple[str, str, int, str | None]]:
    """(method, path, status, Allow) for a method each documented path does not take."""
    answers = []
    for path in spec()["paths"]:
        base = running.admin_url if "/admin/" in path else running.url
        target = re.sub(r"\{[^}]*\}", "card_1", path.replace("{customer_id}", "cus_alice"))
        method = "PUT"
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            connection.request(method, target, headers={"Authorization": f"Bearer {API_KEY}"})
            response = connection.getresponse()
            response.read()
            answers.append((method, target, response.status, response.getheader("Allow")))
        finally:
            connection.close()
    return answers


def test_a_wrong_method_is_405_on_every_documented_path(running: Running) -> None:
    assert {status for _, _, status, _ in undeclared_method_answers(running)} == {405}


def test_a_405_names_the_allowed_methods(running: Running) -> None:
    documented = {
        path: {m.upper() for m in item if m in {"get", "post", "delete"}}
        for path, item in spec()["paths"].items()
    }
    for (_, target, _, allow), (path, methods) in zip(
        undeclared_method_answers(running), documented.items(), strict=True
    ):
        assert allow is not None, target
        assert methods <= {m.strip() for m in allow.split(",")}, (path, allow)

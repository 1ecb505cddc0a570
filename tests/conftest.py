"""Fixtures: a real sandbox upstream and a real broker, both on loopback."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient, AiohttpServer

from broker import __file__ as broker_init
from broker import compiled
from broker.config.model import TRANSPORTS, Settings, UpstreamSettings
from broker.observability.logs import configure_logging, reset_logging
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.web.app import create_app, runner_options
from broker.web.runner import GatewayRunner
from tests.helpers import API_KEY, Sandbox, auth, make_settings
from tests.redis.processes import MISSING_REDIS, RedisServer, free_port, redis_executable

BrokerClient = TestClient[web.Request, web.Application]
MakeSandbox = Callable[..., Awaitable[Sandbox]]
MakeBroker = Callable[..., Awaitable[BrokerClient]]


def pytest_sessionstart(session: pytest.Session) -> None:
    """BROKER_TEST_COMPILED=1: the suite must run against the installed compiled wheel
    (every module its mypyc hook lists loaded compiled, none from a source tree), so that
    CI's pass over the shipped artifact cannot test something else. =0, or a run on the
    source tree: plain Python, with no compiled module left in the tree to shadow it."""
    expected = os.environ.get("BROKER_TEST_COMPILED")
    tree = Path(session.config.rootpath)
    imported_from = Path(broker_init).resolve().parent
    if expected == "1":
        problems = compiled_build_problems(tree / "pyproject.toml", imported_from, tree)
    elif compiled() and imported_from.is_relative_to(tree.resolve()):
        problems = [f"compiled modules under {imported_from} shadow the plain sources"]
    else:
        problems = []
    if problems:
        raise pytest.UsageError(
            f"BROKER_TEST_COMPILED={expected}: "
            + "; ".join(problems)
            + " (see README, Compiled build)"
        )


def compiled_build_problems(pyproject: Path, imported_from: Path, tree: Path) -> list[str]:
    hook = tomllib.loads(pyproject.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    names = [
        p.strip("/").removesuffix(".py").replace("/", ".")
        for p in hook["hooks"]["mypyc"]["include"]
    ]
    problems = []
    if imported_from.is_relative_to(tree.resolve()):
        problems.append(f"broker is imported from {imported_from}, not an installed wheel")
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or spec.origin.endswith(".py"):
            problems.append(f"{name} is not compiled ({spec.origin if spec else 'missing'})")
    return problems


@pytest.fixture
async def control_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_sandbox(aiohttp_server: AiohttpServer, control_http: aiohttp.ClientSession) -> MakeSandbox:
    async def make(**kwargs: Any) -> Sandbox:
        server = await aiohttp_server(create_sandbox_app(SandboxSettings(**kwargs)))
        return Sandbox(url=server.make_url(""), http=control_http)

    return make


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    return await make_sandbox()


# upstream.transport's default: what a broker test runs on unless it is marked forwarding.
DEFAULT_TRANSPORT = str(next(f.default for f in fields(UpstreamSettings) if f.name == "transport"))


@pytest.hookimpl(tryfirst=True)  # the transport first in test ids, as before
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.forwarding``: the test's requests are forwarded upstream, so it runs
    once per upstream transport (``upstream.transport`` carries nothing else: session
    issuing, refusals, CORS preflights, health and metrics never reach it)."""
    if metafunc.definition.get_closest_marker("forwarding") is None:
        return
    if "transport" not in metafunc.fixturenames:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} is marked forwarding but starts no broker"
            " (it uses neither broker, make_broker nor transport)"
        )
    metafunc.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """``upstream.transport`` of the brokers a test starts: the default, or each in turn
    for a test marked ``forwarding``."""
    name: str = getattr(request, "param", DEFAULT_TRANSPORT)
    return name


class BrokerTestServer(TestServer):
    """A test server on the production runner (aiohttp's own answers in our shape)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
def make_broker(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, transport: str
) -> MakeBroker:
    async def make(settings: Settings, registry: CollectorRegistry | None = None) -> BrokerClient:
        settings = replace(settings, upstream=replace(settings.upstream, transport=transport))
        app = create_app(settings, registry=registry or CollectorRegistry())
        # The production runner's access logger: request_finished lines in tests too.
        options = runner_options(settings)
        del options["handler_cancellation"]  # TestServer always sets it (True)
        server = BrokerTestServer(app)
        await server.start_server(**options)
        return cast(BrokerClient, await aiohttp_client(server))  # closes the server too

    return make


@pytest.fixture
async def broker(make_broker: MakeBroker, sandbox: Sandbox, transport: str) -> BrokerClient:
    return await make_broker(make_settings(sandbox.url, transport=transport))


async def new_session(
    client: BrokerClient, customer_id: str = "cus_alice", invoice_id: str = "inv_alice_1"
) -> str:
    response = await client.post(
        "/v1/checkout-auth/init",
        json={"customer_id": customer_id, "invoice_id": invoice_id},
        headers=auth(API_KEY),
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    token: str = body["token"]
    return token


class LogCapture:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.text.splitlines() if line.strip()]
        return [line for line in lines if name is None or line.get("event") == name]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=stream, cache=False)
    yield LogCapture(stream)
    root.handlers[:], root.level = saved
    reset_logging()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on loopback, shared by the tests that need one."""
    executable = redis_executable()
    if executable is None:
        pytest.fail(MISSING_REDIS)
    server = RedisServer(executable, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()

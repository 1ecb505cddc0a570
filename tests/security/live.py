"""Servers on an event loop in a background thread, for synchronous Hypothesis tests.

Hypothesis drives ``@given`` tests and state machines synchronously. ``LiveLoop`` runs
one asyncio loop in a daemon thread; ``LiveStack`` serves a sandbox upstream, a broker
and its admin app on 127.0.0.1 in that loop with ``AppRunner``/``TCPSite``, and the
test drives them with ``asyncio.run_coroutine_threadsafe`` (``LiveLoop.run``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from broker.config.model import Settings
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.web.app import create_app, runner_options
from broker.web.runner import GatewayRunner
from tests.helpers import Sandbox

T = TypeVar("T")
AdminFactory = Callable[[web.Application], web.Application]


def admin_app_factory() -> AdminFactory | None:
    """``broker.web.app.create_admin_app`` as the spec names it (``broker.web.admin`` as well)."""
    for module_name in ("broker.web.app", "broker.web.admin"):
        module = importlib.import_module(module_name)
        factory = getattr(module, "create_admin_app", None)
        if factory is not None:
            found: AdminFactory = factory
            return found
    return None


class LiveLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class LiveStack:
    """A sandbox, a broker in front of it and the broker's admin listener."""

    def __init__(self, live: LiveLoop) -> None:
        self.live = live
        self.registry = CollectorRegistry()
        self._runners: list[web.AppRunner] = []
        self.http: aiohttp.ClientSession | None = None
        self.sandbox: Sandbox | None = None
        self.broker_port = 0
        self.admin_url: URL | None = None

    @property
    def broker_url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.broker_port}")

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http

    @property
    def upstream(self) -> Sandbox:
        assert self.sandbox is not None
        return self.sandbox

    async def start(
        self, make_settings: Callable[[URL], Settings], sandbox: SandboxSettings
    ) -> None:
        self.http = aiohttp.ClientSession()
        sandbox_port = await self._serve(web.AppRunner(create_sandbox_app(sandbox)))
        sandbox_url = URL(f"http://127.0.0.1:{sandbox_port}")
        self.sandbox = Sandbox(url=sandbox_url, http=self.http)
        settings = make_settings(sandbox_url)
        app = create_app(settings, registry=self.registry)
        options: dict[str, Any] = runner_options(settings)
        self.broker_port = await self._serve(GatewayRunner(app, **options))
        factory = admin_app_factory()
        if factory is not None:
            admin_port = await self._serve(GatewayRunner(factory(app)))
            self.admin_url = URL(f"http://127.0.0.1:{admin_port}")

    async def _serve(self, runner: web.AppRunner) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site.port

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.http is not None:
            await self.http.close()
            self.http = None

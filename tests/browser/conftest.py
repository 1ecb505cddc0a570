"""Fixtures of the browser tests: one broker and one Chromium for the module, a fresh
browser context (its own cookies, cache and storage) for each page a test opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.harness import (
    CHROMIUM_ARGS,
    REPO,
    Broker,
    Network,
    Screenshots,
    chromium_path,
    free_port,
    sdk_bytes,
    unavailable,
    wait_for_url,
    wait_until,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

# Short, so that a session expires within a test; long enough for each step of a
# payment to be taken before the renewed one expires again.
SESSION_TTL = 8
ACTION_TIMEOUT_MS = 20_000
_screenshot_folders: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _screenshot_folders:
        terminalreporter.write_line(f"browser screenshots and broker.log: {folder}")


@pytest.fixture(scope="module")
def screenshots() -> Screenshots:
    shots = Screenshots.from_environment()
    _screenshot_folders.append(shots.folder)
    return shots


@pytest.fixture(scope="module")
def sdk() -> bytes:
    return sdk_bytes()


@pytest.fixture(scope="module")
def browser(sdk: bytes) -> Iterator[Browser]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - may be absent
    except ImportError:
        unavailable("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        # Playwright's own temporary profile: a fresh user-data dir per launch.
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def example_port() -> int:
    """Where examples/partner_backend.py serves its page (the broker allows its origin)."""
    return free_port()


@pytest.fixture(scope="module")
def broker(screenshots: Screenshots, browser: Browser, example_port: int) -> Iterator[Broker]:
    running = Broker(
        port=free_port(),
        sandbox_port=free_port(),
        demo_port=free_port(),
        log_path=screenshots.folder / "broker.log",
    )
    try:
        running.start(SESSION_TTL, "--cors-origin", f"http://127.0.0.1:{example_port}")
        yield running
    finally:
        running.stop()


@pytest.fixture
def example(broker: Broker, example_port: int, screenshots: Screenshots) -> Iterator[str]:
    """examples/partner_backend.py as its README runs it; its page's URL."""
    env = {
        **os.environ,
        "BROKER_URL": broker.url,
        "BROKER_API_KEY": "sandbox-demo-api-key",
        "PORT": str(example_port),
    }
    log_path = screenshots.folder / "example.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own example
            [sys.executable, str(REPO / "examples" / "partner_backend.py")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{example_port}"
    try:
        wait_for_url(f"{url}/", process, lambda: log_path.read_text(errors="replace"))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Visit:
    """One page in its own browser context, and what it saw."""

    label: str  # prefixes its screenshots: a, b, c, d
    page: Page
    network: Network
    shots: Screenshots
    broker: Broker
    responses: list[tuple[str, str, int]] = field(default_factory=list)  # method, url, status
    failed: list[tuple[str, str]] = field(default_factory=list)  # method, url
    console: list[str] = field(default_factory=list)
    session_tokens: list[str] = field(default_factory=list)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.page.evaluate("window.demoEvents ?? []")
        return [e for e in events if name is None or e["event"] == name]

    def wait_for_event(self, name: str, *, within: float = 20) -> dict[str, Any]:
        wait_until(lambda: self.events(name), self.page, within=within, what=name)
        return self.events(name)[-1]

    def shot(self, name: str) -> None:
        self.shots.take(self.page, f"{self.label}-{name}")

    def broker_calls(self, status: int | None = None) -> list[tuple[str, str, int]]:
        return [
            call
            for call in self.responses
            if call[1].startswith(f"{self.broker.url}/checkout/")
            and (status is None or call[2] == status)
        ]

    def _on_response(self, response: Response) -> None:
        request = response.request
        self.responses.append((request.method, response.url, response.status))
        if response.url.endswith("/api/checkout-session") and response.ok:
            # The test keeps the session tokens to prove no log and no upstream saw one.
            self.session_tokens.append(json.loads(response.body())["token"])

    def _on_failed(self, request: Request) -> None:
        self.failed.append((request.method, request.url))

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")


OpenPage = Callable[[str, str], Visit]


@pytest.fixture
def open_page(
    browser: Browser, sdk: bytes, broker: Broker, screenshots: Screenshots
) -> Iterator[OpenPage]:
    contexts = []

    def open_(url: str, label: str) -> Visit:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        network = Network(sdk)
        network.attach(page)
        visit = Visit(label=label, page=page, network=network, shots=screenshots, broker=broker)
        page.on("response", visit._on_response)
        page.on("requestfailed", visit._on_failed)
        page.on("console", visit._on_console)
        page.goto(url)
        return visit

    yield open_
    for context in contexts:
        context.close()

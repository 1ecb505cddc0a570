"""What the browser tests run on: Debian's Chromium, the vendor's SDK from npm, the real
``token-broker serve --sandbox`` in a subprocess, and a browser that reaches nothing but
loopback.

The network is controlled through the Chrome DevTools Protocol (``Fetch``), not
Playwright's ``route()``: while any route is registered, Playwright answers every CORS
preflight itself with a permissive 204, so the broker would never see one and the CORS
checks these tests are about would be Playwright's, not the broker's.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from broker.demo.sdk import (
    PINNED_SDK_INTEGRITY,
    PINNED_SDK_URL,
    SDK_ENTRY,
    SDK_PACKAGE,
    SDK_VERSION,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# npm installs the SDK here (git-ignored): its licence forbids committing it.
SDK_PREFIX = HERE / ".sdk"
SDK_FILE = SDK_PREFIX / "node_modules" / SDK_PACKAGE / SDK_ENTRY
DEFAULT_SCREENSHOTS = HERE / "screenshots"
CHROMIUM = os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium")
# The flags this machine needs (shared notes): without the background-networking ones
# Chromium keeps dialling Google's hosts, which the closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A second fence behind the request interception: names other than loopback do not
    # resolve, so nothing the interception might miss can leave the machine either.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def unavailable(reason: str) -> None:
    """Locally a missing prerequisite skips; in CI (CI=true) it fails, never silently."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def sdk_bytes() -> bytes:
    """The pinned SDK as npm ships it, installed into SDK_PREFIX on first use (by one
    process at a time: pytest-xdist's workers may all ask at once)."""
    SDK_PREFIX.mkdir(exist_ok=True)
    with (SDK_PREFIX / ".install-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not SDK_FILE.is_file():
            _install_sdk()
    manifest = json.loads((SDK_FILE.parent.parent / "package.json").read_text())
    assert manifest["version"] == SDK_VERSION, f"{SDK_PREFIX} holds {manifest['version']}"
    body = SDK_FILE.read_bytes()
    digest = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()
    # The page pins this hash; a mismatch would make every real visitor's browser refuse
    # the CDN's copy, so it fails here rather than in a partner's demo.
    assert digest == PINNED_SDK_INTEGRITY, f"npm's {SDK_ENTRY} is {digest}"
    return body


def _install_sdk() -> None:
    npm = shutil.which("npm")
    if npm is None:
        unavailable(f"npm is needed to install {SDK_PACKAGE}@{SDK_VERSION}")
    command = [
        str(npm), "install", "--prefix", str(SDK_PREFIX), "--no-audit", "--no-fund",
        "--loglevel=error", f"{SDK_PACKAGE}@{SDK_VERSION}",
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - fixed arguments
        command, capture_output=True, text=True, timeout=180, check=False
    )
    if result.returncode != 0 or not SDK_FILE.is_file():
        unavailable(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")


def wait_for_url(
    url: str, process: subprocess.Popen[bytes], output: Callable[[], str], within: float = 30
) -> None:
    deadline = time.monotonic() + within
    while True:
        assert process.poll() is None, f"{process.args!r} exited: {output()}"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,  # noqa: S310 - loopback
        ):
            if response.status == 200:
                return
        assert time.monotonic() < deadline, f"{url} never answered: {output()}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Broker:
    """``token-broker serve --sandbox`` as a user starts it, on free loopback ports."""

    port: int
    sandbox_port: int
    demo_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def demo_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_port}"

    def start(self, session_ttl: int, *extra: str) -> None:
        env = {
            **os.environ,
            "BROKER_SESSIONS_TTL": str(session_ttl),
            "BROKER_SESSIONS_LEEWAY": "0",  # expired means expired, to the second
            "BROKER_LOGGING_FORMAT": "json",
        }
        command = [
            sys.executable, "-m", "broker", "serve", "--sandbox", "--port", str(self.port),
            "--sandbox-port", str(self.sandbox_port), "--demo-port", str(self.demo_port), *extra,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own command
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        for url in (f"{self.url}/readyz", f"{self.demo_url}/"):
            wait_for_url(url, self.process, self.log_text)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def sandbox(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.sandbox_url}{path}", timeout=5) as response:  # noqa: S310
            return json.load(response)

    def preflight(self, origin: str, path: str = "/checkout/invoice") -> int:
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}{path}",
            method="OPTIONS",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                status: int = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        return status


@dataclass
class Network:
    """Every request of one page, judged at the DevTools Protocol's ``Fetch`` stage:
    loopback goes on untouched (preflights included, so the broker answers them), the
    pinned CDN URL gets npm's copy of the SDK, anything else is refused."""

    sdk: bytes
    blocked: list[str] = field(default_factory=list)
    sdk_served: int = 0

    def attach(self, page: Any) -> None:
        cdp = page.context.new_cdp_session(page)

        def paused(event: dict[str, Any]) -> None:
            request_id, url = event["requestId"], event["request"]["url"]
            try:
                if urlsplit(url).hostname in LOOPBACK:
                    cdp.send("Fetch.continueRequest", {"requestId": request_id})
                elif url == PINNED_SDK_URL:
                    self.sdk_served += 1
                    cdp.send("Fetch.fulfillRequest", _javascript(request_id, self.sdk))
                else:
                    self.blocked.append(url)
                    cdp.send(
                        "Fetch.failRequest",
                        {"requestId": request_id, "errorReason": "BlockedByClient"},
                    )
            except Exception as exc:  # playwright's Error: the page closed under a paused request
                if "closed" not in str(exc):
                    raise

        cdp.on("Fetch.requestPaused", paused)
        cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})


def _javascript(request_id: str, body: bytes) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "responseCode": 200,
        "responseHeaders": [
            {"name": "Content-Type", "value": "text/javascript; charset=utf-8"},
            # A cross-origin module script is fetched in CORS mode, as from the real CDN.
            {"name": "Access-Control-Allow-Origin", "value": "*"},
        ],
        "body": base64.b64encode(body).decode(),
    }


class Screenshots:
    """Numbered full-page screenshots of each step, in a folder developers can open."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    @classmethod
    def from_environment(cls) -> Screenshots:
        configured = os.environ.get("BROWSER_SCREENSHOTS")
        folder = Path(configured) if configured else DEFAULT_SCREENSHOTS
        folder.mkdir(parents=True, exist_ok=True)
        if not configured:  # our own git-ignored folder: last run's pictures go
            for old in folder.glob("*.png"):
                old.unlink()
        return cls(folder)

    def take(self, page: Any, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def wait_until(condition: Any, page: Any, *, within: float, what: str) -> None:
    """Poll *condition* while the page's events are being dispatched (a plain sleep
    would stall the sync API's event loop, and with it the request interception)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)

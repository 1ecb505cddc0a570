"""The demo partner site: its aiohttp app, and the companion ``serve --sandbox`` runs.

A partner's site is another origin than the broker, so the demo listens on a port of
its own (127.0.0.1:8082 by default) and the broker allows exactly that origin. The page
is static HTML and JavaScript under ``static/`` plus a little configuration written
into it when served: the broker's URL, the SDK's URL, the customers to pick from.
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from yarl import URL

from broker.config.listen import Address, CannotListen
from broker.config.model import Settings
from broker.demo.backend import (
    MAX_BODY_BYTES,
    SESSION_PATH,
    BrokerLink,
    DemoError,
    checkout_session,
    error_response,
)
from broker.demo.directory import Directory
from broker.demo.sdk import LOCAL_SDK_PATH, SdkSource
from broker.observability.logs import get_logger

log = get_logger("broker.demo")

DEFAULT_PORT: Final = 8082
HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
# Where the backend's call to the broker gives up: the page shows that as a 502.
BROKER_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)
# Addresses a server binds to but a browser cannot open (Chromium refuses 0.0.0.0).
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104


@dataclass(slots=True)
class DemoState:
    link: BrokerLink
    sdk: SdkSource
    directory: Directory
    sandbox_url: str
    session_ttl: int
    site_url: str = ""  # this site's own origin, once it listens
    allowed_origins: tuple[str, ...] = ()  # what the broker allows, once it listens
    http: aiohttp.ClientSession | None = None


demo_state_key = web.AppKey("demo_state", DemoState)


def create_demo_app(state: DemoState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_api_errors])
    app[demo_state_key] = state
    app.cleanup_ctx.append(_http_session)
    app.router.add_get("/", _page)
    app.router.add_post(SESSION_PATH, _session)
    app.router.add_static("/static/", STATIC_DIR)
    if state.sdk.local_file is not None:
        app.router.add_get(LOCAL_SDK_PATH, _local_sdk)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    state = app[demo_state_key]
    async with aiohttp.ClientSession(timeout=BROKER_TIMEOUT) as http:
        state.http = http
        yield
    state.http = None


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The backend answers in JSON whatever goes wrong: a page reads ``message``."""
    try:
        return await handler(request)
    except DemoError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        return error_response(exc.status, "http_error", exc.reason)


async def _session(request: web.Request) -> web.Response:
    state = request.app[demo_state_key]
    if state.http is None:  # pragma: no cover - only between cleanup and close
        raise DemoError(503, "stopping", "The demo site is stopping.")
    response = await checkout_session(request, state.directory, state.link, state.http)
    log.info("demo_session_issued")  # never the token; the broker logs the IDs
    return response


_TEMPLATE = string.Template((HERE / "page.html").read_text(encoding="utf-8"))


async def _page(request: web.Request) -> web.Response:
    state = request.app[demo_state_key]
    imports: dict[str, object] = {"imports": {"@getalternative/partner-sdk": state.sdk.url}}
    if state.sdk.integrity is not None:
        imports["integrity"] = {state.sdk.url: state.sdk.integrity}
    config = {
        "brokerUrl": state.link.broker_url,
        "sandboxUrl": state.sandbox_url,
        "sdkUrl": state.sdk.url,
        "sessionPath": SESSION_PATH,
        "sessionTtl": state.session_ttl,
        "siteUrl": state.site_url,
        "allowedOrigins": state.allowed_origins,
        "customers": state.directory.to_json(),
    }
    html = _TEMPLATE.substitute(importmap=_script_json(imports), config=_script_json(config))
    return web.Response(
        text=html,
        content_type="text/html",
        headers={
            # Rendered per request with the broker's URL: never cache it.
            hdrs.CACHE_CONTROL: "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def _local_sdk(request: web.Request) -> web.FileResponse:
    path = request.app[demo_state_key].sdk.local_file
    assert path is not None  # noqa: S101 - the route exists only with a local file
    return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: "text/javascript"})


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: no "</script>" or "<!--" can end it."""
    text = json.dumps(value, indent=2)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def browser_url(url: str) -> str:
    """*url* as a browser can open it: a wildcard bind address becomes loopback."""
    parsed = URL(url)
    host = _ANY_ADDRESS.get(parsed.raw_host or "", parsed.raw_host)
    return f"{parsed.scheme}://{host}:{parsed.port}"


class DemoSite:
    """The companion of ``serve --sandbox``: the demo site on 127.0.0.1:*port*."""

    def __init__(self, *, port: int = DEFAULT_PORT, sdk: SdkSource | None = None) -> None:
        self._port = port
        self._sdk = sdk or SdkSource.pinned()
        self._runner: web.AppRunner | None = None
        self._state: DemoState | None = None

    async def start(self, settings: Settings, *, sandbox_url: str) -> str:
        self._state = DemoState(
            link=BrokerLink(settings.sessions.api_keys[0]),
            sdk=self._sdk,
            directory=Directory.seeded(),
            sandbox_url=sandbox_url,
            session_ttl=settings.sessions.ttl,
        )
        self._runner = web.AppRunner(create_demo_app(self._state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        try:
            await site.start()
        except OSError as exc:  # a port in use deserves a sentence, not a traceback
            await self._runner.cleanup()
            raise CannotListen(Address("127.0.0.1", self._port, ("--demo-port",)), exc) from None
        # The bound port (``--demo-port 0`` asks the system for a free one).
        url = self._state.site_url = browser_url(site.name)
        log.info("demo_site_started", url=url, sdk_url=self._sdk.url)
        return url

    def broker_started(self, broker_url: str, allowed_origins: Sequence[str]) -> None:
        if self._state is not None:
            self._state.link.broker_url = browser_url(broker_url)
            self._state.allowed_origins = tuple(allowed_origins)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

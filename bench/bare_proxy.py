"""The "bare aiohttp proxy", and the two floors under the broker: reference points.

    python bench/bare_proxy.py --port P --upstream http://127.0.0.1:U [--mode MODE]

``--mode forward`` (the default, "bare aiohttp proxy"): one ClientSession (aiohttp's
defaults, asyncio's loop), every request forwarded with its method, path, query and body
and a fixed ``Authorization`` header; the answer is read whole and sent back with its
status and content type. No token logic, no logging, no metrics.

The floors run as the broker does (uvloop when installed) and measure what no broker
code can go below while it keeps aiohttp's server. The two on aiohttp's server have no
router either (aiohttp's low-level ``web.Server``, one handler): the broker's proxied
requests skip it too (broker.web.routing).

- ``--mode lean`` ("floor: aiohttp server + lean client"): the same forwarding through
  the broker's own lean transport (``broker.upstream.lean``), nothing else;
- ``--mode answer`` ("floor: aiohttp server alone"): the invoice JSON answered at once,
  no upstream call at all;
- ``--mode own`` ("floor: own server + lean client"): the lean forwarding behind a bare
  ``asyncio.Protocol`` server on httptools (llhttp) instead of aiohttp's: what a server of
  the broker's own for the proxy routes could reach at best. Keep-alive GET/POST, a
  Content-Length body, nothing else (no limits, no checks, no chunked bodies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httptools
from aiohttp import web
from yarl import URL

from broker.config.model import UpstreamSettings
from broker.upstream.lean import LeanTransport
from broker.web.server import run_loop

FIXED_BEARER = "Bearer bench-fixed-upstream-token"
INVOICE = (Path(__file__).resolve().parent / "payloads" / "invoice.json").read_bytes()
session_key = web.AppKey("session", aiohttp.ClientSession)
upstream_key = web.AppKey("upstream", str)
LowLevelHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def forward(request: web.Request) -> web.Response:
    body = await request.read() if request.can_read_body else None
    headers = {"Authorization": FIXED_BEARER, "Accept": request.headers.get("Accept", "*/*")}
    url = request.app[upstream_key] + request.raw_path
    async with request.app[session_key].request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        payload = await upstream.read()
        return web.Response(
            body=payload, status=upstream.status, content_type=upstream.content_type
        )


def lean_forwarder(lean: LeanTransport, upstream: str) -> LowLevelHandler:
    async def forward_lean(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else None
        headers = {"Authorization": FIXED_BEARER, "Accept": request.headers.get("Accept", "*/*")}
        url = URL(upstream + request.raw_path, encoded=True)
        answer = await lean.send(request.method, url, headers, body)
        try:
            payload = await answer.read_exactly(answer.content_length or 0)
            content_type = answer.headers.get("Content-Type", "application/octet-stream")
            return web.Response(body=payload, status=answer.status, content_type=content_type)
        finally:
            answer.release()

    return forward_lean


async def answer(_request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=INVOICE, content_type="application/json")


class OwnServer(asyncio.Protocol):
    """One connection of the own-server floor: parse with llhttp, forward each request
    with the lean transport, answer it, in order (wrk sends one request at a time)."""

    def __init__(self, lean: LeanTransport, upstream: str) -> None:
        self._lean = lean
        self._upstream = upstream
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._accept = "*/*"
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"accept":
            self._accept = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("ascii")
        url = URL(self._upstream + self._url.decode("latin-1"), encoded=True)
        body = b"".join(self._body) if self._body else None
        headers = {"Authorization": FIXED_BEARER, "Accept": self._accept}
        self._url, self._accept, self._body = b"", "*/*", []
        asyncio.get_running_loop().create_task(self._forward(method, url, headers, body))

    async def _forward(
        self, method: str, url: URL, headers: dict[str, str], body: bytes | None
    ) -> None:
        upstream = await self._lean.send(method, url, headers, body)
        try:
            payload = await upstream.read_exactly(upstream.content_length or 0)
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
            status = upstream.status
        finally:
            upstream.release()
        if self._transport is not None and not self._transport.is_closing():
            head = (
                f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            )
            self._transport.write(head.encode("latin-1") + payload)


@contextlib.asynccontextmanager
async def lean_client(upstream: str) -> AsyncIterator[LeanTransport]:
    """The broker's lean transport to *upstream*, closed when the floor stops."""
    settings = UpstreamSettings(base_url=URL(upstream), client_id="bench", client_secret="bench")
    lean = LeanTransport(settings)
    try:
        yield lean
    finally:
        with contextlib.suppress(Exception):
            await lean.close()


async def serve_own(upstream: str, port: int) -> None:
    async with lean_client(upstream) as lean:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: OwnServer(lean, upstream), "127.0.0.1", port)
        try:
            await asyncio.Event().wait()  # until SIGTERM ends the process
        finally:
            server.close()


async def client_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[session_key] = session
        yield


async def serve_low_level(handler: LowLevelHandler, port: int) -> None:
    """aiohttp's server with one handler and no router (the lean or answer floor)."""
    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await runner.cleanup()


async def serve_lean(upstream: str, port: int) -> None:
    async with lean_client(upstream) as lean:
        await serve_low_level(lean_forwarder(lean, upstream), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--mode", choices=("forward", "lean", "answer", "own"), default="forward")
    args = parser.parse_args()
    upstream = args.upstream.rstrip("/")
    if args.mode == "own":
        run_loop(serve_own(upstream, args.port))
    elif args.mode == "forward":
        app = web.Application()
        app[upstream_key] = upstream
        app.cleanup_ctx.append(client_session)
        app.router.add_route("*", "/{tail:.*}", forward)
        web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    elif args.mode == "lean":
        run_loop(serve_lean(upstream, args.port))
    else:
        run_loop(serve_low_level(answer, args.port))


if __name__ == "__main__":
    main()

"""The "bare aiohttp proxy": the least an aiohttp gateway does, as a reference point.

    python bench/bare_proxy.py --port P --upstream http://127.0.0.1:U

One ClientSession (aiohttp's defaults), every request forwarded with its method, path,
query and body and a fixed ``Authorization`` header; the answer is read whole and sent
back with its status and content type. No token logic, no logging, no metrics.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

FIXED_BEARER = "Bearer bench-fixed-upstream-token"
session_key = web.AppKey("session", aiohttp.ClientSession)
upstream_key = web.AppKey("upstream", str)


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


async def client_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[session_key] = session
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[upstream_key] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

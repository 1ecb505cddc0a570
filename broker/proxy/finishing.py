"""What every answer the broker sends carries, set in one place just before its headers
go out (errors, streams and the runner's own refusals too): the request's id, the
broker's name as the Server (not aiohttp's, which advertises library versions),
``Referrer-Policy: no-referrer``, and on the public listener the CORS headers."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from broker.headers import REFERRER_POLICY, REQUEST_ID, SERVER, SERVER_NAME
from broker.proxy.cors import CorsPolicy


def finish_headers(
    request: web.BaseRequest,
    headers: CIMultiDict[str],
    request_id: str | None,
    cors: CorsPolicy | None,
) -> None:
    """The last word on an answer's headers. *request_id* is None only where no request
    id exists (the separate metrics listener); *cors* only on the public listener."""
    if request_id is not None:
        headers[REQUEST_ID] = request_id
    headers[SERVER] = SERVER_NAME
    # A page the broker's answers lead to never learns which checkout URL it came from.
    headers[REFERRER_POLICY] = "no-referrer"
    if cors is not None:
        cors.decorate(request, headers)

"""Middlewares, outermost first: ``observe`` records traffic, ``error_responses`` maps errors.

``observe`` is outermost so it logs a request before anything can refuse it and
counts the status the client finally got; ``error_responses`` is innermost so it
sees handler exceptions first and renders them in the upstream's HttpError shape.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broker.sandbox.errors import ApiError
from broker.sandbox.request_log import RecordedRequest
from broker.sandbox.state import sandbox_state_key

# The control plane is the simulator talking about itself, not upstream traffic:
# it is neither logged nor counted, so reading the log does not change it.
CONTROL_PREFIX = "/_sandbox/"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    state = request.app[sandbox_state_key]
    early: web.Response | None = None
    try:
        body = await request.read()
    except web.HTTPException as exc:  # over client_max_size: log it without the body
        body, early = b"", http_error_response(exc)
    state.requests.append(
        RecordedRequest.capture(request.method, request.raw_path, request.raw_headers, body)
    )
    state.stats.record_request(request.method, request.raw_path.partition("?")[0])
    response = await handler(request) if early is None else early
    state.stats.record_status(response.status)
    return response


@web.middleware
async def error_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_response(exc)


def http_error_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (404, 405, 413) in the HttpError shape, keeping ``Allow``."""
    code = re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_")
    headers = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else {}
    return web.json_response(
        {"code": code, "message": f"{exc.reason}."}, status=exc.status, headers=headers
    )

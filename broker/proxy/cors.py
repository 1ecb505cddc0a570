"""CORS for the browser SDK: exact origins, preflights answered here, never forwarded;
and the headers every answer gets just before it goes out."""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from multidict import CIMultiDict

from broker.config.model import CorsSettings

# The SDK sends Authorization and Content-Type on every call (so every call is
# preflighted) and Idempotency-Key on payments (upstream-api.md §3, §8).
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Accept, Accept-Language, Idempotency-Key, X-Request-Id"
)
# The SDK reads Retry-After on a 429; X-Request-Id lets support trace a browser's call.
EXPOSED_HEADERS = "Retry-After, X-Request-Id, WWW-Authenticate"
# Instead of aiohttp's default, which advertises library versions.
SERVER: Final = "token-broker"
_SERVER_FIELD: Final = hdrs.SERVER  # a C static in compiled code


class CorsPolicy:
    def __init__(self, settings: CorsSettings) -> None:
        self._origins = frozenset(settings.allowed_origins)
        self._max_age = str(settings.max_age)

    @property
    def enabled(self) -> bool:
        return bool(self._origins)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self._origins

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        return (
            request.method == hdrs.METH_OPTIONS
            and hdrs.ORIGIN in request.headers
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        )

    def preflight_response(self) -> web.Response:
        # Allow-Origin, Vary and Expose are added to every response by `decorate`.
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: self._max_age,
                hdrs.CACHE_CONTROL: "no-store",
            },
        )

    def decorate(self, request: web.BaseRequest, headers: CIMultiDict[str]) -> None:
        """Add CORS headers to a response about to be sent (errors and streams too)."""
        if not self.enabled:
            return
        vary = headers.get(hdrs.VARY)
        if vary is None:
            headers[hdrs.VARY] = "Origin"
        elif "origin" not in vary.lower():
            headers[hdrs.VARY] = f"{vary}, Origin"
        origin = request.headers.get(hdrs.ORIGIN)
        if self.allows(origin):
            assert origin is not None  # noqa: S101 - narrowed by allows()
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS


def finish_headers(
    request: web.BaseRequest, headers: CIMultiDict[str], cors: CorsPolicy | None
) -> None:
    """Just before an answer's headers go out (errors and streams too): our Server
    header, and on the public listener the CORS headers."""
    headers[_SERVER_FIELD] = SERVER
    if cors is not None:
        cors.decorate(request, headers)

"""CORS for the browser SDK: exact origins, preflights answered here, never forwarded;
and the headers every answer gets just before it goes out."""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import CIMultiDict

from broker.config.model import CorsSettings
from broker.headers import (
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD,
    CACHE_CONTROL,
    ORIGIN,
    VARY,
)
from broker.proxy.answer import Answer

# Exactly what the SDK sends: Authorization, Content-Type and Accept on every call (so
# every call is preflighted) and Idempotency-Key on payments.
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept, Idempotency-Key"
# The SDK reads Retry-After on a 429; X-Request-Id lets support trace a browser's call.
EXPOSED_HEADERS = "Retry-After, X-Request-Id, WWW-Authenticate"


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
            and ORIGIN in request.headers
            and ACCESS_CONTROL_REQUEST_METHOD in request.headers
        )

    def preflight_response(self) -> Answer:
        # Allow-Origin, Vary and Expose are added to every response by `decorate`.
        return Answer(
            b"",
            status=204,
            headers={
                ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                ACCESS_CONTROL_MAX_AGE: self._max_age,
                CACHE_CONTROL: "no-store",
            },
        )

    def decorate(self, request: web.BaseRequest, headers: CIMultiDict[str]) -> None:
        """Add CORS headers to a response about to be sent (errors and streams too)."""
        if not self.enabled:
            return
        vary = headers.get(VARY)
        if vary is None:
            headers[VARY] = "Origin"
        elif "origin" not in vary.lower():
            headers[VARY] = f"{vary}, Origin"
        origin = request.headers.get(ORIGIN)
        if self.allows(origin):
            assert origin is not None  # noqa: S101 - narrowed by allows()
            headers[ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            headers[ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS

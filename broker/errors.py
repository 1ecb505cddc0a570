"""Every failure the broker reports to a client, and nothing else.

BrokerError                      500  internal
├── BadRequest                   400  malformed request, bad IDs, bad JSON, refused path
├── Unauthenticated              401  no, invalid, expired or revoked session token / API key
├── Forbidden                    403  CORS preflight from an origin not allowed
├── NotFound                     404  not the caller's, or not existing (one uniform answer)
├── MethodNotAllowed             405
├── RequestTimeout               408  request body too slow
├── PayloadTooLarge              413
├── UnsupportedMediaType         415  compressed request body
├── TooManyRequests              429  (+ Retry-After)
├── BadGateway                   502  upstream 401 after a fresh token, redirect, garbage,
│   └── TokenMismatch                 or a minted token for the wrong customer/invoice
├── UpstreamFailure              5xx  the upstream's own 5xx on a forwarded call: its status
│                                     kept, its body replaced by this shape
├── ServiceUnavailable           503  (+ Retry-After) upstream unreachable
│   ├── CredentialsRejected           partner OAuth credentials refused (403)
│   └── RateBudgetExhausted           mint budget of rate_limit_per_second used up
└── GatewayTimeout               504  upstream timed out

Messages are fixed sentences chosen here, never ``str()`` of a lower exception: they
reach the browser SDK, which shows ``message`` to people.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class BrokerError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    message: ClassVar[str] = "The gateway failed to handle the request."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None) -> None:
        # ``detail`` is for logs only (it must hold no secret); clients see ``message``.
        super().__init__(detail or self.code)
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(BrokerError):
    status = 400
    code = "bad_request"
    message = "The request is malformed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        if message is not None:
            self.message = message  # type: ignore[misc]  # per-instance client message


class Unauthenticated(BrokerError):
    status = 401
    code = "unauthorized"
    message = "The access token is missing, invalid or expired."


class Forbidden(BrokerError):
    status = 403
    code = "origin_not_allowed"
    message = "This origin may not call the checkout gateway."


class NotFound(BrokerError):
    status = 404
    code = "not_found"
    message = "The requested resource was not found."


class MethodNotAllowed(BrokerError):
    status = 405
    code = "method_not_allowed"
    message = "The method is not allowed for this path."

    def __init__(self, detail: str | None = None, *, allowed: Iterable[str] = ()) -> None:
        super().__init__(detail)
        # The target's methods, for the Allow field every 405 carries (RFC 9110 §15.5.6).
        self.allowed = tuple(sorted(set(allowed)))


class RequestTimeout(BrokerError):
    status = 408
    code = "request_timeout"
    message = "The request body arrived too slowly."


class PayloadTooLarge(BrokerError):
    status = 413
    code = "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(BrokerError):
    status = 415
    code = "unsupported_media_type"
    message = "Compressed request bodies are not accepted."


class TooManyRequests(BrokerError):
    status = 429
    code = "rate_limited"
    message = "Too many requests; retry after the indicated delay."


class BadGateway(BrokerError):
    status = 502
    code = "bad_gateway"
    message = "The payment service sent an invalid answer."


class TokenMismatch(BadGateway):
    code = "token_mismatch"


class UpstreamFailure(BrokerError):
    """The upstream answered a forwarded call with a 5xx. The browser gets that status
    and the broker's own shape: an upstream's error body may name its internals, and
    the SDK shows ``message`` to people. The upstream's ``code`` goes to the log only."""

    code = "upstream_error"
    message = "The payment service failed to handle the request; retry shortly."

    def __init__(self, status: int, *, retry_after: float | None = None) -> None:
        super().__init__(f"upstream answered {status}", retry_after=retry_after)
        self.status = status  # type: ignore[misc]  # the upstream's, per instance


class ServiceUnavailable(BrokerError):
    status = 503
    code = "upstream_unavailable"
    message = "The payment service is unavailable; retry shortly."


class CredentialsRejected(ServiceUnavailable):
    code = "credentials_rejected"


class RateBudgetExhausted(ServiceUnavailable):
    code = "rate_budget_exhausted"


class GatewayTimeout(BrokerError):
    status = 504
    code = "upstream_timeout"
    message = "The payment service did not answer in time."

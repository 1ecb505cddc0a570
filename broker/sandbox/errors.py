"""ApiError: a refusal the sandbox answers in the upstream's HttpError shape.

Handlers raise these; ``middlewares.error_responses`` turns them into JSON once.
No aiohttp import here, so the domain modules can raise them too.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """``{"code", "message"}`` (plus ``validation_errors`` when fields failed)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        validation_errors: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.validation_errors = dict(validation_errors or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.validation_errors:
            body["validation_errors"] = self.validation_errors
        return body


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def validation_failed(errors: Mapping[str, str]) -> ApiError:
    return ApiError(
        400,
        "validation_error",
        "The request has invalid fields",
        validation_errors=errors,
    )


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message)


def rate_limited(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        "Rate limit exceeded; retry later",
        headers={"Retry-After": str(retry_after)},
    )

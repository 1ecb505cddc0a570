"""Reading request bodies: JSON objects, and typed fields with per-field errors.

``Fields`` collects every problem before failing, so one 400 lists them all in
``validation_errors`` (keys are dotted paths such as ``address.city``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import TypeVar

from aiohttp import web

from broker.sandbox.errors import bad_request, validation_failed

_T = TypeVar("_T")


async def read_object(request: web.Request) -> Mapping[str, object]:
    """The body as a JSON object, or 400 ``bad_request``."""
    raw = await request.read()
    try:
        value = json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        raise bad_request("Request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise bad_request("Request body must be a JSON object")
    return value


class Fields:
    """Typed reads from one JSON object; failed reads return a placeholder and record."""

    def __init__(
        self,
        body: Mapping[str, object],
        *,
        prefix: str = "",
        errors: dict[str, str] | None = None,
    ) -> None:
        self._body = body
        self._prefix = prefix
        self.errors: dict[str, str] = {} if errors is None else errors

    def text(
        self,
        name: str,
        *,
        choices: Collection[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "has an invalid format",
    ) -> str:
        value = self._body.get(name)
        if value is None or value == "":
            return self._fail(name, "is required", "")
        if not isinstance(value, str):
            return self._fail(name, "must be a string", "")
        if choices is not None and value not in choices:
            return self._fail(name, f"must be one of: {', '.join(choices)}", "")
        if pattern is not None and pattern.fullmatch(value) is None:
            return self._fail(name, hint, "")
        return value

    def integer(self, name: str, *, low: int, high: int) -> int:
        value = self._body.get(name)
        if value is None:
            return self._fail(name, "is required", 0)
        if isinstance(value, bool) or not isinstance(value, int):
            return self._fail(name, "must be an integer", 0)
        if not low <= value <= high:
            return self._fail(name, f"must be from {low} to {high}", 0)
        return value

    def nested(self, name: str) -> Fields:
        """The object at *name*, sharing this reader's errors."""
        value = self._body.get(name)
        prefix = f"{self._prefix}{name}."
        if not isinstance(value, dict):
            self._fail(name, "is required" if value is None else "must be an object", 0)
            # One error for the missing object, not one per field it should hold.
            return Fields({}, prefix=prefix)
        return Fields(value, prefix=prefix, errors=self.errors)

    def check(self) -> None:
        if self.errors:
            raise validation_failed(self.errors)

    def _fail(self, name: str, message: str, placeholder: _T) -> _T:
        self.errors[f"{self._prefix}{name}"] = message
        return placeholder

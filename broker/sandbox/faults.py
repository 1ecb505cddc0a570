"""Faults: the misbehaviour switched on through ``/_sandbox/faults``, and the stalls.

A fault patch is validated as a whole before anything changes, so a bad field
never leaves half a patch applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from broker.sandbox.errors import validation_failed
from broker.sandbox.identifiers import is_valid_id


@dataclass(slots=True, kw_only=True)
class Faults:
    latency_ms: float = 0.0  # added to every checkout call
    mint_latency_ms: float = 0.0  # added to every checkout-auth/init call
    stall_customers: tuple[str, ...] = ()  # their mints hang for stall_seconds
    stall_seconds: float = 30.0
    error_rate: float = 0.0  # share of checkout calls answered 500
    rate_limit: bool = False  # every partner-credentialed call gets 429
    retry_after: int = 1
    token_endpoint_down: bool = False  # /oauth/token answers 503
    reject_credentials: bool = False  # 403 on /oauth/token, 401 for partner tokens
    unauthorized_next: int = 0  # the next N checkout calls get 401
    unauthorized_always: bool = False
    redirect: bool = False  # checkout calls answer 302 elsewhere

    def to_json(self) -> dict[str, object]:
        body = dataclasses.asdict(self)
        body["stall_customers"] = list(self.stall_customers)
        return body

    def claim_unauthorized(self) -> bool:
        """Whether the ``unauthorized_*`` faults take this checkout call (using one up)."""
        if self.unauthorized_always:
            return True
        if self.unauthorized_next > 0:
            self.unauthorized_next -= 1
            return True
        return False

    def apply(self, patch: Mapping[str, object]) -> None:
        """Merge *patch* in, or raise ApiError (400) naming every bad field."""
        errors: dict[str, str] = {}
        changes: dict[str, object] = {}
        for name, value in patch.items():
            parser = _PARSERS.get(name)
            if parser is None:
                errors[name] = "unknown fault"
                continue
            try:
                changes[name] = parser(value)
            except InvalidFault as exc:
                errors[name] = str(exc)
        if errors:
            raise validation_failed(errors)
        for name, value in changes.items():
            setattr(self, name, value)


class InvalidFault(Exception):
    """A fault value of the wrong type or range; the message names the rule."""


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidFault("must be a non-negative number")
    return float(value)


def _probability(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFault("must be a number from 0 to 1")
    if not 0 <= value <= 1:
        raise InvalidFault("must be a number from 0 to 1")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFault("must be a non-negative integer")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidFault("must be true or false")
    return value


def _customer_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(is_valid_id(item) for item in value):
        raise InvalidFault("must be a list of customer IDs")
    return tuple(value)


_PARSERS: dict[str, Callable[[object], object]] = {
    "latency_ms": _duration,
    "mint_latency_ms": _duration,
    "stall_customers": _customer_ids,
    "stall_seconds": _duration,
    "error_rate": _probability,
    "rate_limit": _flag,
    "retry_after": _count,
    "token_endpoint_down": _flag,
    "reject_credentials": _flag,
    "unauthorized_next": _count,
    "unauthorized_always": _flag,
    "redirect": _flag,
}


class Stalls:
    """Hangs that end on their own, or all at once on reset and on shutdown."""

    def __init__(self) -> None:
        self._release = asyncio.Event()

    async def hold(self, seconds: float) -> None:
        release = self._release
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await release.wait()

    def release_all(self) -> None:
        # A fresh event for later stalls; the waiters of the old one all wake.
        self._release.set()
        self._release = asyncio.Event()

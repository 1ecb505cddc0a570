"""The route allowlist: which (method, path) pairs the browser may reach upstream.

By default exactly the calls the vendor's SDK makes, under ``/checkout/`` and
``/checkout/v1/`` (``broker/web/openapi.yaml`` lists them); configured pairs add to them.
Matching runs on the raw path segments that will be forwarded, so what is checked is
what is forwarded.
"""

from __future__ import annotations

from broker.credentials import ID_PATTERN
from broker.errors import MethodNotAllowed, NotFound

SDK_ROUTES = (
    "GET preferences/theme",
    "GET invoice",
    "GET invoice/pdf-link",
    "GET payment-methods",
    "GET card-form/credentials",
    "POST payment-methods/card",
    "POST payment-methods/bank",
    "POST payment-methods/{id}/cvv",
    "POST payments",
    "POST address/autocomplete",
    "POST address/details",
)
SDK_PREFIXES = ("/checkout/", "/checkout/v1/")
# The methods the proxy forwards at all, whatever the allowlist names.
PROXIED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
PLACEHOLDER = "{id}"

Template = tuple[str, ...]


def _split(path: str) -> Template:
    return tuple(path.strip("/").split("/"))


class RouteTable:
    """Allowed (method, path template) pairs; ``{id}`` matches one opaque ID segment."""

    def __init__(self, extra: tuple[str, ...] = (), *, allow_any: bool = False) -> None:
        self.allow_any = allow_any
        self._routes: dict[Template, set[str]] = {}
        self._templated: list[tuple[Template, set[str]]] = []
        self._templated_lengths: frozenset[int] = frozenset()
        for prefix in SDK_PREFIXES:
            for pair in SDK_ROUTES:
                method, path = pair.split(" ", 1)
                self._add(method, prefix + path)
        for pair in extra:
            method, path = pair.split(" ", 1)
            self._add(method, path)

    def _add(self, method: str, path: str) -> None:
        template = _split(path)
        self._routes.setdefault(template, set()).add(method)
        if PLACEHOLDER in template:
            self._templated = [(t, m) for t, m in self._routes.items() if PLACEHOLDER in t]
            self._templated_lengths = frozenset(len(t) for t, _ in self._templated)

    def check(self, method: str, raw_path: str) -> None:
        """Raise NotFound for an unknown path, MethodNotAllowed for a wrong method."""
        if self.allow_any:
            return
        methods = self._methods_for(_split(raw_path))
        if methods is None:
            raise NotFound("path not on the route allowlist")
        if method not in methods:
            raise MethodNotAllowed(
                f"{method} not allowed on this path", allowed=methods & PROXIED_METHODS
            )

    def methods(self, raw_path: str) -> frozenset[str] | None:
        """The methods allowed on *raw_path* (None: any, the allowlist being off)."""
        if self.allow_any:
            return None
        return frozenset(self._methods_for(_split(raw_path)) or ())

    def _methods_for(self, segments: Template) -> set[str] | None:
        exact = self._routes.get(segments)  # exact paths: one dict lookup
        if len(segments) not in self._templated_lengths:
            return exact  # no {id} template this long: the usual case, no copy
        methods = set(exact or ())
        for template, allowed in self._templated:
            if len(template) == len(segments) and all(
                want == got or (want == PLACEHOLDER and ID_PATTERN.fullmatch(got))
                for want, got in zip(template, segments, strict=True)
            ):
                methods |= allowed
        return methods or None

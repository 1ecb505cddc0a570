"""Tracing's seam: what the request path calls when tracing is on, and whether it is on.

Off (the default: no ``[otel]`` extra, or no exporter named by the ``OTEL_*``
variables) there is no tracing object at all. Collaborators hold ``None`` and test it
where a span would start, the front door wraps no route in a server span, no log line
looks for a span, and opentelemetry is never imported: the request path costs what it
cost before tracing existed. On, ``broker.observability.otel`` implements ``Tracing``.

Attributes are chosen at each call site from a fixed vocabulary (ids, outcomes, status
codes, route templates, the path without its query); nothing here copies a header, a
token or an exception message into a span.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Final, Protocol

from broker.observability.logs import get_logger

log = get_logger("broker.observability.tracing")

AttributeValue = str | bool | int | float

# Span kinds, named without importing opentelemetry.
INTERNAL: Final = "internal"
CLIENT: Final = "client"

_TRUE: Final = frozenset({"true", "1", "yes"})


class Span(Protocol):
    def set(self, name: str, value: AttributeValue) -> None: ...

    def fail(self, error_type: str) -> None:
        """Mark the span failed (status ERROR) with ``error.type`` *error_type*."""


class SpanScope(Protocol):
    """A span current for the duration of a ``with`` block; an exception leaving the
    block marks it failed with ``error.type`` (a BrokerError's code, else the
    exception's class name), never with the exception's message."""

    def __enter__(self) -> Span: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class Tracing(Protocol):
    def span(self, name: str, kind: str = INTERNAL) -> SpanScope:
        """A child of the current span (a root span when there is none)."""

    def server_span(self, name: str, headers: Mapping[str, str]) -> SpanScope:
        """A request's span: the caller's W3C ``traceparent`` in *headers* is its parent
        when ``tracing.trust_incoming``, else only a link. It stays current after the
        block, for the ``request_finished`` line written once the answer is sent."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add ``traceparent`` (and ``tracestate``) for the current span to *headers*."""

    def close(self) -> None:
        """Export what is buffered and stop (blocking: run it off the event loop)."""


def tracing_requested(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; empty means tracing is off.

    An OTLP endpoint alone asks for ``otlp``. Without an endpoint or an exporter named,
    tracing stays off (the SDK's default, OTLP to localhost:4318, would send every span
    to whatever listens there); ``OTEL_SDK_DISABLED=true`` or ``none`` turn it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        exporters = [name.strip() for name in named.split(",") if name.strip()]
        return [] if "none" in exporters else exporters
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return ["otlp"]
    return []


def open_tracing(environ: Mapping[str, str], *, trust_incoming: bool) -> Tracing | None:
    """Tracing as the environment configures it, or None when it is off (or cannot be
    on: the extra missing, or no exporter this build can use, each logged once)."""
    exporters = tracing_requested(environ)
    if not exporters:
        return None
    try:
        from broker.observability import otel  # noqa: PLC0415 - only when tracing is on
    except ImportError as exc:
        log.warning(
            "tracing_unavailable",
            reason="the [otel] extra is not installed (pip install 'token-broker[otel]')",
            missing=exc.name,
        )
        return None
    return otel.from_environment(environ, exporters, trust_incoming=trust_incoming)


class _NoSpan:
    """What ``maybe_span`` gives when tracing is off: for paths that are not per request
    (mints, OAuth fetches, Redis waits), where a ``None`` test at each step would only
    clutter the code."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def set(self, name: str, value: AttributeValue) -> None:
        return None

    def fail(self, error_type: str) -> None:
        return None


NO_SPAN: Final = _NoSpan()


def maybe_span(tracing: Tracing | None, name: str, kind: str = INTERNAL) -> SpanScope:
    return NO_SPAN if tracing is None else tracing.span(name, kind)


def maybe_inject(tracing: Tracing | None, headers: MutableMapping[str, str]) -> None:
    if tracing is not None:
        tracing.inject(headers)

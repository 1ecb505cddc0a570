"""``Tracing`` on OpenTelemetry's SDK: imported only when tracing is on (``[otel]`` extra).

The provider is the broker's own (never the global one, which a library could also
set): the resource and the sampler from the standard variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``/``_ARG``), spans batched
(``OTEL_BSP_*``) to OTLP over HTTP/protobuf (``OTEL_EXPORTER_OTLP_*``) or the console.
Propagation is W3C Trace Context alone, in and out.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker import __version__
from broker.observability.logs import get_logger, log_trace_ids
from broker.observability.tracing import CLIENT, AttributeValue

log = get_logger("broker.observability.otel")

SERVICE = "token-broker"
_KINDS = {CLIENT: SpanKind.CLIENT}
_UNTRUSTED: Mapping[str, AttributeValue] = {"broker.link": "untrusted_traceparent"}
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


class _Span:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, name: str, value: AttributeValue) -> None:
        self._span.set_attribute(name, value)

    def fail(self, error_type: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, error_type))


class _Scope:
    __slots__ = ("_keep", "_kind", "_links", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        kind: SpanKind,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        *,
        keep_current: bool = False,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._parent = parent
        self._links = links
        self._keep = keep_current
        self._span: trace.Span | None = None
        self._token: object = None

    def __enter__(self) -> _Span:
        span = self._tracer.start_span(
            self._name,
            context=self._parent,
            kind=self._kind,
            links=self._links,
            # An exception's message may quote what it refused; only its type is kept.
            record_exception=False,
            set_status_on_exception=False,
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return _Span(span)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if exc is not None:
            code = getattr(exc, "code", None)
            error_type = code if isinstance(code, str) else type(exc).__name__
            span.set_attribute("error.type", error_type)
            reason = getattr(exc, "reason", None)  # AuthFailure: why a 401
            if isinstance(reason, str):
                span.set_attribute("broker.auth.reason", reason)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()
        if not self._keep:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # attach's own token


class OtelTracing:
    def __init__(
        self, provider: TracerProvider, *, trust_incoming: bool, owns_provider: bool = False
    ) -> None:
        self._provider = provider
        self._owns_provider = owns_provider
        self._tracer = provider.get_tracer(SERVICE, __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._trust_incoming = trust_incoming
        log_trace_ids(current_trace_ids)

    def span(self, name: str, kind: str = "internal") -> _Scope:
        return _Scope(self._tracer, name, _KINDS.get(kind, SpanKind.INTERNAL))

    def server_span(self, name: str, headers: Mapping[str, str]) -> _Scope:
        incoming = self._propagator.extract(headers)
        if self._trust_incoming:
            return _Scope(self._tracer, name, SpanKind.SERVER, incoming, keep_current=True)
        remote = trace.get_current_span(incoming).get_span_context()
        links = [Link(remote, _UNTRUSTED)] if remote.is_valid else []
        # An empty context: a root span, whatever the caller claims (the sampler
        # decides; a caller cannot force its requests to be sampled).
        return _Scope(self._tracer, name, SpanKind.SERVER, Context(), links, keep_current=True)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        self._propagator.inject(headers)

    def close(self) -> None:
        if self._owns_provider:
            self._provider.shutdown()
        else:
            self._provider.force_flush()


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span when it is sampled (a trace that was not
    exported would lead nowhere), for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def from_environment(
    environ: Mapping[str, str], exporters: Sequence[str], *, trust_incoming: bool
) -> OtelTracing | None:
    """The SDK configured by the ``OTEL_*`` variables; None (logged) when none of the
    exporters they name can be used."""
    chosen: list[SpanExporter] = []
    for name in exporters:
        exporter = _exporter(name, environ)
        if exporter is not None:
            chosen.append(exporter)
    if not chosen:
        return None
    provider = TracerProvider(resource=_resource())
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing_enabled", exporters=list(exporters), trust_incoming=trust_incoming)
    return OtelTracing(provider, trust_incoming=trust_incoming, owns_provider=True)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("tracing_exporter_unsupported", exporter=name, supported=["otlp", "console"])
        return None
    protocol = next((environ[v] for v in _PROTOCOLS if environ.get(v)), "http/protobuf")
    if protocol.strip().lower() != "http/protobuf":
        log.warning(
            "tracing_exporter_unsupported",
            exporter=name,
            protocol=protocol,
            supported=["http/protobuf"],
        )
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


def _resource() -> Resource:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; without
    # either naming the service it says "unknown_service", so name it ourselves.
    detected = Resource.create({SERVICE_VERSION: __version__})
    name = str(detected.attributes.get(SERVICE_NAME, ""))
    if name.startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: SERVICE}))
    return detected

"""A transport wrapped for tracing: each forwarded call in a client span, its
``traceparent`` added to what is sent. Used only when tracing is on, around either
transport, so that neither transport's code changes for it."""

from __future__ import annotations

from collections.abc import Mapping

from yarl import URL

from broker.observability.exchange import logged_path
from broker.observability.tracing import CLIENT, Tracing
from broker.upstream.transport import UpstreamResponse, UpstreamTransport


class TracedTransport:
    def __init__(self, transport: UpstreamTransport, name: str, tracing: Tracing) -> None:
        self._transport = transport
        self._name = name
        self._tracing = tracing

    async def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        holder: str = "",
    ) -> UpstreamResponse:
        with self._tracing.span(f"{method} proxy", CLIENT) as span:
            span.set("http.request.method", method)
            span.set("server.address", url.host or "")
            if url.port is not None:
                span.set("server.port", url.port)
            span.set("url.path", logged_path(url.raw_path))
            span.set("upstream.transport", self._name)
            span.set("broker.upstream.kind", "proxy")
            sent = dict(headers)
            self._tracing.inject(sent)  # this span's traceparent
            response = await self._transport.send(method, url, sent, body, holder)
            span.set("http.response.status_code", response.status)
            if response.status >= 500:
                span.fail(str(response.status))
            return response

    async def close(self) -> None:
        await self._transport.close()

"""One proxied call upstream on a caller's behalf: the checkout JWT looked up (minted
once when needed), the call sent, and an upstream 401 recovered from once."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from broker.credentials import TokenKey, customer_of, key_ids
from broker.errors import BadGateway
from broker.observability.exchange import Exchange
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.proxy.relay import upstream_request_headers
from broker.tokens.checkout import CheckoutTokens, Lookup
from broker.upstream.calls import UpstreamCall
from broker.upstream.transport import (
    IDEMPOTENT_METHODS,
    UpstreamReset,
    UpstreamResponse,
    UpstreamTransport,
)

log = get_logger("broker.proxy.forwarder")


class Forwarder:
    """Owns the policy between a verified session and the upstream's answer: which
    token goes out, and what a 401 means (one fresh token, one retry; a second 401 is
    the upstream refusing a token it just minted: 502). With *tracing*, each token
    lookup is a span (the forwarded call's own span and its traceparent come from the
    transport: ``broker.upstream.traced``)."""

    def __init__(
        self,
        tokens: CheckoutTokens,
        transport: UpstreamTransport,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self._tokens = tokens
        self._transport = transport
        self._metrics = metrics
        self._tracing = tracing

    async def forward(
        self,
        request: web.Request,
        exchange: Exchange,
        key: TokenKey,
        url: URL,
        body: bytes | None,
    ) -> UpstreamResponse:
        """The upstream's answer (the caller releases it), with *key*'s checkout JWT."""
        # A cached token without a span is the usual case; all else goes by _lookup.
        lookup = self._tokens.cached(key) if self._tracing is None else None
        if lookup is None:
            lookup = await self._lookup(key, None)
        exchange.token_outcome = lookup.outcome
        holder = customer_of(key)
        upstream = await self._send(request, exchange, url, body, lookup.token.value, holder)
        if upstream.status != 401:
            return upstream
        upstream.release()
        lookup = await self._lookup(key, lookup)
        upstream = await self._send(request, exchange, url, body, lookup.token.value, holder)
        result = "failed" if upstream.status == 401 else "recovered"
        self._metrics.upstream_unauthorized.labels(
            partner=self._metrics.partner, result=result
        ).inc()
        log.info("upstream_unauthorized_" + result, customer_id=holder)
        if upstream.status == 401:
            upstream.release()
            raise BadGateway("upstream refused a freshly minted token")
        return upstream

    async def _lookup(self, key: TokenKey, rejected: Lookup | None) -> Lookup:
        """*key*'s token (minted if need be), or a fresh one replacing *rejected*."""
        if self._tracing is None:
            return await self._find(key, rejected)
        with self._tracing.span("broker.token.lookup") as span:
            customer_id, invoice_id = key_ids(key)
            span.set("broker.customer_id", customer_id)
            span.set("broker.invoice_id", invoice_id)
            if rejected is not None:
                span.set("broker.token.replacing_rejected", True)
            lookup = await self._find(key, rejected)
            span.set("broker.token.outcome", lookup.outcome)
            return lookup

    async def _find(self, key: TokenKey, rejected: Lookup | None) -> Lookup:
        tokens = self._tokens
        if rejected is not None:
            return await tokens.replace_rejected(key, rejected.token)
        return tokens.cached(key) or await tokens.wait_for_mint(key)

    async def _send(
        self,
        request: web.Request,
        exchange: Exchange,
        url: URL,
        body: bytes | None,
        bearer: str,
        holder: str,
    ) -> UpstreamResponse:
        headers = upstream_request_headers(
            request.headers, bearer=bearer, request_id=exchange.request_id
        )
        method = request.method
        with UpstreamCall(self._metrics, "proxy") as record:
            try:
                response = await self._transport.send(method, url, headers, body, holder)
            except UpstreamReset:
                # Reset before a whole answer head: a GET may go once more, on a new
                # connection (the dead one is gone); a POST may have been acted on.
                if method not in IDEMPOTENT_METHODS:
                    raise
                log.info("upstream_reset_retried", method=method)
                response = await self._transport.send(method, url, headers, body, holder)
            record.status = str(response.status)
        exchange.upstream_status = response.status
        exchange.upstream_ms = record.elapsed * 1000  # rounded when logged
        return response

"""Prometheus metrics, built on a registry the caller owns (never at import time).

Labels are bounded by construction: routes by template, statuses by code, upstream
calls by kind, partners by the configured ids. No customer, invoice, path or token ever
becomes a label value. What a partner account does (its calls, tokens, budget) is
counted through ``for_partner(id)``, which labels it ``partner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker import __version__
from broker.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

# Proxy latency sits in the low milliseconds; mints and slow upstreams reach seconds.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
REMAINING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)

TIER_PARTNER = "partner"
TIER_CHECKOUT = "checkout"


@dataclass(frozen=True, slots=True)
class Metrics:
    # Loop* types: touched by every request, lock-free (see loop_metrics).
    requests: LoopCounter
    request_duration: LoopHistogram
    upstream_requests: LoopCounter
    upstream_duration: LoopHistogram
    token_lookups: LoopCounter
    mint_duration: Histogram
    token_remaining: LoopHistogram
    upstream_unauthorized: Counter
    cache_entries: Gauge
    sessions_issued: Counter
    auth_failures: Counter
    inflight: LoopGauge
    build_info: Gauge
    ready: Gauge
    rate_budget_exhausted: Counter
    credentials_rejected: Gauge
    redis_degraded: Gauge
    upstream_clock_skew: Gauge
    event_loop_tasks: Gauge
    credential_fallbacks: Counter
    # The partner account whose work this view counts (``for_partner``).
    partner: str = "default"
    # Bound children by label values: labels() costs a dict build per call, and every
    # request would pay it several times. The label sets are bounded.
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        def loop_counter(name: str, doc: str, labels: tuple[str, ...]) -> LoopCounter:
            return LoopCounter(name, doc, labels, registry)

        def loop_histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> LoopHistogram:
            return LoopHistogram(name, doc, labels, registry, buckets)

        metrics = cls(
            requests=loop_counter(
                "broker_requests_total", "Requests answered.", ("route", "method", "status")
            ),
            request_duration=loop_histogram(
                "broker_request_duration_seconds",
                "Time to answer a request.",
                ("route",),
                LATENCY_BUCKETS,
            ),
            upstream_requests=loop_counter(
                "broker_upstream_requests_total",
                "Calls to the upstream API by kind and status (or error class).",
                ("partner", "kind", "status"),
            ),
            upstream_duration=loop_histogram(
                "broker_upstream_request_duration_seconds",
                "Upstream call time until response headers.",
                ("partner", "kind"),
                LATENCY_BUCKETS,
            ),
            token_lookups=loop_counter(
                "broker_token_lookups_total",
                "Token lookups by tier and outcome.",
                ("partner", "tier", "outcome"),
            ),
            mint_duration=histogram(
                "broker_token_mint_duration_seconds",
                "Time to obtain a new token, rate-budget wait included.",
                ("partner", "tier"),
                LATENCY_BUCKETS,
            ),
            token_remaining=loop_histogram(
                "broker_token_remaining_seconds",
                "Lifetime left on a token when it is used.",
                ("partner", "tier"),
                REMAINING_BUCKETS,
            ),
            upstream_unauthorized=counter(
                "broker_upstream_unauthorized_total",
                "Upstream 401s on forwarded calls, by whether a fresh token recovered.",
                ("partner", "result"),
            ),
            cache_entries=gauge(
                "broker_token_cache_entries", "Checkout JWTs cached.", ("partner",)
            ),
            sessions_issued=counter(
                "broker_sessions_issued_total", "Session tokens issued.", ("partner", "auth")
            ),
            auth_failures=counter(
                "broker_auth_failures_total",
                "Refused API keys and session tokens, by reason.",
                ("reason",),
            ),
            inflight=LoopGauge("broker_inflight_requests", "Requests being handled.", registry),
            build_info=gauge("broker_build_info", "Build information.", ("version",)),
            ready=gauge("broker_ready", "1 while /readyz answers 200."),
            rate_budget_exhausted=counter(
                "broker_rate_budget_exhausted_total",
                "Partner calls refused because the per-second budget was used up.",
                ("partner",),
            ),
            credentials_rejected=gauge(
                "broker_partner_credentials_rejected",
                "1 while the upstream rejects the partner OAuth credentials.",
                ("partner",),
            ),
            redis_degraded=gauge(
                "broker_redis_degraded",
                "1 while the shared Redis cache is unreachable and this process works alone.",
            ),
            upstream_clock_skew=gauge(
                "broker_upstream_clock_skew_seconds",
                "The upstream's clock minus this process's, as measured at the last mint.",
                ("partner",),
            ),
            credential_fallbacks=counter(
                "broker_partner_credential_fallbacks_total",
                "OAuth fetches that fell back to the other configured credential.",
                ("partner",),
            ),
            event_loop_tasks=gauge(
                "broker_event_loop_tasks",
                "Tasks alive on the event loop (requests, renewals, probes): flat when idle.",
            ),
        )
        metrics.build_info.labels(version=__version__).set(1)
        return metrics

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        key = ("request", route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.request_duration.labels(route=route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def for_partner(self, partner: str) -> Metrics:
        """This registry's metrics, counting for *partner* (a configured id)."""
        return dataclasses.replace(self, partner=partner, _children={})

    def forget_partner(self, partner: str) -> None:
        """Drop the series of a partner that is no longer configured."""
        for metric in (self.cache_entries, self.credentials_rejected, self.upstream_clock_skew):
            with contextlib.suppress(KeyError):
                metric.remove(partner)

    def upstream_done(self, kind: str, status: str, seconds: float) -> None:
        key = ("upstream", kind, status)
        children = self._children.get(key)
        if children is None:
            partner = self.partner
            children = self._children[key] = (
                self.upstream_requests.labels(partner=partner, kind=kind, status=status)
                if status
                else None,
                self.upstream_duration.labels(partner=partner, kind=kind),
            )
        if children[0] is not None:
            children[0].inc()
        children[1].observe(seconds)

    def track_cache_size(self, size: Callable[[], float]) -> None:
        self.cache_entries.labels(partner=self.partner).set_function(size)

    def track_loop_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count *loop*'s tasks at each scrape: a leak of tasks shows as growth here."""
        self.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

"""What operators see: structured logs, Prometheus metrics, event-loop metrics, and the
per-request record behind the canonical ``request_finished`` line."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from broker.observability.exchange import ACCESS_LOGGER, FinishedRequest, logged_path
from broker.observability.logs import (
    configure_logging,
    flush_logs,
    get_logger,
    log_request,
    request_id_var,
    reset_logging,
)

if TYPE_CHECKING:
    from broker.observability.exchange import UNMATCHED, Exchange
    from broker.observability.metrics import TIER_CHECKOUT, TIER_PARTNER, Metrics
    from broker.observability.tracing import (
        CLIENT,
        Span,
        Tracing,
        maybe_inject,
        maybe_span,
        open_tracing,
    )

__all__ = [
    "ACCESS_LOGGER",
    "CLIENT",
    "TIER_CHECKOUT",
    "TIER_PARTNER",
    "UNMATCHED",
    "Exchange",
    "FinishedRequest",
    "Metrics",
    "Span",
    "Tracing",
    "configure_logging",
    "flush_logs",
    "get_logger",
    "log_request",
    "logged_path",
    "maybe_inject",
    "maybe_span",
    "open_tracing",
    "request_id_var",
    "reset_logging",
]

# Imported on first use: the commands that only log (keygen, check-config) import
# broker.observability.logs and must not pay for prometheus_client and aiohttp.
_LAZY = {
    "open_tracing": "broker.observability.tracing",
    "maybe_span": "broker.observability.tracing",
    "maybe_inject": "broker.observability.tracing",
    "Tracing": "broker.observability.tracing",
    "Span": "broker.observability.tracing",
    "CLIENT": "broker.observability.tracing",
    "UNMATCHED": "broker.observability.exchange",
    "Exchange": "broker.observability.exchange",
    "TIER_CHECKOUT": "broker.observability.metrics",
    "TIER_PARTNER": "broker.observability.metrics",
    "Metrics": "broker.observability.metrics",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

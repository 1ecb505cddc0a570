"""The lock-free metric types expose exactly what prometheus_client's own would."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from broker.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Exactly on a bound, between bounds, below the first, beyond the last.
OBSERVATIONS = (0.0005, 0.001, 0.002, 0.01, 0.1, 0.5, 3.0, 1.0)


def _exposition(registry: CollectorRegistry) -> str:
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 <time>", text)


def _fill(registry: CollectorRegistry, *, loop: bool) -> None:
    """The same metrics and updates, through prometheus_client's types or ours."""
    if loop:
        counter: Any = LoopCounter("x_requests_total", "Requests.", ("route", "status"), registry)
        histogram: Any = LoopHistogram("x_seconds", "Time.", ("route",), registry, BUCKETS)
        gauge: Any = LoopGauge("x_inflight", "In flight.", registry)
    else:
        counter = Counter("x_requests_total", "Requests.", ("route", "status"), registry=registry)
        histogram = Histogram("x_seconds", "Time.", ("route",), registry=registry, buckets=BUCKETS)
        gauge = Gauge("x_inflight", "In flight.", registry=registry)
    counter.labels(route="/a", status="200").inc()
    counter.labels(route="/a", status="200").inc(2)
    counter.labels(route="/b", status="404").inc()
    for value in OBSERVATIONS:
        histogram.labels(route="/a").observe(value)
    histogram.labels(route="/b").observe(0.2)
    gauge.inc()
    gauge.inc()
    gauge.dec()


def test_exposition_is_identical_to_prometheus_client() -> None:
    reference, loop = CollectorRegistry(), CollectorRegistry()
    _fill(reference, loop=False)
    _fill(loop, loop=True)
    assert _exposition(loop) == _exposition(reference)


def test_values_read_back_through_the_registry() -> None:
    registry = CollectorRegistry()
    _fill(registry, loop=True)
    sample = registry.get_sample_value
    assert sample("x_requests_total", {"route": "/a", "status": "200"}) == 3
    assert sample("x_seconds_bucket", {"route": "/a", "le": "0.001"}) == 2  # "<=" bound
    assert sample("x_seconds_bucket", {"route": "/a", "le": "+Inf"}) == len(OBSERVATIONS)
    assert sample("x_seconds_sum", {"route": "/a"}) == pytest.approx(sum(OBSERVATIONS))
    assert sample("x_inflight") == 1


def test_misuse_is_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("y_total", "Y.", ("kind",), registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels(kind="a", extra="b")
    with pytest.raises(ValueError, match="labels"):
        counter.inc()  # labelled: a child must be chosen
    with pytest.raises(ValueError, match="only go up"):
        counter.labels(kind="a").inc(-1)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("y_total", "Y again.", ("kind",), registry)

"""A replica waiting on another's mint lease shows that wait as a span of its own."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.observability.otel import OtelTracing
from tests.redis.conftest import MakeBackend
from tests.redis.test_redis_coordinator import KEY, Minter


async def test_waiting_for_another_replicas_mint_is_a_lease_wait_span(
    make_backend: MakeBackend,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider, trust_incoming=False)
    holder = await make_backend(tracing=tracing)
    waiter = await make_backend(tracing=tracing)
    slow, fast = Minter(delay=0.4), Minter()
    minting = asyncio.ensure_future(holder.coordinator.obtain(KEY, slow, current=None))
    # Once the holder mints, it has the lease (however slowly a loaded machine got there).
    await asyncio.wait_for(slow.called.wait(), timeout=10)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        adopted = await waiter.coordinator.obtain(KEY, fast, current=None)
    held = await minting
    assert (slow.calls, fast.calls) == (1, 0)
    assert adopted.value == held.value
    [wait] = [s for s in exporter.get_finished_spans() if s.name == "broker.redis.lease_wait"]
    assert wait.parent is not None
    assert wait.parent.span_id == request.get_span_context().span_id
    assert dict(wait.attributes or {}) == {
        "broker.redis.slot": "checkout",
        "broker.redis.lease_outcome": "adopted",
    }
    assert wait.end_time is not None
    assert wait.start_time is not None
    assert (wait.end_time - wait.start_time) / 1e9 >= 0.2
    assert held.value not in str(dict(wait.attributes or {}))

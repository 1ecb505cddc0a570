"""Tracing: the spans a request makes, what crosses to the upstream, and that no span
ever carries a credential. Spans are read back with the SDK's own InMemorySpanExporter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from broker.config.model import Settings, TracingSettings
from broker.errors import UpstreamFailure
from broker.observability.otel import OtelTracing
from broker.observability.tracing import open_tracing, tracing_requested
from broker.web.app import create_app, runner_options
from tests.conftest import BrokerClient, BrokerTestServer, LogCapture, new_session
from tests.helpers import API_KEY, CLIENT_SECRET, Sandbox, auth, make_settings
from tests.security.conftest import (
    hardened_settings,
    hs256_mode,
    idp_claims,
    init_with_idp,
    sign_idp,
)

MakeTraced = Callable[..., Any]
REMOTE_TRACE = "0af7651916cd43dd8448eb211c80319c"
REMOTE_PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_PARENT}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def make_traced(
    aiohttp_client: AiohttpClient, exporter: InMemorySpanExporter, transport: str
) -> MakeTraced:
    """A broker whose spans end up in *exporter* (every span sampled)."""

    async def make(
        settings: Settings,
        *,
        trust_incoming: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> BrokerClient:
        settings = replace(settings, upstream=replace(settings.upstream, transport=transport))
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing = OtelTracing(provider, trust_incoming=trust_incoming)
        app = create_app(settings, registry=registry or CollectorRegistry(), tracing=tracing)
        options = runner_options(settings)
        del options["handler_cancellation"]
        server = BrokerTestServer(app)
        await server.start_server(**options)
        return cast(BrokerClient, await aiohttp_client(server))

    return make


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def request_spans(exporter: InMemorySpanExporter, server: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if trace_id(s) == trace_id(server)]


@pytest.mark.forwarding
async def test_a_proxied_request_is_one_trace_from_the_front_door_to_the_upstream(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter, transport: str
) -> None:
    broker = await make_traced(make_settings(sandbox.url))
    token = await new_session(broker)
    exporter.clear()

    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status == 200
    spans = exporter.get_finished_spans()
    server = one(spans, "GET /checkout/{tail}")
    assert server.kind == SpanKind.SERVER
    assert server.parent is None
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/checkout/{tail}"
    assert attributes["url.path"] == "/checkout/invoice"
    assert attributes["broker.customer_id"] == "cus_alice"
    assert attributes["broker.token.outcome"] == "minted"
    assert attributes["broker.request_id"] == response.headers["X-Request-Id"]

    trace = request_spans(exporter, server)
    verify = one(trace, "broker.session.verify")
    lookup = one(trace, "broker.token.lookup")
    assert parent_of(verify) == parent_of(lookup) == span_id(server)
    assert dict(lookup.attributes or {})["broker.token.outcome"] == "minted"
    mint = one(trace, "broker.token.mint")
    assert parent_of(mint) == span_id(lookup)  # the mint task started inside the lookup
    mint_call = one(trace, "POST mint")
    assert mint_call.kind == SpanKind.CLIENT
    assert parent_of(mint_call) == span_id(mint)
    assert dict(mint_call.attributes or {})["http.response.status_code"] == 200
    proxied = by_name(trace, "GET proxy")
    assert len(proxied) == 1
    assert proxied[0].kind == SpanKind.CLIENT
    proxy_attributes = dict(proxied[0].attributes or {})
    assert proxy_attributes["upstream.transport"] == transport
    assert proxy_attributes["http.response.status_code"] == 200
    assert parent_of(proxied[0]) == span_id(server)

    # The upstream got the proxy span's own traceparent, and the mint call its own.
    seen = await sandbox.requests()
    headers = {r["raw_path"]: {k.lower(): v for k, v in r["headers"]} for r in seen}
    assert headers["/checkout/invoice"]["traceparent"] == traceparent_of(proxied[0])
    assert headers["/v1/checkout-auth/init"]["traceparent"] == traceparent_of(mint_call)

    exporter.clear()
    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status == 200
    spans = exporter.get_finished_spans()
    assert dict(one(spans, "broker.token.lookup").attributes or {})["broker.token.outcome"] == (
        "hit"
    )
    assert not by_name(spans, "broker.token.mint")


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_an_untrusted_traceparent_is_a_link_and_a_trusted_one_the_parent(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter
) -> None:
    for trust, expect_parent in ((False, False), (True, True)):
        exporter.clear()
        broker = await make_traced(make_settings(sandbox.url), trust_incoming=trust)
        response = await broker.get("/healthz", headers={"traceparent": TRACEPARENT})
        assert response.status == 200
        server = one(exporter.get_finished_spans(), "GET /healthz")
        remote_trace, remote_span = int(REMOTE_TRACE, 16), int(REMOTE_PARENT, 16)
        if expect_parent:
            assert trace_id(server) == remote_trace
            assert parent_of(server) == remote_span
            assert not server.links
        else:
            assert trace_id(server) != remote_trace
            assert server.parent is None
            [link] = server.links
            assert (link.context.trace_id, link.context.span_id) == (remote_trace, remote_span)


@pytest.mark.forwarding
async def test_log_lines_inside_a_span_carry_its_ids(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter, logs: LogCapture
) -> None:
    broker = await make_traced(make_settings(sandbox.url))
    token = await new_session(broker)
    exporter.clear()
    response = await broker.get("/checkout/invoice", headers=auth(token))
    assert response.status == 200
    spans = exporter.get_finished_spans()
    server, mint = one(spans, "GET /checkout/{tail}"), one(spans, "broker.token.mint")
    request_id = response.headers["X-Request-Id"]
    [finished] = [e for e in logs.events("request_finished") if e["request_id"] == request_id]
    assert finished["trace_id"] == f"{trace_id(server):032x}"
    assert finished["span_id"] == f"{span_id(server):016x}"
    [minted] = [e for e in logs.events("checkout_token_minted") if e["customer_id"] == "cus_alice"]
    assert minted["trace_id"] == f"{trace_id(server):032x}"
    assert minted["span_id"] == f"{span_id(mint):016x}"


def secrets_in_spans(spans: Sequence[ReadableSpan], secrets: Sequence[str]) -> list[str]:
    """Every place a secret shows in a span: its name, attributes, links, events."""
    found = []
    for span in spans:
        texts = [span.name, json.dumps(dict(span.attributes or {}), default=str)]
        texts += [json.dumps(dict(link.attributes or {}), default=str) for link in span.links]
        texts += [e.name + json.dumps(dict(e.attributes or {})) for e in span.events]
        texts.append(str(span.status.description))
        texts.append(json.dumps(dict(span.resource.attributes), default=str))
        for secret in secrets:
            if any(secret in text for text in texts):
                found.append(f"{span.name}: {secret[:12]}...")
    return found


@pytest.mark.forwarding
async def test_no_span_carries_a_token_a_secret_or_a_query(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter
) -> None:
    broker = await make_traced(make_settings(sandbox.url))
    tokens = [await new_session(broker, f"cus_s{i}", f"inv_s{i}") for i in range(3)]
    query_secret = "qs-canary-4f1d9c0b7e"
    for token in tokens:
        for path in ("/checkout/invoice", f"/checkout/invoice?cursor={query_secret}"):
            response = await broker.get(path, headers=auth(token))
            assert response.status == 200
    forged = tokens[0][:-4] + "AAAA"
    for headers in (auth(forged), auth("not-a-jwt"), {"Authorization": f"Basic {API_KEY}"}):
        assert (await broker.get("/checkout/invoice", headers=headers)).status == 401
    assert (await broker.post("/v1/checkout-auth/init", json={}, headers=auth("bad"))).status in {
        400,
        401,
    }
    # Everything in play: session tokens, the API key, the client secret, and what the
    # upstream saw as bearers (the checkout JWTs and the partner OAuth token).
    seen = await sandbox.requests()
    bearers = {
        value.partition(" ")[2]
        for request in seen
        for name, value in request["headers"]
        if name.lower() == "authorization"
    }
    assert len(bearers) >= 4
    secrets = [*tokens, forged, API_KEY, CLIENT_SECRET, query_secret, *bearers]
    spans = exporter.get_finished_spans()
    assert len(spans) > 20
    assert secrets_in_spans(spans, secrets) == []


def test_tracing_is_off_unless_an_exporter_is_configured() -> None:
    assert tracing_requested({}) == []
    assert tracing_requested({"OTEL_SERVICE_NAME": "x"}) == []
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == ["otlp"]
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert (
        tracing_requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
        == []
    )
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    assert tracing_requested(disabled) == []
    assert open_tracing({}, trust_incoming=False) is None
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert open_tracing(grpc, trust_incoming=False) is None
    assert TracingSettings().trust_incoming is False


def test_with_tracing_off_opentelemetry_is_never_imported() -> None:
    """A broker built and serving one request with tracing off: no opentelemetry
    module is loaded (its import alone would cost every worker memory and start-up)."""
    program = """
import asyncio, os, sys
from aiohttp.test_utils import TestClient, TestServer
from broker.observability.tracing import open_tracing
from broker.web.app import create_app
from tests.helpers import make_settings
assert open_tracing(os.environ, trust_incoming=False) is None
async def main():
    app = create_app(make_settings("http://127.0.0.1:9"))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/checkout/invoice")).status == 401
asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    result = subprocess.run(  # noqa: S603 - our own program
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


async def test_the_app_closes_its_tracing(aiohttp_client: AiohttpClient, sandbox: Sandbox) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider, trust_incoming=False, owns_provider=True)
    app = create_app(make_settings(sandbox.url), tracing=tracing)
    client = await aiohttp_client(app)
    assert (await client.get("/healthz")).status == 200
    await client.close()
    # Shut down with the app: a span started now is never exported.
    with provider.get_tracer("t").start_as_current_span("late"):
        pass
    names = {s.name for s in exporter.get_finished_spans()}
    assert "GET /healthz" in names
    assert "late" not in names


@pytest.mark.forwarding
async def test_failures_mark_their_spans_and_refusals_do_not(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter
) -> None:
    broker = await make_traced(make_settings(sandbox.url))
    token = await new_session(broker)
    assert (await broker.get("/checkout/invoice", headers=auth(token))).status == 200
    await sandbox.faults(error_rate=1.0)  # every checkout call answered 500
    exporter.clear()
    assert (await broker.get("/checkout/invoice", headers=auth(token))).status == 500
    spans = exporter.get_finished_spans()
    proxied = one(spans, "GET proxy")
    assert proxied.status.status_code == StatusCode.ERROR
    assert dict(proxied.attributes or {})["error.type"] == "500"
    server = one(spans, "GET /checkout/{tail}")
    assert server.status.status_code == StatusCode.ERROR  # passed through, still a 5xx

    fresh = await new_session(broker, "cus_bob", "inv_bob_1")
    await sandbox.faults(error_rate=0.0, reject_credentials=True)
    exporter.clear()
    response = await broker.get("/checkout/invoice", headers=auth(fresh))
    assert response.status == 503
    spans = exporter.get_finished_spans()
    server = by_name(spans, "GET /checkout/{tail}")[-1]
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "credentials_rejected"
    assert one(spans, "broker.token.mint").status.status_code == StatusCode.ERROR
    oauth = by_name(spans, "POST oauth")
    assert oauth
    assert all(s.status.status_code == StatusCode.ERROR for s in oauth)

    exporter.clear()
    assert (await broker.get("/checkout/invoice")).status == 401
    refused = one(exporter.get_finished_spans(), "GET /checkout/{tail}")
    assert refused.status.status_code == StatusCode.UNSET
    attributes = dict(refused.attributes or {})
    assert attributes["broker.refusal.reason"] == "missing"
    verify = one(exporter.get_finished_spans(), "broker.session.verify")
    assert dict(verify.attributes or {})["broker.auth.reason"] == "missing"


# With tracing on, the proxy path takes its spans' branches: the answers the browser
# gets must be the very ones it gets with tracing off.
@pytest.mark.forwarding
async def test_with_tracing_on_an_upstream_5xx_body_is_still_the_brokers_own(
    make_traced: MakeTraced, sandbox: Sandbox, logs: LogCapture
) -> None:
    broker = await make_traced(make_settings(sandbox.url))
    token = await new_session(broker)
    await sandbox.faults(error_rate=1.0)  # the sandbox's own 500 body names its failure
    response = await broker.get(
        "/checkout/invoice", headers={**auth(token), "X-Request-Id": "traced-500"}
    )
    assert response.status == 500
    text = await response.text()
    assert json.loads(text) == {"code": UpstreamFailure.code, "message": UpstreamFailure.message}
    assert "Simulated" not in text
    [line] = [e for e in logs.events("request_finished") if e["request_id"] == "traced-500"]
    assert line["upstream_error_code"] == "internal_server_error"


@pytest.mark.forwarding
async def test_with_tracing_on_an_upstream_401_is_replayed_once_and_counted(
    make_traced: MakeTraced, sandbox: Sandbox
) -> None:
    registry = CollectorRegistry()
    broker = await make_traced(make_settings(sandbox.url), registry=registry)
    session = await new_session(broker)
    assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200
    await sandbox.post(
        "/_sandbox/revoke", {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    )
    assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200

    await sandbox.faults(unauthorized_always=True)
    response = await broker.get("/checkout/invoice", headers=auth(session))
    assert response.status == 502
    assert (await response.json())["code"] == "bad_gateway"
    counted = {
        sample.labels["result"]: sample.value
        for metric in registry.collect()
        if metric.name == "broker_upstream_unauthorized"
        for sample in metric.samples
        if sample.name == "broker_upstream_unauthorized_total"
    }
    assert counted == {"recovered": 1.0, "failed": 1.0}


async def test_an_idp_caller_session_traces_its_verification_and_the_ownership_check(
    make_traced: MakeTraced, sandbox: Sandbox, exporter: InMemorySpanExporter
) -> None:
    broker = await make_traced(hardened_settings(sandbox.url, jwt_auth=hs256_mode()))
    idp_token = sign_idp("hs256", idp_claims("cus_alice"))
    exporter.clear()
    response = await init_with_idp(broker, idp_token, "inv_alice_1")
    assert response.status == 200
    session_token = (await response.json())["token"]
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/checkout-auth/init")
    verify = one(spans, "broker.identity.verify")
    ownership = one(spans, "GET ownership")
    assert parent_of(verify) == span_id(server)
    assert ownership.kind == SpanKind.CLIENT
    assert trace_id(ownership) == trace_id(server)
    assert dict(ownership.attributes or {})["url.path"] == "/invoices/inv_alice_1"
    assert secrets_in_spans(spans, [idp_token, session_token]) == []

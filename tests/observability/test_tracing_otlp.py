"""Tracing as an operator turns it on: ``token-broker serve --sandbox`` with ``OTEL_*``
variables, exporting OTLP/HTTP to a receiver this test owns (protobuf decoded with
opentelemetry-proto), the spans checked and scanned for every credential in play."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from pytest_aiohttp import AiohttpServer

from tests.cli.commands import BROKER, alice_session, wait_ready
from tests.helpers import auth

SANDBOX_API_KEY = "sandbox-demo-api-key"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, with its resource."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.content_types: set[str] = set()

    async def traces(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": _attributes(span.attributes),
                            "links": [
                                {"trace_id": link.trace_id.hex(), **_attributes(link.attributes)}
                                for link in span.links
                            ],
                            "status": span.status.message,
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                        }
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [span for span in self.spans if span["name"] == name]


def _attributes(pairs: Any) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> tuple[Receiver, str]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("")).rstrip("/")


@pytest.mark.slow
@pytest.mark.forwarding
async def test_serve_sandbox_exports_its_spans_over_otlp_without_a_credential(
    receiver: tuple[Receiver, str],
    unused_tcp_port_factory: Callable[[], int],
    transport: str,
) -> None:
    collector, endpoint = receiver
    port, sandbox_port, demo_port = (unused_tcp_port_factory() for _ in range(3))
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "broker-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "BROKER_UPSTREAM_TRANSPORT": transport,
        "BROKER_LOGGING_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        *BROKER, "serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
        "--demo-port", str(demo_port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    query_secret = "cursor-canary-5e2a77"
    try:
        await wait_ready(url, process)
        async with aiohttp.ClientSession() as http:
            token = await alice_session(http, url, SANDBOX_API_KEY)
            for path in ("/checkout/invoice", f"/checkout/invoice?cursor={query_secret}"):
                headers = {**auth(token), "traceparent": INCOMING}
                async with http.get(url + path, headers=headers) as response:
                    assert response.status == 200
            async with http.get(url + "/checkout/invoice", headers=auth("eyJ.bad.x")) as refused:
                assert refused.status == 401
            sandbox = f"http://127.0.0.1:{sandbox_port}/_sandbox/requests"
            async with http.get(sandbox) as response:
                seen = await response.json()
        process.send_signal(signal.SIGTERM)  # the batch left is exported on the way out
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()[-2000:]

    assert collector.content_types == {"application/x-protobuf"}
    assert {span["resource"]["service.name"] for span in collector.spans} == {"broker-under-test"}
    servers = collector.named("GET /checkout/{tail}")
    assert len(servers) == 3
    for server in servers[:2]:
        # An untrusted caller's traceparent (the default) is a link, never the parent.
        assert server["trace_id"] != INCOMING_TRACE
        assert server["parent"] == ""
        assert [link["trace_id"] for link in server["links"]] == [INCOMING_TRACE]
        assert server["attributes"]["http.response.status_code"] == 200
    assert servers[2]["attributes"]["http.response.status_code"] == 401
    assert servers[2]["attributes"]["error.type"] == "unauthorized"
    proxied = collector.named("GET proxy")
    assert len(proxied) == 2
    assert {span["attributes"]["upstream.transport"] for span in proxied} == {transport}
    assert {span["trace_id"] for span in proxied} == {s["trace_id"] for s in servers[:2]}
    for name in ("broker.session.verify", "broker.token.lookup", "broker.token.mint", "POST mint"):
        assert collector.named(name), name
    # What the upstream received carries the broker's traceparent, never the caller's.
    checkout = [r for r in seen if r["raw_path"].startswith("/checkout/")]
    parents = [v for r in checkout for k, v in r["headers"] if k.lower() == "traceparent"]
    assert len(parents) == 2
    assert all(INCOMING_TRACE not in parent for parent in parents)
    assert {p.split("-")[2] for p in parents} == {span["span_id"] for span in proxied}

    bearers = {
        value.partition(" ")[2]
        for request in seen
        for name, value in request["headers"]
        if name.lower() == "authorization"
    }
    assert len(bearers) >= 2  # the partner OAuth token (Basic credentials) and checkout JWT(s)
    secrets = [token, SANDBOX_API_KEY, "eyJ.bad.x", query_secret, *bearers]
    exported = json.dumps(collector.spans)
    assert [secret[:12] for secret in secrets if secret in exported] == []
    # The lines the broker logged inside those spans name them.
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("event") == "request_finished"]
    traced = {line.get("trace_id") for line in finished if line.get("route") == "/checkout/{tail}"}
    assert traced == {span["trace_id"] for span in servers}

"""Logs, metrics and health tell the truth, and never leak a credential doing it."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from broker import __version__
from broker.observability.logs import IsoTimestamp
from broker.web.app import create_metrics_app
from tests.conftest import BrokerClient, LogCapture, MakeBroker, MakeSandbox, new_session
from tests.helpers import API_KEY, METRICS_AUTH, METRICS_TOKEN, Sandbox, auth, make_settings

DESIGN_METRICS = {
    "broker_requests_total": "counter",
    "broker_request_duration_seconds": "histogram",
    "broker_upstream_requests_total": "counter",
    "broker_upstream_request_duration_seconds": "histogram",
    "broker_token_lookups_total": "counter",
    "broker_token_mint_duration_seconds": "histogram",
    "broker_token_remaining_seconds": "histogram",
    "broker_upstream_unauthorized_total": "counter",
    "broker_token_cache_entries": "gauge",
    "broker_sessions_issued_total": "counter",
    "broker_auth_failures_total": "counter",
    "broker_inflight_requests": "gauge",
    "broker_build_info": "gauge",
}


async def scrape(client: BrokerClient) -> dict[str, Any]:
    response = await client.get("/metrics", headers=METRICS_AUTH)
    assert response.status == 200
    return {f.name: f for f in text_string_to_metric_families(await response.text())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family_name = name.removesuffix("_total")
    for sample_ in families[family_name].samples:
        if sample_.name == name and all(sample_.labels.get(k) == v for k, v in labels.items()):
            return float(sample_.value)
    return 0.0


@pytest.mark.forwarding
async def test_metrics_hold_every_design_name_with_exact_counts(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    sessions = [await new_session(broker, f"cus_m{i}", f"inv_m{i}") for i in range(5)]

    async def call(n: int) -> None:
        response = await broker.get("/checkout/invoice", headers=auth(sessions[n % 5]))
        assert response.status == 200

    await asyncio.gather(*(call(n) for n in range(40)))
    await broker.get("/checkout/invoice")  # one auth failure
    families = await scrape(broker)

    for name, kind in DESIGN_METRICS.items():
        family = families[name.removesuffix("_total")]
        assert family.type == kind, name
    assert sample(families, "broker_token_lookups_total", tier="checkout", outcome="minted") == 5
    coalesced = sample(families, "broker_token_lookups_total", tier="checkout", outcome="coalesced")
    hits = sample(families, "broker_token_lookups_total", tier="checkout", outcome="hit")
    assert coalesced + hits == 35
    assert (await sandbox.stats())["tokens_issued"] == 5
    assert sample(families, "broker_upstream_requests_total", kind="mint", status="200") == 5
    assert sample(families, "broker_upstream_requests_total", kind="proxy", status="200") == 40
    assert sample(families, "broker_sessions_issued_total", auth="api_key") == 5
    assert sample(families, "broker_auth_failures_total", reason="missing") == 1
    assert (
        sample(
            families, "broker_requests_total", route="/checkout/{tail}", method="GET", status="200"
        )
        == 40
    )
    assert sample(families, "broker_token_cache_entries") == 5
    assert sample(families, "broker_build_info", version=__version__) == 1


async def test_paths_and_methods_no_route_takes_get_the_brokers_answer(
    broker: BrokerClient,
) -> None:
    """The catch-all route: error shape, request id, headers and metrics as for any
    other refusal, never aiohttp's plain-text 404/405."""
    answers = {
        ("GET", "/nowhere"): (404, "not_found"),
        ("POST", "/healthz"): (405, "method_not_allowed"),
        ("DELETE", "/v1/checkout-auth/init"): (405, "method_not_allowed"),
    }
    for (method, path), (status, code) in answers.items():
        response = await broker.request(method, path)
        assert response.status == status, (method, path)
        assert (await response.json())["code"] == code
        assert response.headers["X-Request-Id"]
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Server"] == "token-broker"
    families = await scrape(broker)
    for method, _path in answers:
        labels = {"route": "unmatched", "method": method}
        assert sample(families, "broker_requests_total", **labels) == 1, method


def series_count(text: str) -> int:
    return sum(len(f.samples) for f in text_string_to_metric_families(text))


async def test_the_metrics_listener_serves_metrics_and_names_no_aiohttp_version(
    aiohttp_client: AiohttpClient,
) -> None:
    """``[metrics] port``: its own listener, without the front door that names the server."""
    registry = CollectorRegistry()
    Counter("probe", "A counter only this test has.", registry=registry).inc()
    client = await aiohttp_client(create_metrics_app(registry))
    response = await client.get("/metrics")
    assert response.status == 200
    assert "probe_total 1.0" in await response.text()
    missing = await client.get("/checkout/invoice")
    assert missing.status == 404
    for answer in (response, missing):
        assert answer.headers["Server"] == "token-broker"


@pytest.mark.forwarding
@pytest.mark.parametrize(
    "customers",
    [
        100,
        # The same property at ten times the traffic (about 6 s a transport); the hundred
        # above holds it in the inner loop: any label that grows with customers shows there.
        pytest.param(1000, marks=pytest.mark.slow),
    ],
)
async def test_new_customers_add_no_time_series(
    make_broker: MakeBroker, sandbox: Sandbox, customers: int
) -> None:
    client = await make_broker(make_settings(sandbox.url))

    async def traffic(customers: range) -> None:
        for i in customers:
            session = await new_session(client, f"cus_s{i}", f"inv_s{i}")
            response = await client.get(f"/checkout/invoice?q={i}", headers=auth(session))
            assert response.status == 200

    await traffic(range(10))
    await client.get(
        "/metrics", headers=METRICS_AUTH
    )  # the scrape itself is a route with its own series
    before = series_count(await (await client.get("/metrics", headers=METRICS_AUTH)).text())
    await traffic(range(10, customers))
    after_text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    assert series_count(after_text) == before
    assert "cus_s" not in after_text
    assert "inv_s" not in after_text


CANARY_SECRET = "canary-client-secret-7f3a"
CANARY_COOKIE = "canary-cookie-9b1c"
CANARY_QUERY = "canary-query-4d2e"


@pytest.mark.forwarding
async def test_canaries_never_reach_logs_or_metrics(
    make_sandbox: MakeSandbox, make_broker: MakeBroker, logs: LogCapture
) -> None:
    sandbox = await make_sandbox(client_secret=CANARY_SECRET)
    settings = make_settings(sandbox.url, read_timeout=0.3)
    settings = replace(settings, upstream=replace(settings.upstream, client_secret=CANARY_SECRET))
    client = await make_broker(settings)
    session = await new_session(client)
    browser = {**auth(session), "Cookie": f"sid={CANARY_COOKIE}"}
    url = f"/checkout/invoice?secret={CANARY_QUERY}"

    assert (await client.get(url, headers=browser)).status == 200  # success
    assert (await client.get(url, headers={**browser, **auth(session + "x")})).status == 401
    await sandbox.faults(unauthorized_always=True)
    assert (await client.get(url, headers=browser)).status == 502
    await sandbox.faults(unauthorized_always=False, latency_ms=1000)
    assert (await client.get(url, headers=browser)).status == 504
    await sandbox.faults(latency_ms=0)
    malformed = await client.post(
        "/v1/checkout-auth/init", data=b"{" + CANARY_QUERY.encode(), headers=auth(API_KEY)
    )
    assert malformed.status == 400
    # A request aiohttp's parser refuses, with credentials in its header bytes.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {session}\r\n"
        f"Cookie: {CANARY_COOKIE}\r\nBad\x01Header: {CANARY_QUERY}\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    assert b" 400 " in status_line
    writer.close()
    await asyncio.sleep(0.1)

    text = logs.text
    metrics_text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    checkout_jwts = [
        r["headers"] for r in await sandbox.requests() if r["raw_path"].startswith("/checkout")
    ]
    assert checkout_jwts
    for canary in (CANARY_SECRET, CANARY_COOKIE, CANARY_QUERY, session, "Bearer ey"):
        assert canary not in text, canary
        assert canary not in metrics_text, canary
    for headers in checkout_jwts:
        for name, value in headers:
            if name.lower() == "authorization":
                assert value.split()[-1] not in text
    finished = logs.events("request_finished")
    assert {e["status"] for e in finished} >= {200, 401, 502, 504, 400}


@pytest.mark.forwarding
async def test_request_finished_carries_the_fields_and_the_request_id(
    broker: BrokerClient, sandbox: Sandbox, logs: LogCapture
) -> None:
    session = await new_session(broker)
    response = await broker.get(
        "/checkout/invoice?x=1", headers={**auth(session), "X-Request-Id": "req-abc.123"}
    )
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "req-abc.123"
    (seen,) = await sandbox.checkout_requests()
    upstream_ids = [v for n, v in seen["headers"] if n.lower() == "x-request-id"]
    assert upstream_ids == ["req-abc.123"]
    await asyncio.sleep(0.05)
    (line,) = [e for e in logs.events("request_finished") if e.get("request_id") == "req-abc.123"]
    assert line["method"] == "GET"
    assert line["route"] == "/checkout/{tail}"
    assert line["path"] == "/checkout/invoice"
    assert line["status"] == 200
    assert line["customer_id"] == "cus_alice"
    assert line["invoice_id"] == "inv_alice_1"
    assert line["upstream_status"] == 200
    assert line["token_outcome"] == "minted"
    assert line["duration_ms"] > 0
    assert line["upstream_ms"] > 0
    minted = logs.events("checkout_token_minted")
    assert minted[0]["request_id"] == "req-abc.123"
    assert len(minted[0]["token_fp"]) == 12


@pytest.mark.parametrize("incoming", ["x" * 200, "bad id with spaces", "é"])
async def test_insane_request_ids_are_replaced(broker: BrokerClient, incoming: str) -> None:
    response = await broker.get("/healthz", headers={"X-Request-Id": incoming})
    assert response.headers["X-Request-Id"] != incoming
    assert len(response.headers["X-Request-Id"]) == 32


async def test_readiness_follows_the_partner_credentials(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    await sandbox.faults(reject_credentials=True)
    client = await make_broker(make_settings(sandbox.url))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready"
    assert "partner credentials rejected" in body["reasons"][0]
    families = await scrape(client)
    assert sample(families, "broker_partner_credentials_rejected") == 1

    await sandbox.faults(reject_credentials=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        response = await client.get("/readyz")
        if response.status == 200:
            break
        await asyncio.sleep(0.2)
    assert response.status == 200
    assert (await client.get("/healthz")).status == 200


async def test_rejected_credentials_give_503_not_a_retry_storm(
    broker: BrokerClient, sandbox: Sandbox
) -> None:
    await sandbox.faults(reject_credentials=True)
    session = await new_session(broker, "cus_new", "inv_new")
    statuses = []
    for _ in range(5):
        response = await broker.get("/checkout/invoice", headers=auth(session))
        statuses.append(response.status)
        assert "Retry-After" in response.headers
    assert set(statuses) == {503}
    stats = await sandbox.stats()
    # The first failure starts a backoff: no token-endpoint call per request.
    assert stats["requests_per_path"].get("POST /oauth/token", 0) <= 3


def test_timestamps_are_utc_iso_with_microseconds() -> None:
    moments = iter([1_795_000_000.25, 1_795_000_000.5, 1_795_000_001.0])
    stamp = IsoTimestamp(clock=lambda: next(moments))
    stamps = [stamp(None, "info", {})["timestamp"] for _ in range(3)]
    expected = [
        datetime.datetime.fromtimestamp(t, tz=datetime.UTC).isoformat().replace("+00:00", "Z")
        for t in (1_795_000_000.25, 1_795_000_000.5)
    ]
    assert stamps[:2] == expected  # what structlog's TimeStamper(fmt="iso", utc=True) writes
    assert stamps[2] == "2026-11-18T11:06:41.000000Z"  # the next second; zero micros kept


@settings(max_examples=300, deadline=None)
@given(moment=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_a_timestamp_is_its_second_and_its_microseconds_cut_not_rounded(moment: float) -> None:
    stamp = IsoTimestamp(clock=lambda: moment)(None, "info", {})["timestamp"]
    second = datetime.datetime.fromtimestamp(int(moment), tz=datetime.UTC)
    assert stamp == f"{second:%Y-%m-%dT%H:%M:%S}.{int((moment - int(moment)) * 1e6):06d}Z"


async def test_metrics_are_not_served_on_the_public_port_without_a_bearer_token(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    """The decision for /metrics: never unauthenticated where browsers (and scanners)
    reach the broker. Without metrics.bearer_token the main port does not serve it."""
    client = await make_broker(make_settings(sandbox.url, metrics_bearer_token=""))
    for headers in ({}, METRICS_AUTH):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 404
        assert "broker_requests_total" not in await response.text()


async def test_with_a_bearer_token_metrics_answer_that_bearer_only(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    for headers in (
        {},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        auth(API_KEY),  # a partner's key is no scrape credential
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert "broker_" not in await response.text()
    assert (await client.get("/metrics", headers=METRICS_AUTH)).status == 200
    families = await scrape(client)
    assert sample(families, "broker_auth_failures_total", reason="unknown_metrics_token") == 5


async def test_the_metrics_listener_takes_the_bearer_token_too(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_metrics_app(CollectorRegistry(), METRICS_TOKEN))
    refused = await client.get("/metrics")
    assert refused.status == 401
    assert set(await refused.json()) == {"code", "message"}
    assert (await client.get("/metrics", headers=METRICS_AUTH)).status == 200


async def test_the_event_loop_tasks_gauge_counts_the_loops_tasks(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    before = sample(await scrape(client), "broker_event_loop_tasks")
    # At least the scheduler and the scrape itself; a handful, not hundreds.
    assert 2 <= before < 50
    # Twenty more tasks on the loop show as twenty more; gone, they are gone again.
    stop = asyncio.Event()
    extra = [asyncio.ensure_future(stop.wait()) for _ in range(20)]
    during = sample(await scrape(client), "broker_event_loop_tasks")
    stop.set()
    await asyncio.gather(*extra)
    after = sample(await scrape(client), "broker_event_loop_tasks")
    assert before + 15 <= during <= before + 25
    assert after <= during - 15

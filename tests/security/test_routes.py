"""The route allowlist and path hygiene: only the SDK's (method, path) pairs are
forwarded, unknown paths are 404, wrong methods 405, confusing paths 400, all before
any upstream call; what was checked is byte for byte what is forwarded.
"""

from __future__ import annotations

import pytest

from broker.config.model import RouteSettings
from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import Sandbox
from tests.security.conftest import (
    hardened_settings,
    http_request,
    send_to,
    upstream_traffic,
)

# What is checked must be what is forwarded, whichever client carries it upstream.
pytestmark = pytest.mark.forwarding

SDK_PAIRS = [
    ("GET", "preferences/theme"),
    ("GET", "invoice"),
    ("GET", "invoice/pdf-link"),
    ("GET", "payment-methods"),
    ("GET", "card-form/credentials"),
    ("POST", "payment-methods/card"),
    ("POST", "payment-methods/bank"),
    ("POST", "payment-methods/pm_123/cvv"),
    ("POST", "payments"),
    ("POST", "address/autocomplete"),
    ("POST", "address/details"),
]
NOT_LISTED = [
    "/checkout/invoices",
    "/checkout/customers/cus_alice",
    "/checkout/v1/v1/invoice",
    "/checkout/v2/invoice",
    "/checkout/invoice/extra",
    "/checkout/payments/pay_1",
    "/checkout/payment-methods/pm_1",
    "/checkout/payment-methods/pm_1/cvv/x",
    "/checkout/fees/inv_1",
    "/checkout/oauth/token",
    "/checkout/v1/checkout-auth/init",
    "/checkout/INVOICE",
    "/checkout/%69nvoice",
]
WRONG_METHOD = [
    ("POST", "/checkout/invoice"),
    ("DELETE", "/checkout/payment-methods"),
    ("PUT", "/checkout/payment-methods/card"),
    ("GET", "/checkout/payments"),
    ("PATCH", "/checkout/v1/payments"),
    ("GET", "/checkout/payment-methods/pm_1/cvv"),
    ("DELETE", "/checkout/v1/invoice/pdf-link"),
    ("POST", "/checkout/v1/preferences/theme"),
]
REFUSED_TARGETS = [
    "/checkout/../oauth/token",
    "/checkout/./invoice",
    "/checkout/v1/../invoice",
    "/checkout/invoice/..",
    "/checkout/%2e%2e/oauth/token",
    "/checkout/%2E%2E/oauth/token",
    "/checkout/.%2e/oauth/token",
    "/checkout/%2e/invoice",
    "/checkout/invoice%2fpdf-link",
    "/checkout/invoice%2Fpdf-link",
    "/checkout/..%2f..%2foauth/token",
    "/checkout/invoice%5cpdf-link",
    "/checkout/invoice\\pdf-link",
    "/checkout//invoice",
    "/checkout/v1//invoice",
    "/checkout/invoice/",
    "/checkout/invoice;x=1",
    "/checkout/payment-methods/pm_1;/cvv",
    "/checkout/invoice%00",
    "/checkout/invoice%0a",
    "/checkout/invoice%0d%0aX-Injected:%20yes",
    "/checkout/invoice%09",
    "/checkout/invoice%7f",
    "/checkout/%2569nvoice",
    "/checkout/invoice%25",
    "/checkout/invoice%",
    "/checkout/invoice%zz",
]
RAW_REFUSED = [
    b"/checkout/invoice\x00",
    b"/checkout/in\x7fvoice",
    b"/checkout/invoice\x01",
    "/checkout/invoïce".encode(),
    "/checkout/\u2024\u2024/oauth/token".encode(),
    b"/checkout/invoice\xff",
]


@pytest.fixture
async def client(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    return await make_broker(hardened_settings(sandbox.url))


async def primed(client: BrokerClient, sandbox: Sandbox) -> str:
    """A session with its checkout JWT minted, and an empty upstream log."""
    session = await new_session(client, "cus_alice", "inv_alice_1")
    assert (await client.get("/checkout/invoice", headers=_auth(session))).status == 200
    await sandbox.reset()
    return session


def _auth(session: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {session}"}


async def send_raw(
    client: BrokerClient, method: str, target: bytes | str, session: str, body: bytes = b""
) -> tuple[int | None, bytes]:
    headers = [("Authorization", f"Bearer {session}"), ("Connection", "close")]
    if body:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    reply = await send_to(client, http_request(method, target, headers, body), wait=2.0)
    return reply.first_status, reply.bodies[0] if reply.bodies else b""


@pytest.mark.parametrize("prefix", ["/checkout/", "/checkout/v1/"])
async def test_every_sdk_pair_is_forwarded_under_both_prefixes_byte_for_byte(
    client: BrokerClient, sandbox: Sandbox, prefix: str
) -> None:
    session = await primed(client, sandbox)
    for method, path in SDK_PAIRS:
        status, _ = await send_raw(
            client, method, prefix + path, session, b"{}" * (method == "POST")
        )
        assert status is not None, (method, path)
        assert status < 500, (method, path)
    forwarded = [(r["method"], r["raw_path"]) for r in upstream_traffic(await sandbox.requests())]
    assert forwarded == [(method, prefix + path) for method, path in SDK_PAIRS]


@pytest.mark.parametrize("path", NOT_LISTED)
async def test_paths_off_the_allowlist_are_404_and_not_forwarded(
    client: BrokerClient, sandbox: Sandbox, path: str
) -> None:
    session = await primed(client, sandbox)
    for method in ("GET", "POST"):
        status, body = await send_raw(client, method, path, session, b"{}" * (method == "POST"))
        assert status == 404, (method, path, body)
        assert b'"not_found"' in body
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize(("method", "path"), WRONG_METHOD)
async def test_listed_paths_with_another_method_are_405_and_not_forwarded(
    client: BrokerClient, sandbox: Sandbox, method: str, path: str
) -> None:
    session = await primed(client, sandbox)
    status, body = await send_raw(client, method, path, session, b"{}")
    assert status == 405, (method, path, body)
    assert b'"method_not_allowed"' in body
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("target", REFUSED_TARGETS)
async def test_confusing_paths_are_400_before_any_upstream_call(
    client: BrokerClient, sandbox: Sandbox, target: str
) -> None:
    session = await primed(client, sandbox)
    for method in ("GET", "POST"):
        status, body = await send_raw(client, method, target, session, b"{}" * (method == "POST"))
        assert status == 400, (method, target, body)
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("target", RAW_REFUSED)
async def test_raw_control_and_non_ascii_bytes_are_400(
    client: BrokerClient, sandbox: Sandbox, target: bytes
) -> None:
    session = await primed(client, sandbox)
    status, body = await send_raw(client, "GET", target, session)
    assert status == 400, (target, body)
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("target", ["/checkout/", "/checkout/v1/", "/checkout", "/checkout/v1"])
async def test_bare_prefixes_are_not_forwarded(
    client: BrokerClient, sandbox: Sandbox, target: str
) -> None:
    session = await primed(client, sandbox)
    assert (await send_raw(client, "GET", target, session))[0] in {400, 404}
    assert upstream_traffic(await sandbox.requests()) == []


@pytest.mark.parametrize("card_id", ["x" * 65, "pm%201", "pm.1", "pm~1", "pm%2D1"])
async def test_an_id_segment_that_is_not_an_id_is_never_forwarded(
    client: BrokerClient, sandbox: Sandbox, card_id: str
) -> None:
    session = await primed(client, sandbox)
    status, _ = await send_raw(
        client, "POST", f"/checkout/payment-methods/{card_id}/cvv", session, b"{}"
    )
    assert status in {400, 404}
    assert upstream_traffic(await sandbox.requests()) == []


async def test_configured_pairs_are_added_exactly(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    routes = RouteSettings(allow=("POST /checkout/fees/{id}",))
    client = await make_broker(hardened_settings(sandbox.url, routes=routes))
    session = await primed(client, sandbox)
    status, _ = await send_raw(client, "POST", "/checkout/fees/inv_alice_1", session, b"{}")
    assert status is not None
    assert status not in {400, 405}
    assert (await send_raw(client, "GET", "/checkout/fees/inv_alice_1", session))[0] == 405
    assert (await send_raw(client, "POST", "/checkout/fees/a/b", session, b"{}"))[0] == 404
    assert (await send_raw(client, "POST", "/checkout/fees/", session, b"{}"))[0] in {400, 404}
    assert (await send_raw(client, "POST", "/checkout/fees/" + "i" * 65, session, b"{}"))[0] in {
        400,
        404,
    }
    forwarded = [(r["method"], r["raw_path"]) for r in upstream_traffic(await sandbox.requests())]
    assert forwarded == [("POST", "/checkout/fees/inv_alice_1")]


async def test_allow_any_lifts_the_allowlist_but_not_path_hygiene(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    client = await make_broker(hardened_settings(sandbox.url, routes=RouteSettings(allow_any=True)))
    session = await primed(client, sandbox)
    status, _ = await send_raw(client, "DELETE", "/checkout/anything/else", session)
    assert status is not None
    assert status not in {400, 405}
    for target in (
        "/checkout/../oauth/token",
        "/checkout/%2e%2e/oauth/token",
        "/checkout//x",
        "/checkout/a%2fb",
        "/checkout/a;b",
        "/checkout/a%00",
    ):
        assert (await send_raw(client, "GET", target, session))[0] == 400, target
    forwarded = [(r["method"], r["raw_path"]) for r in upstream_traffic(await sandbox.requests())]
    assert forwarded == [("DELETE", "/checkout/anything/else")]


async def test_refusals_do_not_need_a_session_to_be_refused(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    """Path checks run first: an anonymous prober learns nothing beyond 400/404/405/401."""
    for method, target in (
        ("GET", "/checkout/../oauth/token"),
        ("GET", "/checkout/nowhere"),
        ("DELETE", "/checkout/invoice"),
        ("GET", "/checkout/invoice"),
    ):
        status, _ = await send_raw(client, method, target, "not-a-session")
        assert status in {400, 401, 404, 405}, (method, target)
    assert upstream_traffic(await sandbox.requests()) == []


async def test_a_405_names_the_methods_its_target_takes(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    """RFC 9110 §15.5.6: the allowlist's methods for that path, as forwarded."""
    routes = RouteSettings(allow=("POST /checkout/fees/{id}", "DELETE /checkout/fees/{id}"))
    client = await make_broker(hardened_settings(sandbox.url, routes=routes))
    headers = _auth(await primed(client, sandbox))
    for method, target, allow in [
        ("GET", "/checkout/fees/inv_alice_1", "DELETE, POST"),
        ("OPTIONS", "/checkout/invoice", "GET"),  # never forwarded, whatever the allowlist
        ("PUT", "/checkout/v1/payment-methods/pm_1/cvv", "POST"),
        ("GET", "/v1/checkout-auth/init", "POST"),  # a route of the broker's own
        ("DELETE", "/healthz", "GET, HEAD"),
    ]:
        response = await client.request(method, target, headers=headers)
        assert response.status == 405, (method, target)
        assert response.headers["Allow"] == allow, (method, target)
    assert upstream_traffic(await sandbox.requests()) == []
    open_client = await make_broker(
        hardened_settings(sandbox.url, routes=RouteSettings(allow_any=True))
    )
    response = await open_client.request(
        "OPTIONS", "/checkout/anything", headers=_auth(await primed(open_client, sandbox))
    )
    assert response.status == 405
    assert response.headers["Allow"] == "DELETE, GET, PATCH, POST, PUT"

"""Property: a generated request target is refused before the upstream, or forwarded
byte for byte, and only when it is a canonical path on the route allowlist.

Targets are built from the pieces path-confusion attacks are made of (dot segments,
encoded slashes and dots, ``;``, ``//``, ``?``, ``#``, NUL, ``%25``, raw non-ASCII)
mixed with the SDK's own segments, and sent as raw bytes on a socket so that no
client normalises them first.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from broker.config.model import TRANSPORTS, ServerSettings, Settings
from broker.sandbox import SandboxSettings
from tests.helpers import API_KEY
from tests.security.conftest import hardened_settings, http_request, raw_exchange
from tests.security.live import LiveLoop, LiveStack

SDK_ROUTES = {
    ("GET", ("preferences", "theme")),
    ("GET", ("invoice",)),
    ("GET", ("invoice", "pdf-link")),
    ("GET", ("payment-methods",)),
    ("GET", ("card-form", "credentials")),
    ("POST", ("payment-methods", "card")),
    ("POST", ("payment-methods", "bank")),
    ("POST", ("payment-methods", "{id}", "cvv")),
    ("POST", ("payments",)),
    ("POST", ("address", "autocomplete")),
    ("POST", ("address", "details")),
}
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLAIN_SEGMENTS = [
    "invoice",
    "payment-methods",
    "cvv",
    "v1",
    "pdf-link",
    "card",
    "bank",
    "payments",
    "preferences",
    "theme",
    "card-form",
    "credentials",
    "address",
    "autocomplete",
    "details",
    "checkout",
    "pm_123",
    "inv_alice_1",
    "oauth",
    "token",
]
NASTY = [
    "",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2E.",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    ";",
    ";x=1",
    "?",
    "?a=1",
    "?a=%2e%2e/x",
    "#",
    "#frag",
    "%00",
    "%0a",
    "%0d%0a",
    "%09",
    "%7f",
    "%25",
    "%252e",
    "%252f",
    "%c0%ae",
    "%20",
    "+",
    "~",
    "%41",
    "%69nvoice",
    "é",
    "\u2024",
    "\uff0f",
    "\x00",
    "\x7f",
    "\t",
]


def canonical_route(method: str, path: str) -> bool:
    """Is *path* (no query) exactly an allowed SDK path for *method*?"""
    for prefix in ("/checkout/v1/", "/checkout/"):
        if path.startswith(prefix):
            segments = tuple(path[len(prefix) :].split("/"))
            for allowed_method, template in SDK_ROUTES:
                if allowed_method == method and _matches(template, segments):
                    return True
    return False


def _matches(template: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    return len(template) == len(segments) and all(
        want == got or (want == "{id}" and _ID.fullmatch(got) is not None)
        for want, got in zip(template, segments, strict=True)
    )


segment = st.one_of(
    st.sampled_from(PLAIN_SEGMENTS),
    st.sampled_from(NASTY),
    st.builds(lambda a, b: a + b, st.sampled_from(PLAIN_SEGMENTS), st.sampled_from(NASTY)),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.sampled_from(PLAIN_SEGMENTS)),
)
freeform = st.builds(
    lambda prefix, parts: prefix + "/".join(parts),
    st.sampled_from(["/checkout/", "/checkout/v1/", "/checkout", "/", "/v1/", "/checkout//"]),
    st.lists(segment, min_size=0, max_size=5),
)


def _route_path(template: tuple[str, ...], card_id: str) -> str:
    return "/".join(card_id if part == "{id}" else part for part in template)


# A real route, possibly mutated by one nasty piece somewhere: near-misses matter most.
mutated_route = st.builds(
    lambda prefix, route, card_id, nasty, where, mutate, method: (
        method or route[0],
        _mutate(prefix + _route_path(route[1], card_id), nasty, where)
        if mutate
        else prefix + _route_path(route[1], card_id),
    ),
    st.sampled_from(["/checkout/", "/checkout/v1/"]),
    st.sampled_from(sorted(SDK_ROUTES)),
    st.sampled_from(["pm_123", "card-1", "X" * 64, "X" * 65, "a.b", "%70m_1"]),
    st.sampled_from(NASTY),
    st.integers(min_value=0, max_value=200),
    st.booleans(),
    st.sampled_from([None, None, None, "GET", "POST", "DELETE"]),  # None: the route's own
)


def _mutate(path: str, nasty: str, where: int) -> str:
    cut = 1 + where % len(path)
    return path[:cut] + nasty + path[cut:]


requests = st.one_of(
    st.tuples(st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "DELETE"]), freeform),
    mutated_route,
)


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(request: pytest.FixtureRequest) -> Iterator[LiveStack]:
    """Sandbox and broker for the whole module, once per upstream transport."""
    live = LiveLoop()
    stack = LiveStack(live)

    def settings_for(url: URL) -> Settings:
        settings = hardened_settings(url, server=ServerSettings(shutdown_timeout=1.0))
        upstream = dataclasses.replace(settings.upstream, transport=request.param)
        return dataclasses.replace(settings, upstream=upstream)

    live.run(stack.start(settings_for, SandboxSettings()))
    try:
        yield stack
    finally:
        live.run(stack.stop())
        live.close()


@pytest.fixture(scope="module")
def session(stack: LiveStack) -> str:
    async def issue() -> str:
        async with stack.client.post(
            stack.broker_url / "v1/checkout-auth/init",
            json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200
            token: str = (await response.json())["token"]
        # Mint the checkout JWT now, so that every example sees only its own traffic.
        async with stack.client.get(
            stack.broker_url / "checkout/invoice", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
        return token

    return stack.live.run(issue())


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_targets_are_refused_or_forwarded_byte_for_byte(
    stack: LiveStack, session: str, request: tuple[str, str]
) -> None:
    method, target = request
    event(stack.live.run(_check_one(stack, session, method, target)))


async def _check_one(stack: LiveStack, session: str, method: str, target: str) -> str:
    sandbox = stack.upstream
    await sandbox.reset()
    request_id = uuid.uuid4().hex
    body = b"{}" if method in {"POST", "PUT"} else b""
    headers = [
        ("Authorization", f"Bearer {session}"),
        ("X-Request-Id", request_id),
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ]
    if body:
        headers.append(("Content-Length", str(len(body))))
    raw_target = target.encode("utf-8")
    reply = await raw_exchange(
        "127.0.0.1", stack.broker_port, http_request(method, raw_target, headers, body), wait=5
    )
    seen = [r for r in await sandbox.requests() if r["raw_path"] != "/oauth/token"]
    status = reply.first_status
    assert status is None or status < 500, (target, reply.data[:300])
    path = target.partition("?")[0]
    if seen:
        # Forwarded: exactly once, exactly the bytes sent, and a canonical allowed path.
        assert len(seen) == 1, (target, seen)
        (forwarded,) = seen
        assert forwarded["method"] == method
        assert forwarded["raw_path"].encode("utf-8") == raw_target, (target, forwarded)
        assert canonical_route(method, path), f"forwarded a non-canonical target {target!r}"
        return "forwarded"
    # Refused by the broker (or its HTTP parser) before any upstream call.
    assert status in {400, 404, 405, None}, (target, reply.data[:300])
    if status is None:
        assert reply.closed
    assert not (canonical_route(method, path) and "?" not in target and "#" not in target), (
        f"a canonical allowed target was refused: {method} {target!r} -> {status}"
    )
    return f"refused with {status}"


def test_the_reference_allowlist_is_the_sdk_list() -> None:
    """Keeps the oracle honest: a few targets it must and must not accept."""
    assert canonical_route("GET", "/checkout/invoice")
    assert canonical_route("POST", "/checkout/v1/payment-methods/pm_1/cvv")
    assert not canonical_route("GET", "/checkout/v1/v1/invoice")
    assert not canonical_route("POST", "/checkout/payment-methods/%70m/cvv")
    assert not canonical_route("GET", "/checkout/invoice/")
    assert not canonical_route("GET", "/checkout/payments")

"""No 500 and no poisoned cache from any OAuth or mint answer; clock skew is measured
and survived; a transient mint failure is retried once."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tests.conftest import LogCapture
from tests.upstream.answers import (
    Answer,
    Upstream,
    checkout_jwt,
    checkout_status,
    good_mint,
    json_answer,
    run_with_broker,
)

ALLOWED = {200, 502, 503, 504, 404}

numbers = st.one_of(
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(True),
    st.text(max_size=5),
    st.none(),
)
weird_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def raw_json(value: object) -> bytes:
    # json.dumps writes NaN/Infinity, as a careless upstream would.
    return json.dumps(value).encode()


def finite_positive(value: object) -> bool:
    """What the broker must require of a lifetime or time (written out here, not
    imported: the test must not share the code's idea of a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except OverflowError:
        return False


# A generated answer and whether a correct broker may use it: True (it must), False
# (it must not: 502/503, nothing forwarded), None (either, as far as this test knows).
Judged = tuple[Answer, bool | None]


@st.composite
def mint_answers(draw: st.DrawFn) -> Judged:
    kind = draw(st.sampled_from(["claims", "fields", "garbage", "deep", "status"]))
    if kind == "claims":
        claims = draw(
            st.dictionaries(
                st.sampled_from(["exp", "iat", "client_id", "customer_id", "invoice_id"]),
                numbers | st.sampled_from(["sandbox-client", "other-client", "cus_alice"]),
                max_size=3,
            )
        )
        token, expires_at = checkout_jwt(0.0, 300.0, **claims)
        return Answer(body=raw_json({"token": token, "expires_at": expires_at})), None
    if kind == "fields":
        token, _ = checkout_jwt()
        value = draw(st.sampled_from([token, 1, "", "a b", None]))
        expiry = draw(numbers | st.just(time.time() + 300))
        body = {"token": value, "expires_at": expiry}
        usable = value == token and finite_positive(expiry)
        # A usable one may still be refused (an expiry in the past): only "must not".
        return Answer(body=raw_json(body)), None if usable else False
    if kind == "garbage":
        return Answer(body=draw(st.binary(max_size=64)) or raw_json(draw(weird_json))), None
    if kind == "deep":
        depth = draw(st.integers(1_000, 200_000))
        return Answer(body=b"[" * depth + b"]" * depth), False
    status = draw(st.sampled_from([201, 204, 302, 500, 502, 503, 429]))
    return Answer(status=status, body=b"{}"), False


@st.composite
def oauth_answers(draw: st.DrawFn) -> Judged:
    # Each field good half of the time, so that one bad field alone is often drawn.
    body: dict[str, Any] = {
        "access_token": draw(st.just("a" * 56) | st.sampled_from(["", 5, "x y"])),
        "expires_in": draw(st.just(3600) | numbers),
        "token_type": draw(
            st.sampled_from(["bearer", "Bearer", "BEARER"]) | st.sampled_from(["mac", "", 3])
        ),
    }
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    token_type = body.get("token_type", "bearer")
    usable = (
        body.get("access_token") == "a" * 56
        and finite_positive(body.get("expires_in"))
        and isinstance(token_type, str)
        and token_type.lower() == "bearer"
    )
    return Answer(body=raw_json(body)), usable


def check(judged: bool | None, status: int, body: dict[str, Any], upstream: Upstream) -> None:
    assert status in ALLOWED, body
    if status != 200:
        assert set(body) == {"code", "message"}
    else:
        # Whatever was forwarded verifies: never a malformed or foreign token.
        assert upstream.served
    if judged is False:
        assert status in {502, 503}, (status, body)
        assert upstream.served == [], "an unusable answer's token was forwarded"
    elif judged is True:
        assert status == 200, body


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(mint=mint_answers(), oauth=oauth_answers())
def test_no_upstream_answer_gives_a_500_or_a_bad_token(mint: Judged, oauth: Judged) -> None:
    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        status, body = await checkout_status(client)
        assert status in ALLOWED, body
        if status != 200:
            assert set(body) == {"code", "message"}
        else:
            assert upstream.served

    run_with_broker(Upstream(oauth=lambda: oauth[0], mint=lambda: mint[0]), scenario)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(oauth=oauth_answers())
def test_an_oauth_answer_is_used_exactly_when_it_is_usable(oauth: Judged) -> None:
    """A bearer token_type (any case), a usable access_token and a finite positive
    expires_in, or a 502/503 and nothing forwarded; the mint answers well."""

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        status, body = await checkout_status(client)
        check(oauth[1], status, body, upstream)

    run_with_broker(Upstream(oauth=lambda: oauth[0]), scenario)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(mint=mint_answers())
def test_an_unusable_mint_answer_is_never_forwarded(mint: Judged) -> None:
    """With a good partner token: garbage, deep JSON, non-finite or missing fields and
    non-200 statuses give 502/503 (never 500) and nothing is forwarded."""

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        status, body = await checkout_status(client)
        check(mint[1], status, body, upstream)

    run_with_broker(Upstream(mint=lambda: mint[0]), scenario)


def test_a_token_for_another_client_is_refused_and_not_cached() -> None:
    answers = iter([checkout_jwt(client_id="other-client"), checkout_jwt()])

    def mint() -> Answer:
        token, expires_at = next(answers)
        return json_answer({"token": token, "expires_at": expires_at})

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        assert (await checkout_status(client))[0] == 502
        assert (await checkout_status(client))[0] == 200
        assert upstream.mints == 2  # the refused one was not cached

    run_with_broker(Upstream(mint=mint), scenario)


def test_an_oauth_lifetime_past_the_maximum_is_clamped(logs: LogCapture) -> None:
    async def scenario(
        client: TestClient[Any, Any], _: Upstream, registry: CollectorRegistry
    ) -> None:
        assert (await checkout_status(client))[0] == 200

    oauth = json_answer({"access_token": "a" * 56, "expires_in": 10**12, "token_type": "Bearer"})
    run_with_broker(Upstream(oauth=lambda: oauth), scenario)
    (clamped,) = logs.events("upstream_lifetime_clamped")
    assert clamped["kind"] == "oauth"
    assert clamped["lifetime_s"] == 10**12
    assert clamped["max_lifetime_s"] == 86_400.0
    fetched = logs.events("partner_token_fetched")
    assert fetched
    assert all(event["expires_in"] <= 86_400 for event in fetched)


def test_a_broker_clock_an_hour_ahead_still_uses_fresh_tokens() -> None:
    """The upstream's clock an hour behind ours, tokens living 5 minutes: before, every
    fresh token looked expired and every call got 502."""

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, registry: CollectorRegistry
    ) -> None:
        for _ in range(3):
            status, body = await checkout_status(client)
            assert status == 200, body
        assert upstream.mints == 1  # no re-mint loop
        skew = registry.get_sample_value(
            "broker_upstream_clock_skew_seconds", {"partner": "default"}
        )
        assert skew is not None
        assert -3601 < skew < -3599

    run_with_broker(Upstream(mint=lambda: good_mint(offset=-3600.0)), scenario)


def test_a_mint_answered_503_is_retried_once() -> None:
    answers = iter([Answer(status=503, body=b"{}"), good_mint()])

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        assert (await checkout_status(client))[0] == 200
        assert upstream.mints == 2

    run_with_broker(Upstream(mint=lambda: next(answers)), scenario)


def test_a_mint_failing_twice_is_not_retried_again() -> None:
    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, _: CollectorRegistry
    ) -> None:
        status, _body = await checkout_status(client)
        assert status == 503
        assert upstream.mints == 2  # one retry, not the SDK's four

    run_with_broker(Upstream(mint=lambda: Answer(status=500, body=b"{}")), scenario)

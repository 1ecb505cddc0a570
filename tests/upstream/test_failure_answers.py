"""An upstream 5xx on a forwarded call reaches the browser as the broker's own error: the
status kept, the body and fields replaced, the upstream's error code logged (never sent)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from broker.errors import UpstreamFailure
from broker.proxy.relay import FAILURE_BODY_LIMIT, UNRECOGNISED_CODE
from tests.conftest import LogCapture, new_session
from tests.upstream.answers import Answer, Upstream, run_with_broker

# What an upstream's error may carry that no browser should see.
CANARY = "pg-primary-17.internal"
LOUD_FIELDS = {
    "Set-Cookie": "debug=1",
    "X-Upstream-Trace": CANARY,
    "Server": "upstream/9.9",
}
SANE_CODE = re.compile(r"[A-Za-z0-9_]{1,64}")
codes = st.one_of(
    st.from_regex(SANE_CODE, fullmatch=True),
    st.text(max_size=80),
    st.integers(),
    st.none(),
    st.just(CANARY),
)


@st.composite
def failures(draw: st.DrawFn) -> tuple[Answer, object]:
    """A 5xx answer and the code its body names (``...`` when it names none)."""
    status = draw(st.integers(500, 599))
    shape = draw(st.sampled_from(["error", "garbage", "deep", "huge", "empty"]))
    code: object = ...
    if shape == "error":
        code = draw(codes)
        document = {"code": code, "message": f"query failed on {CANARY}", "trace": CANARY}
        body = json.dumps(document).encode()
    elif shape == "garbage":
        body = draw(st.binary(max_size=256)) + CANARY.encode()
    elif shape == "deep":
        depth = draw(st.integers(1_000, 100_000))
        body = b"[" * depth + b"]" * depth
    elif shape == "huge":
        body = json.dumps({"code": "too_big", "pad": "x" * FAILURE_BODY_LIMIT}).encode()
    else:
        body = b""
    headers = {"Content-Type": "application/json", **LOUD_FIELDS}
    if draw(st.booleans()):
        headers["Retry-After"] = draw(st.sampled_from(["0", "7", "3600", "soon", "", "1e9"]))
    return Answer(status=status, body=body, headers=headers, chunked=draw(st.booleans())), code


def expected_code(code: object, answer: Answer) -> str | None:
    if code is ... or code is None:
        return None
    if isinstance(code, str) and SANE_CODE.fullmatch(code):
        return code
    return UNRECOGNISED_CODE


@pytest.mark.forwarding
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(failure=failures())
def test_an_upstream_5xx_reaches_the_browser_as_the_brokers_error(
    transport: str, logs: LogCapture, failure: tuple[Answer, object]
) -> None:
    answer, code = failure
    logs.stream.seek(0)
    logs.stream.truncate()  # one example's lines only
    seen: dict[str, Any] = {}

    async def scenario(
        client: TestClient[Any, Any], upstream: Upstream, registry: CollectorRegistry
    ) -> None:
        token = await new_session(client)
        for attempt in range(2):  # the second on a pooled connection, if one was kept
            response = await client.get(
                "/checkout/invoice",
                headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"fail-{attempt}"},
            )
            text = await response.text()
            seen[f"status{attempt}"] = response.status
            seen[f"body{attempt}"] = json.loads(text)
            seen[f"headers{attempt}"] = response.headers
            assert CANARY not in text
            assert all(CANARY not in value for value in response.headers.values())

    upstream = Upstream(checkout=lambda: answer)
    run_with_broker(upstream, scenario, transport=transport)
    for attempt in range(2):
        assert seen[f"status{attempt}"] == answer.status
        assert seen[f"body{attempt}"] == {
            "code": UpstreamFailure.code,
            "message": UpstreamFailure.message,
        }
        headers = seen[f"headers{attempt}"]
        assert "Set-Cookie" not in headers
        assert headers["Server"] != LOUD_FIELDS["Server"]
        assert headers["Cache-Control"] == "no-store"
        if answer.status == 503:
            assert 1 <= int(headers["Retry-After"]) <= 60
    lines = {
        line["request_id"]: line
        for line in logs.events("request_finished")
        if line.get("request_id", "").startswith("fail-")
    }
    for attempt in range(2):
        line = lines[f"fail-{attempt}"]
        assert line["status"] == answer.status
        assert line["upstream_status"] == answer.status
        assert line["error_code"] == UpstreamFailure.code
        if len(answer.body) <= FAILURE_BODY_LIMIT:
            assert line.get("upstream_error_code") == expected_code(code, answer)
        else:
            assert "upstream_error_code" not in line  # not read: too large to bother
    assert CANARY not in "".join(
        json.dumps(line) for line in logs.events() if line.get("event") == "request_finished"
    )


@pytest.mark.forwarding
def test_an_upstream_4xx_is_still_passed_through(transport: str) -> None:
    """Only server errors are replaced: the SDK shows a 4xx's message and reads its fields."""
    refusal = {"code": "bad_request", "message": "amount must be positive", "validation_errors": {}}
    answer = Answer(status=422, body=json.dumps(refusal).encode())
    seen: list[object] = []

    async def scenario(client: TestClient[Any, Any], _: Upstream, __: CollectorRegistry) -> None:
        token = await new_session(client)
        response = await client.get(
            "/checkout/invoice", headers={"Authorization": f"Bearer {token}"}
        )
        seen.extend([response.status, await response.json()])

    run_with_broker(Upstream(checkout=lambda: answer), scenario, transport=transport)
    assert seen == [422, refusal]

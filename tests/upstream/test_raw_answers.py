"""Upstream answers no HTTP library would write, on both transports: whatever the bytes,
the browser gets a well-framed answer with a correct status (a relayed 2xx/4xx, or 502
for what cannot be relayed safely), never a dropped connection or a malformed status
line; and the upstream gets exactly the fields the allowlist names.

The checkout calls are answered by ``tests.upstream.answers`` in raw-bytes mode; the
browser's side is a raw socket too, so that the broker's own status line is seen as sent.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from broker.config.model import RouteSettings
from tests.conftest import LogCapture, new_session
from tests.security.conftest import RawReply, http_request, send_to
from tests.upstream.answers import Upstream, run_with_broker

BAD_GATEWAY = {"code": "bad_gateway", "message": "The payment service sent an invalid answer."}
OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
READ_TIMEOUT = 1.0


def browser_gets(
    answer: bytes,
    transport: str,
    *,
    method: str = "GET",
    target: str = "/checkout/invoice",
    fields: tuple[tuple[str, str], ...] = (),
    **overrides: Any,
) -> tuple[RawReply, Upstream]:
    """What the browser reads when every checkout call is answered with *answer*, and
    the upstream (what it received)."""
    upstream = Upstream(raw=lambda _head, _body: answer)
    replies: list[RawReply] = []

    async def scenario(client: TestClient[Any, Any], _: Upstream, __: CollectorRegistry) -> None:
        session = await new_session(client)
        # Connection: close, so that the reply is complete when the broker hangs up.
        sent = [("Authorization", f"Bearer {session}"), ("Connection", "close"), *fields]
        replies.append(await send_to(client, http_request(method, target, sent), wait=2.5))

    run_with_broker(upstream, scenario, transport=transport, read_timeout=READ_TIMEOUT, **overrides)
    return replies[0], upstream


def assert_bad_gateway(reply: RawReply) -> None:
    assert reply.first_status == 502, (reply.closed, reply.data[:300])
    assert reply.body_json() == BAD_GATEWAY
    assert reply.elapsed < READ_TIMEOUT, "answered at once, not after the read timeout"


def status_line(reply: RawReply) -> bytes:
    return reply.data.partition(b"\r\n")[0]


# -- statuses ----------------------------------------------------------------------------


@pytest.mark.forwarding
def test_an_upstream_101_is_a_502_not_the_final_answer(transport: str) -> None:
    """aiohttp's client hands a 101 back as a response: it is no answer to relay."""
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    assert_bad_gateway(browser_gets(answer, transport)[0])


@pytest.mark.forwarding
@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_a_status_outside_200_to_599_is_a_502_at_once(
    transport: str, logs: LogCapture, status: bytes
) -> None:
    """Below 100 is no interim answer to wait past (lean waited for the read timeout),
    and a status the broker cannot send on is not sent on (aiohttp wrote ``HTTP/1.1
    99``; both wrote 600 and 999 as the broker's own)."""
    answer = b"HTTP/1.1 " + status + b" Weird\r\nContent-Length: 2\r\n\r\n{}"
    assert_bad_gateway(browser_gets(answer, transport)[0])
    (line,) = logs.events("request_finished")[-1:]
    assert line["status"] == 502


# -- the status line and fields the broker writes -----------------------------------------


@pytest.mark.forwarding
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 A\x01B\r\nContent-Length: 2\r\n\r\n{}", b"HTTP/1.1 200 OK"),
        (b"HTTP/1.1 200 Fine by me\r\nContent-Length: 2\r\n\r\n{}", b"HTTP/1.1 200 OK"),
        (b"HTTP/1.1 422 Nope\x7f\r\nContent-Length: 2\r\n\r\n{}", b"HTTP/1.1 422 Unprocessable"),
        # Streamed back (no Content-Length): the other response path.
        (
            b"HTTP/1.1 200 A\x01B\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK",
        ),
    ],
    ids=["ctl", "text", "4xx-del", "streamed-ctl"],
)
def test_the_upstream_reason_phrase_is_never_relayed(
    transport: str, answer: bytes, expected: bytes
) -> None:
    """The broker's status line carries the standard phrase: the upstream's is its own
    text (a control character in it made the broker drop the connection)."""
    reply, _ = browser_gets(answer, transport)
    assert status_line(reply).startswith(expected), reply.data[:300]
    assert reply.bodies == [b"{}"]


@pytest.mark.forwarding
@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nETag: "a\x01b"\r\nContent-Length: 2\r\n\r\n{}',
        b'HTTP/1.1 200 OK\r\nETag: "a\x7fb"\r\nContent-Length: 2\r\n\r\n{}',
        b"HTTP/1.1 429 Slow\r\nRetry-After: 1\x7f\r\nContent-Length: 2\r\n\r\n{}",
        b'HTTP/1.1 200 OK\r\nETag: "a\x1fb"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
        # A field the broker would not relay: the same answer whatever the transport.
        b"HTTP/1.1 200 OK\r\nX-Trace: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["etag-soh", "etag-del", "retry-after-del", "streamed-etag-us", "unrelayed-soh"],
)
def test_a_control_character_in_a_field_value_is_a_502(transport: str, answer: bytes) -> None:
    """RFC 9110 §5.5: no CTL but HTAB in a field value. llhttp (lean) refuses such a
    head; aiohttp's lenient client let it through to the broker's own writer, which
    refused to write it and dropped the connection without an answer."""
    assert_bad_gateway(browser_gets(answer, transport)[0])


@pytest.mark.forwarding
def test_a_tab_in_a_field_value_is_relayed(transport: str) -> None:
    answer = b'HTTP/1.1 200 OK\r\nETag: "a\tb"\r\nContent-Length: 2\r\n\r\n{}'
    reply, _ = browser_gets(answer, transport)
    assert reply.first_status == 200, reply.data[:300]
    assert b'\r\netag: "a\tb"\r\n' in reply.data.lower()


@pytest.mark.forwarding
@pytest.mark.parametrize(
    "field",
    [b"Content-Length : 2", b"Content-Length\t: 2", b"X Trace: 1", b"X(Trace): 1"],
    ids=["space-before-colon", "tab-before-colon", "space-inside", "parentheses"],
)
def test_a_field_name_that_is_no_token_is_a_502(transport: str, field: bytes) -> None:
    """RFC 9112 §5.1: a space before the colon MUST be refused; aiohttp took
    ``Content-Length : 2`` for another field, read the body to EOF and cut the answer
    after the read timeout (a framing desync, where lean answered 502 at once)."""
    answer = b"HTTP/1.1 200 OK\r\n" + field + b"\r\n\r\n{}"
    assert_bad_gateway(browser_gets(answer, transport)[0])


@pytest.mark.forwarding
def test_a_204_with_a_content_length_field_is_relayed_as_a_204(transport: str) -> None:
    """RFC 9112 §6.3: a 204 ends at its head whatever its fields say (aiohttp's
    response reported the field, the body read found nothing: 502)."""
    reply, _ = browser_gets(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", transport)
    assert status_line(reply) == b"HTTP/1.1 204 No Content", reply.data[:300]
    assert reply.bodies == [b""]


# -- what the upstream gets ---------------------------------------------------------------


def received_fields(upstream: Upstream) -> dict[str, str]:
    ((head, _),) = upstream.received
    lines = head.decode().split("\r\n")[1:]
    return {n.lower(): v.strip() for n, _, v in (line.partition(":") for line in lines if line)}


@pytest.mark.forwarding
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared-0", "undeclared"])
def test_an_empty_body_goes_out_with_content_length_zero(
    transport: str, method: str, declared: bool
) -> None:
    """RFC 9110 §8.6: a request whose method gives content a meaning says how long it
    is, 0 included (some front ends answer 411 otherwise); lean sent no framing field."""
    fields: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    if declared:
        fields += (("Content-Length", "0"),)
    reply, upstream = browser_gets(
        OK_JSON,
        transport,
        method=method,
        target="/checkout/payments",
        fields=fields,
        routes=RouteSettings(allow_any=True),
    )
    assert reply.first_status == 200, reply.data[:300]
    assert received_fields(upstream)["content-length"] == "0"


@pytest.mark.forwarding
def test_a_get_goes_out_with_the_allowlisted_fields_only(transport: str) -> None:
    """Nothing the browser did not send is added (aiohttp's session added ``Accept:
    */*``); only the broker's own three and the Host."""
    reply, upstream = browser_gets(OK_JSON, transport)
    assert reply.first_status == 200, reply.data[:300]
    assert set(received_fields(upstream)) == {"host", "authorization", "user-agent", "x-request-id"}


@pytest.mark.forwarding
def test_a_browsers_accept_is_forwarded_as_sent(transport: str) -> None:
    reply, upstream = browser_gets(OK_JSON, transport, fields=(("Accept", "application/json"),))
    assert reply.first_status == 200, reply.data[:300]
    assert received_fields(upstream)["accept"] == "application/json"

"""The lean upstream transport against small raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpRawServer
from yarl import URL

from broker.config.model import ConfigError, UpstreamSettings, load_settings
from broker.upstream.lean import LeanTransport, Slots
from broker.upstream.lean_connection import HIGH_WATER
from broker.upstream.transport import (
    AiohttpTransport,
    UpstreamBusy,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamResponse,
    UpstreamUnreachable,
)
from broker.web.keys import gateway_key
from tests.conftest import MakeBroker, new_session
from tests.helpers import Sandbox, auth, make_settings, self_signed_certificate, signing_key

REPO = Path(__file__).resolve().parents[2]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Request:
    def __init__(self, head: bytes, body: bytes) -> None:
        self.head, self.body = head, body
        self.line = head.split(b"\r\n", 1)[0].decode()

    @property
    def fields(self) -> list[tuple[str, str]]:
        lines = self.head.decode().split("\r\n")[1:]
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]


# What the test server does with one request: write an answer, then True to keep the
# connection open for another request, False to close it.
Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


class RawUpstream:
    """An HTTP/1.1 server of a few lines that counts connections and says what it's told."""

    def __init__(self, respond: Respond, *, read_body: bool = True) -> None:
        self.respond = respond
        self.read_body = read_body
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[Request] = []
        self.closed_by_peer = asyncio.Event()
        self.ended = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=ssl_context, limit=2**20
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Request(head, b"")
                length = {n.lower(): v for n, v in request.fields}.get("content-length")
                if self.read_body:
                    request.body = await reader.readexactly(int(length or 0))
                self.requests.append(request)
                keep = await self.respond(request, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer.set()
        except asyncio.LimitOverrunError:
            pass  # no request head where one should be: hang up
        finally:
            self.open -= 1
            writer.close()
            self.ended.set()


MakeUpstream = Callable[..., Awaitable[tuple[RawUpstream, LeanTransport]]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    """A raw upstream and a LeanTransport in front of it; both closed afterwards."""
    made: list[tuple[RawUpstream, LeanTransport]] = []

    async def make(
        respond: Respond,
        *,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        idle_timeout: float = 30.0,
        drain_limit: float = 5.0,
        read_body: bool = True,
        **overrides: Any,
    ) -> tuple[RawUpstream, LeanTransport]:
        upstream = RawUpstream(respond, read_body=read_body)
        port = await upstream.start(ssl_server)
        scheme = "https" if ssl_server else "http"
        settings = UpstreamSettings(
            base_url=URL(f"{scheme}://{host}:{port}/base"),
            client_id="c",
            client_secret="s",
            connect_timeout=overrides.pop("connect_timeout", 1.0),
            read_timeout=overrides.pop("read_timeout", 2.0),
            max_connections=overrides.pop("max_connections", 100),
            pool_wait=overrides.pop("pool_wait", 1.0),
            transport="lean",
        )
        lean = LeanTransport(
            settings, ssl_context=ssl_client, idle_timeout=idle_timeout, drain_limit=drain_limit
        )
        made.append((upstream, lean))
        return upstream, lean

    yield make
    for upstream, lean in made:
        await lean.close()
        assert upstream.server is not None
        upstream.server.close()
        await upstream.server.wait_closed()


def answer(raw: bytes, *, keep: bool = True) -> Respond:
    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return keep

    return respond


def url(lean: LeanTransport, target: str = "/base/x") -> URL:
    return URL(f"http://{lean._host_field}{target}", encoded=True)


async def read_all(response: UpstreamResponse, into: list[bytes] | None = None) -> bytes:
    chunks = [] if into is None else into
    while chunk := await response.next_chunk():
        chunks.append(chunk)
    return b"".join(chunks)


async def get(lean: LeanTransport, target: str = "/base/x", method: str = "GET") -> bytes:
    response = await lean.send(method, url(lean, target), {}, None)
    try:
        return await read_all(response)
    finally:
        response.release()


async def test_request_is_one_exact_write_and_headers_keep_duplicates(
    make_upstream: MakeUpstream,
) -> None:
    raw = (
        b"HTTP/1.1 201 Quite Created\r\nX-Dup: 1\r\nx-dup: 2\r\nContent-Length: 5\r\n"
        b"Content-Type: application/json\r\n\r\nhello"
    )
    upstream, lean = await make_upstream(answer(raw))
    target = "/base/checkout/payments?after=gaFp+X9L&a=%2B3&b=%20"
    response = await lean.send(
        "POST", url(lean, target), {"Accept": "application/json", "Idempotency-Key": "k1"}, b""
    )
    assert (response.status, response.reason) == (201, "Quite Created")
    assert response.headers.getall("X-DUP") == ["1", "2"]
    assert response.content_length == 5
    assert await response.read_exactly(5) == b"hello"
    response.release()
    (seen,) = upstream.requests
    assert seen.line == f"POST {target} HTTP/1.1"
    assert seen.fields == [
        ("Host", lean._host_field),
        ("Accept", "application/json"),
        ("Idempotency-Key", "k1"),
        ("Content-Length", "0"),  # an empty POST still says so; never chunked
    ]
    assert seen.body == b""


async def test_get_without_body_sends_no_content_length(make_upstream: MakeUpstream) -> None:
    upstream, lean = await make_upstream(answer(OK))
    assert await get(lean) == b"ok"
    assert [n for n, _ in upstream.requests[0].fields] == ["Host"]


@pytest.mark.parametrize(
    ("method", "sent"),
    [("POST", True), ("PUT", True), ("PATCH", True), ("DELETE", False), ("GET", False)],
)
async def test_a_method_with_content_says_content_length_0_without_a_body(
    make_upstream: MakeUpstream, method: str, sent: bool
) -> None:
    """The proxy passes body=None for an empty body (RFC 9110 §8.6: a POST, PUT or
    PATCH still says how long its content is)."""
    upstream, lean = await make_upstream(answer(OK))
    assert await get(lean, method=method) == b"ok"
    fields = upstream.requests[0].fields
    assert fields == [("Host", lean._host_field), ("Content-Length", "0")][: 2 if sent else 1]


async def test_unsafe_request_fields_are_refused_before_any_byte_is_sent(
    make_upstream: MakeUpstream,
) -> None:
    upstream, lean = await make_upstream(answer(OK))
    with pytest.raises(ValueError, match="unsafe"):
        await lean.send("GET", url(lean), {"X-A": "v\r\nX-Injected: yes"}, None)
    with pytest.raises(ValueError, match="unsafe"):
        await lean.send("GET", url(lean), {"X A": "v"}, None)
    with pytest.raises(ValueError, match="only reaches"):
        await lean.send("GET", URL("http://elsewhere.example/x"), {}, None)
    assert upstream.connections == 0


@pytest.mark.parametrize(
    "method", ["", "G ET", "GET /x HTTP/1.1\r\nX-Injected: yes\r\n\r\nGET", "GET\r", "GÉT"]
)
async def test_a_method_that_is_no_token_is_refused(
    make_upstream: MakeUpstream, method: str
) -> None:
    upstream, lean = await make_upstream(answer(OK))
    with pytest.raises(ValueError, match="unsafe"):
        await lean.send(method, url(lean), {}, None)
    assert upstream.connections == 0


@pytest.mark.parametrize("target", ["/a b", "/a\x00", "/a\x01", "/a\x7f", "/a?q=1 HTTP/1.1"])
async def test_a_target_with_a_control_character_or_space_is_refused(
    make_upstream: MakeUpstream, target: str
) -> None:
    upstream, lean = await make_upstream(answer(OK))
    with pytest.raises(ValueError, match="unsafe"):
        await lean.send("GET", url(lean, target), {}, None)
    assert upstream.connections == 0


async def test_an_extension_method_is_sent_as_it_is(make_upstream: MakeUpstream) -> None:
    upstream, lean = await make_upstream(answer(OK))
    response = await lean.send("PROPFIND", url(lean), {}, None)
    response.release()
    assert upstream.requests[0].line == "PROPFIND /base/x HTTP/1.1"


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\n"])
@pytest.mark.parametrize("position", ["first", "last"])
async def test_each_field_ending_character_is_refused_in_any_value(
    make_upstream: MakeUpstream, bad: str, position: str
) -> None:
    upstream, lean = await make_upstream(answer(OK))
    fields = {"Accept": "application/json", "Authorization": "Bearer " + "a" * 800}
    name = "Accept" if position == "first" else "X-Last"
    fields[name] = f"ok{bad}X-Injected: yes"
    with pytest.raises(ValueError, match="unsafe"):
        await lean.send("GET", url(lean), fields, None)
    assert upstream.connections == 0


async def test_chunked_body_is_dechunked_and_trailers_ignored(make_upstream: MakeUpstream) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n"
    )
    upstream, lean = await make_upstream(answer(raw))
    response = await lean.send("GET", url(lean), {}, None)
    assert response.content_length is None
    assert "X-Sum" not in response.headers
    assert await read_all(response) == b"hello, world"
    response.release()
    assert await get(lean) == b"hello, world"  # trailers left nothing behind
    assert upstream.connections == 1


async def test_a_mebibyte_streams_through(make_upstream: MakeUpstream) -> None:
    body = bytes(range(256)) * 4096

    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for offset in range(0, len(body), 100_000):
            writer.write(body[offset : offset + 100_000])
            await writer.drain()
        return True

    upstream, lean = await make_upstream(respond)
    for _ in range(2):
        assert await get(lean) == body
    assert upstream.connections == 1


async def test_a_slow_reader_pauses_the_upstream(make_upstream: MakeUpstream) -> None:
    size = 32 * 2**20  # far more than the loopback socket buffers hold
    drained = asyncio.Event()

    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        drained.set()
        return True

    _, lean = await make_upstream(respond)
    response = await lean.send("GET", url(lean), {}, None)
    await asyncio.sleep(0.3)  # a reader that does not read
    assert not drained.is_set()
    conn = response._conn  # type: ignore[attr-defined]
    assert conn._buffered < 2 * HIGH_WATER + 2**20
    received = 0
    while chunk := await response.next_chunk():
        received += len(chunk)
    response.release()
    assert received == size
    assert drained.is_set()


async def test_sequential_requests_share_one_connection(make_upstream: MakeUpstream) -> None:
    upstream, lean = await make_upstream(answer(OK))
    for _ in range(10):
        assert await get(lean) == b"ok"
    assert upstream.connections == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
async def test_no_reuse_when_the_upstream_does_not_keep_alive(
    make_upstream: MakeUpstream, raw: bytes
) -> None:
    upstream, lean = await make_upstream(answer(raw))
    for _ in range(3):
        assert await get(lean) == b"ok"
    assert upstream.connections == 3


async def test_a_close_delimited_body_is_read_to_the_end(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    upstream, lean = await make_upstream(answer(raw, keep=False))
    response = await lean.send("GET", url(lean), {}, None)
    assert response.content_length is None
    assert await read_all(response) == b"until the end"
    response.release()
    assert await get(lean) == b"until the end"
    assert upstream.connections == 2


async def test_no_reuse_after_a_broken_answer(make_upstream: MakeUpstream) -> None:
    calls = 0

    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        nonlocal calls
        calls += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + b"ok" * (calls > 1))
        return calls > 1  # the first answer is cut short

    upstream, lean = await make_upstream(respond)
    response = await lean.send("GET", url(lean), {}, None)
    with pytest.raises(UpstreamProtocolError, match=r"shorter|mid-body"):
        await response.read_exactly(2)
    response.release()
    assert await get(lean) == b"ok"
    assert upstream.connections == 2


async def test_no_reuse_after_a_partly_read_body(make_upstream: MakeUpstream) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.line.startswith("GET /base/partial"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"-rest")
            return True
        writer.write(OK)
        return True

    upstream, lean = await make_upstream(respond)
    response = await lean.send("GET", url(lean, "/base/partial"), {}, None)
    assert await response.read_exactly(5) == b"first"
    response.release()  # five bytes still on their way: the connection can't be trusted
    assert await get(lean) == b"ok"
    assert upstream.connections == 2


async def test_an_unread_but_complete_body_keeps_the_connection(
    make_upstream: MakeUpstream,
) -> None:
    """As after a 401 the handler releases without reading: the answer was all there."""
    upstream, lean = await make_upstream(answer(OK))
    for _ in range(3):
        response = await lean.send("GET", url(lean), {}, None)
        await asyncio.sleep(0.01)
        response.release()
    assert upstream.connections == 1


async def test_an_answer_before_the_body_was_sent_closes_the_connection(
    make_upstream: MakeUpstream,
) -> None:
    """Else the rest of the body would reach the upstream as the next request's head."""
    raw = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
    upstream, lean = await make_upstream(answer(raw), read_body=False)
    big = await lean.send("POST", url(lean), {}, b"x" * 32 * 2**20)
    assert big.status == 401
    big.release()
    small = await lean.send("POST", url(lean), {}, b"{}")
    assert small.status == 401
    small.release()
    assert upstream.connections == 2


async def test_a_pooled_connection_the_upstream_closed_is_replaced(
    make_upstream: MakeUpstream,
) -> None:
    upstream, lean = await make_upstream(answer(OK, keep=False))
    for method in ("GET", "POST", "GET"):
        upstream.ended.clear()
        assert await get(lean, method=method) == b"ok"
        await asyncio.wait_for(upstream.ended.wait(), 1.0)
        await asyncio.sleep(0.05)  # the FIN reaches the pooled connection
    # Even the POST went out: a connection already known closed was never written to.
    assert upstream.connections == 3


def dropping_the_second(served: list[str]) -> Respond:
    """OK to every request (noted in *served*) but the second, whose connection closes
    without a byte, as a server timing out its keep-alive just as it is reused."""

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        served.append(request.line)
        if len(served) == 2:
            return False
        writer.write(OK)
        return True

    return respond


async def test_a_get_on_a_connection_dropped_as_it_was_reused_is_retried_once(
    make_upstream: MakeUpstream,
) -> None:
    served: list[str] = []
    upstream, lean = await make_upstream(dropping_the_second(served))
    assert await get(lean) == b"ok"
    assert await get(lean) == b"ok"
    assert upstream.connections == 2
    assert len(served) == 3


async def test_a_post_on_a_connection_dropped_as_it_was_reused_is_not_retried(
    make_upstream: MakeUpstream,
) -> None:
    served: list[str] = []
    _, lean = await make_upstream(dropping_the_second(served))
    assert await get(lean) == b"ok"
    with pytest.raises(UpstreamUnreachable):
        await lean.send("POST", url(lean), {}, b"{}")
    assert len(served) == 2  # the upstream may have acted on it: the caller decides
    assert await get(lean) == b"ok"


async def test_a_fresh_connection_closed_without_answer_is_unreachable(
    make_upstream: MakeUpstream,
) -> None:
    upstream, lean = await make_upstream(answer(b"", keep=False))
    with pytest.raises(UpstreamUnreachable):
        await lean.send("GET", url(lean), {}, None)
    assert upstream.connections == 1  # a fresh connection is not retried


async def test_refused_connection_is_unreachable(unused_tcp_port: int) -> None:
    settings = UpstreamSettings(
        base_url=URL(f"http://127.0.0.1:{unused_tcp_port}"), client_id="c", client_secret="s"
    )
    lean = LeanTransport(settings)
    with pytest.raises(UpstreamUnreachable):
        await lean.send("GET", URL(f"http://127.0.0.1:{unused_tcp_port}/x"), {}, None)
    await lean.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
    ],
    ids=["garbage", "status", "two-lengths", "length-and-chunked", "field-name", "upgrade"],
)
async def test_a_malformed_answer_is_a_protocol_error(
    make_upstream: MakeUpstream, raw: bytes
) -> None:
    upstream, lean = await make_upstream(answer(raw))
    with pytest.raises(UpstreamProtocolError):
        await lean.send("GET", url(lean), {}, None)
    writer_gone = asyncio.wait_for(upstream.closed_by_peer.wait(), 1.0)
    await writer_gone  # and the connection is dropped


async def test_a_head_split_into_single_bytes_is_assembled(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 200 Very Fine\r\nX-Long: " + b"v" * 300 + b"\r\nContent-Length: 2\r\n\r\nok"

    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in raw:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        return True

    _, lean = await make_upstream(respond)
    response = await lean.send("GET", url(lean), {}, None)
    assert (response.status, response.reason) == (200, "Very Fine")
    assert response.headers["X-Long"] == "v" * 300
    assert await response.read_exactly(2) == b"ok"
    response.release()


@pytest.mark.parametrize("stream", [False, True])
async def test_eof_mid_body_is_a_protocol_error(make_upstream: MakeUpstream, stream: bool) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    _, lean = await make_upstream(answer(raw, keep=False))
    response = await lean.send("GET", url(lean), {}, None)
    read = read_all(response) if stream else response.read_exactly(100)
    with pytest.raises(UpstreamProtocolError, match=r"mid-body|shorter"):
        await read
    response.release()


async def test_eof_mid_chunked_body_is_a_protocol_error(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    _, lean = await make_upstream(answer(raw, keep=False))
    response = await lean.send("GET", url(lean), {}, None)
    with pytest.raises(UpstreamProtocolError):
        await read_all(response)
    response.release()


async def test_eof_mid_head_is_a_reset(make_upstream: MakeUpstream) -> None:
    # As aiohttp reports it (ServerDisconnectedError): the same 503 on both transports.
    _, lean = await make_upstream(answer(b"HTTP/1.1 200 OK\r\nX-A: b", keep=False))
    with pytest.raises(UpstreamReset, match="mid-headers"):
        await lean.send("GET", url(lean), {}, None)


def answer_after(pauses: dict[str, float]) -> Respond:
    """OK, after the pause of the first word in *pauses* that the request line holds."""

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        pause = next((p for word, p in pauses.items() if word in request.line), 0.0)
        await asyncio.sleep(pause)
        writer.write(OK)
        return True

    return respond


async def test_silence_before_the_head_times_out(make_upstream: MakeUpstream) -> None:
    upstream, lean = await make_upstream(answer_after({"slow": 1.0}), read_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await lean.send("GET", url(lean, "/base/slow"), {}, None)
    assert 0.15 < loop.time() - started < 0.8
    assert await get(lean) == b"ok"
    assert upstream.connections == 2  # the late answer can't be mistaken for this one


async def test_silence_mid_body_times_out_but_a_slow_drip_does_not(
    make_upstream: MakeUpstream,
) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        pause = 0.1 if "drip" in request.line else 5.0
        for byte in b"hello":
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(bytes([byte]))
        return True

    _, lean = await make_upstream(respond, read_timeout=0.3)
    # Five pauses of 0.1 s: longer than read_timeout in total, never idle that long.
    assert await get(lean, "/base/drip") == b"hello"
    response = await lean.send("GET", url(lean, "/base/stall"), {}, None)
    with pytest.raises(TimeoutError):
        await response.read_exactly(5)
    response.release()


async def test_a_reused_connection_times_out_from_its_own_wait_not_an_earlier_one(
    make_upstream: MakeUpstream,
) -> None:
    """The read timer outlives the wait that armed it: when it fires during a later
    exchange it must measure from that exchange, neither early nor much late."""
    # "slow": under read_timeout, but past the timer armed by the first request.
    respond = answer_after({"slow": 0.25, "stall": 5.0})
    upstream, lean = await make_upstream(respond, read_timeout=0.4)
    loop = asyncio.get_running_loop()
    assert await get(lean) == b"ok"  # arms the connection's timer for now + 0.4 s
    await asyncio.sleep(0.3)
    assert await get(lean, "/base/slow") == b"ok"  # the timer fires mid-wait: pushed on
    assert await get(lean) == b"ok"
    started = loop.time()
    with pytest.raises(TimeoutError):
        await get(lean, "/base/stall")
    assert 0.35 < loop.time() - started < 0.9
    assert upstream.connections == 1  # the same kept-alive connection all along


async def test_fifty_concurrent_requests_stay_within_max_connections(
    make_upstream: MakeUpstream,
) -> None:
    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        writer.write(OK)
        return True

    upstream, lean = await make_upstream(respond, max_connections=5)
    results = await asyncio.gather(*(get(lean) for _ in range(50)))
    assert results == [b"ok"] * 50
    assert upstream.most_open <= 5
    assert upstream.connections <= 5


async def test_waiting_for_a_free_connection_is_bounded_by_pool_wait(
    make_upstream: MakeUpstream,
) -> None:
    _, lean = await make_upstream(answer(OK), max_connections=1, pool_wait=0.2)
    held = await lean.send("GET", url(lean), {}, None)
    with pytest.raises(UpstreamBusy):
        await lean.send("GET", url(lean), {}, None)
    held.release()
    assert await get(lean) == b"ok"  # the slot came back


async def test_idle_connections_are_closed_after_the_idle_timeout(
    make_upstream: MakeUpstream,
) -> None:
    upstream, lean = await make_upstream(answer(OK), idle_timeout=0.1)
    assert await get(lean) == b"ok"
    await asyncio.wait_for(upstream.closed_by_peer.wait(), 1.0)
    assert await get(lean) == b"ok"
    assert upstream.connections == 2


async def test_close_closes_pooled_connections(make_upstream: MakeUpstream) -> None:
    upstream, lean = await make_upstream(answer(OK))
    assert await get(lean) == b"ok"
    await lean.close()
    await asyncio.wait_for(upstream.closed_by_peer.wait(), 1.0)
    with pytest.raises(UpstreamUnreachable):
        await lean.send("GET", url(lean), {}, None)


def streaming(parts: int, pause: float) -> Respond:
    """A chunked answer of *parts* parts of 1000 bytes, *pause* seconds apart."""

    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(parts):
            writer.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(b"0\r\n\r\n")
        return True

    return respond


async def test_close_lets_an_answer_in_flight_finish(make_upstream: MakeUpstream) -> None:
    """A reload retires an account while its answers stream: they finish, and their
    connection closes once released; idle ones close at once."""
    upstream, lean = await make_upstream(streaming(5, 0.1))
    idle = await lean.send("GET", url(lean), {}, None)
    busy = await lean.send("GET", url(lean), {}, None)
    assert len(await read_all(idle)) == 5000
    idle.release()  # pooled: closed by close()
    await lean.close()
    await asyncio.wait_for(upstream.ended.wait(), 1.0)
    assert upstream.open == 1
    upstream.ended.clear()
    assert len(await read_all(busy)) == 5000
    busy.release()
    await asyncio.wait_for(upstream.ended.wait(), 1.0)
    assert upstream.open == 0
    with pytest.raises(UpstreamUnreachable):
        await lean.send("GET", url(lean), {}, None)


async def test_an_answer_still_streaming_after_the_drain_limit_is_cut(
    make_upstream: MakeUpstream,
) -> None:
    _, lean = await make_upstream(streaming(50, 0.1), drain_limit=0.3)
    response = await lean.send("GET", url(lean), {}, None)
    loop = asyncio.get_running_loop()
    await lean.close()
    started = loop.time()
    with pytest.raises(UpstreamProtocolError):
        await read_all(response)
    assert 0.25 < loop.time() - started < 1.0
    response.release()


async def test_interim_answers_are_skipped(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    upstream, lean = await make_upstream(answer(raw))
    response = await lean.send("POST", url(lean), {}, b"x")
    assert response.status == 200
    assert "Link" not in response.headers
    assert await response.read_exactly(2) == b"ok"
    response.release()
    assert await get(lean) == b"ok"
    assert upstream.connections == 1


@pytest.mark.parametrize("status", [b"000", b"099"])
async def test_a_status_under_100_is_a_protocol_error_not_an_interim_answer(
    make_upstream: MakeUpstream, status: bytes
) -> None:
    """llhttp reads any three digits; only 1xx is interim (099 was waited past until
    the read timeout)."""
    _, lean = await make_upstream(answer(b"HTTP/1.1 " + status + b" X\r\n\r\n" + OK))
    with pytest.raises(UpstreamProtocolError, match="no HTTP status"):
        await lean.send("GET", url(lean), {}, None)


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize(("field", "length"), [(b"Content-Length: 10\r\n", 0), (b"", None)])
async def test_no_body_statuses_have_no_body_and_keep_the_connection(
    make_upstream: MakeUpstream, status: int, field: bytes, length: int | None
) -> None:
    raw = b"HTTP/1.1 %d X\r\n%s\r\n" % (status, field)
    upstream, lean = await make_upstream(answer(raw))
    for _ in range(2):
        response = await lean.send("GET", url(lean), {}, None)
        assert (response.status, response.content_length) == (status, length)
        assert await response.next_chunk() == b""
        response.release()
    assert upstream.connections == 1


async def test_a_head_answer_has_no_body(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    _, lean = await make_upstream(answer(raw))
    response = await lean.send("HEAD", url(lean), {}, None)
    assert (response.status, response.content_length) == (200, 0)
    assert await response.read_exactly(0) == b""
    assert await response.next_chunk() == b""
    response.release()


@pytest.mark.parametrize(("method", "status"), [("GET", 204), ("GET", 304), ("HEAD", 200)])
async def test_the_aiohttp_transport_has_no_body_where_none_follows(
    method: str, status: int
) -> None:
    """As on lean: 0 whatever Content-Length says (RFC 9112 §6.3). aiohttp's response
    reported the field, and the relay waited for 10 bytes that never come: 502."""
    upstream = RawUpstream(answer(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status))
    port = await upstream.start()
    try:
        async with aiohttp.ClientSession() as session:
            transport = AiohttpTransport(session)
            response = await transport.send(method, URL(f"http://127.0.0.1:{port}/x"), {}, None)
            assert (response.status, response.content_length) == (status, 0)
            assert await response.read_exactly(0) == b""
            response.release()
    finally:
        assert upstream.server is not None
        upstream.server.close()
        await upstream.server.wait_closed()


async def test_a_redirect_is_returned_not_followed(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 302 Found\r\nLocation: /base/elsewhere\r\nContent-Length: 0\r\n\r\n"
    upstream, lean = await make_upstream(answer(raw))
    response = await lean.send("GET", url(lean), {}, None)
    assert (response.status, response.headers["Location"]) == (302, "/base/elsewhere")
    response.release()
    assert len(upstream.requests) == 1


async def test_a_released_response_can_no_longer_be_read(make_upstream: MakeUpstream) -> None:
    _, lean = await make_upstream(answer(OK))
    response = await lean.send("GET", url(lean), {}, None)
    response.release()
    response.release()  # twice is harmless
    with pytest.raises(RuntimeError, match="released"):
        await response.read_exactly(2)


# -- a hostile upstream ------------------------------------------------------------------


def endless(prefix: bytes, filler: bytes) -> Respond:
    async def respond(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(prefix)
        try:
            for _ in range(10_000):  # 10 MB at most, far past every limit
                writer.write(filler)
                await writer.drain()
        except ConnectionError:
            pass
        return False

    return respond


@pytest.mark.parametrize(
    ("prefix", "filler"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 1000),
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: header\r\n" * 60),
        (b"HTTP/1.1 200 ", b"reason " * 150),
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 40),
    ],
    ids=["endless-header", "endless-headers", "endless-reason", "endless-interim"],
)
async def test_an_endless_head_is_cut_off(
    make_upstream: MakeUpstream, prefix: bytes, filler: bytes
) -> None:
    _, lean = await make_upstream(endless(prefix, filler))
    with pytest.raises(UpstreamProtocolError, match="head over the limit"):
        await lean.send("GET", url(lean), {}, None)


@pytest.mark.parametrize(
    ("prefix", "filler"),
    [
        (b"", b"0" * 1000),  # a chunk-size line of zeros never overflows
        (b"1;", b"e" * 1000),  # an endless chunk extension
        (b"0\r\n", b"X-Trailer: v\r\n" * 70),  # endless trailers
    ],
    ids=["size-line", "extension", "trailers"],
)
async def test_endless_chunk_framing_is_cut_off(
    make_upstream: MakeUpstream, prefix: bytes, filler: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    _, lean = await make_upstream(endless(head + prefix, filler))
    response = await lean.send("GET", url(lean), {}, None)
    with pytest.raises(UpstreamProtocolError, match="framing"):
        await read_all(response)
    response.release()


async def test_a_chunk_size_past_64_bits_is_a_protocol_error(make_upstream: MakeUpstream) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"F" * 40 + b"\r\n"
    _, lean = await make_upstream(answer(raw))
    response = await lean.send("GET", url(lean), {}, None)
    with pytest.raises(UpstreamProtocolError):
        await read_all(response)
    response.release()


async def test_a_huge_declared_chunk_cut_short_is_a_protocol_error(
    make_upstream: MakeUpstream,
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7FFFFFFFFFFFFFFF\r\nabc"
    _, lean = await make_upstream(answer(raw, keep=False))
    response = await lean.send("GET", url(lean), {}, None)
    received: list[bytes] = []
    with pytest.raises(UpstreamProtocolError, match="mid-body"):
        await read_all(response, into=received)
    assert received == [b"abc"]
    response.release()


# -- TLS ---------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for "localhost" with a throwaway certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = self_signed_certificate(
        key,
        "localhost",
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=True, path_length=None), True),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_https_upstream_is_verified_and_sent_sni(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    server, client = self_signed(tmp_path)
    names: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server.sni_callback = record_sni
    upstream, lean = await make_upstream(
        answer(OK), ssl_server=server, ssl_client=client, host="localhost"
    )
    for _ in range(3):
        assert await get(lean) == b"ok"
    assert names == ["localhost"]
    assert upstream.connections == 1


async def test_an_untrusted_https_upstream_is_unreachable(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    server, _ = self_signed(tmp_path)
    _, lean = await make_upstream(answer(OK), ssl_server=server, host="localhost")
    with pytest.raises(UpstreamUnreachable):
        await lean.send("GET", url(lean), {}, None)


# -- end to end through the broker (both transports) --------------------------------------


@pytest.mark.forwarding
async def test_hop_by_hop_fields_from_the_upstream_never_reach_the_browser(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if not request.path.startswith("/checkout/"):
            return await sandbox.delegate(request)
        response = web.StreamResponse(
            headers={
                # A field the broker would relay, named hop-by-hop: dropped all the same.
                "Connection": "keep-alive, Content-Language",
                "Content-Language": "hop",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Trailer": "X-Sum",
                "Upgrade": "h2c",
                "ETag": '"kept"',
                "Content-Type": "application/json",
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"id":', b' "inv_1"', b"}"):
            await response.write(part)
        await response.write_eof()
        return response

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url("")))
    session = await new_session(client)
    response = await client.get("/checkout/invoice", headers=auth(session))
    assert response.status == 200
    assert await response.json() == {"id": "inv_1"}
    names = {name.lower() for name in response.headers}
    assert not names & {
        "content-language",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    }
    assert response.headers["ETag"] == '"kept"'


@pytest.mark.forwarding
@pytest.mark.parametrize("size", [2, 100_000])  # one write, and streamed (over 64 KiB)
async def test_answers_keep_their_length_and_carry_one_request_id(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer, size: int
) -> None:
    body = b"x" * size

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if not request.path.startswith("/checkout/"):
            return await sandbox.delegate(request)
        headers = {"X-Request-Id": "from-upstream", "Content-Type": "application/pdf"}
        return web.Response(body=body, headers=headers)

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url("")))
    session = await new_session(client)
    response = await client.get(
        "/checkout/invoice", headers={**auth(session), "X-Request-Id": "req-1"}
    )
    assert response.status == 200
    assert response.headers.getall("Content-Length") == [str(size)]  # never chunked
    assert "Transfer-Encoding" not in response.headers
    assert response.headers.getall("X-Request-Id") == ["req-1"]  # the broker's, once
    assert response.headers.getall("Cache-Control") == ["no-store"]
    assert response.headers["Content-Type"] == "application/pdf"
    assert await response.read() == body


@pytest.mark.slow
@pytest.mark.forwarding
async def test_a_stream_in_flight_survives_a_reload_that_replaces_its_account(
    make_broker: MakeBroker, sandbox: Sandbox, aiohttp_raw_server: AiohttpRawServer
) -> None:
    """The retired account is closed after pool_wait + connect_timeout + read_timeout
    (3 s here), but read_timeout bounds silence only: an answer that keeps coming (4.8 s
    here) outlasts it. Lean's close cut it mid-body; now it finishes, as on aiohttp."""
    parts, pause = 12, 0.4

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if not request.path.startswith("/checkout/"):
            return await sandbox.delegate(request)
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(parts):
            await response.write(b"x" * 1000)
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url(""), read_timeout=1.0))
    gateway = client.app[gateway_key]
    session = await new_session(client)
    response = await client.get("/checkout/invoice/pdf-link", headers=auth(session))
    assert response.status == 200
    settings = gateway.settings
    outcome = await gateway.reload(
        replace(settings, tokens=replace(settings.tokens, refresh_margin=30.0))
    )
    assert outcome.partners == {"default": "replaced"}
    assert len(await response.read()) == parts * 1000  # ClientPayloadError when cut


@pytest.mark.forwarding
@pytest.mark.parametrize("status", [200, 204])
async def test_empty_answers_pass_through_the_broker(
    make_broker: MakeBroker,
    sandbox: Sandbox,
    aiohttp_raw_server: AiohttpRawServer,
    status: int,
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if not request.path.startswith("/checkout/"):
            return await sandbox.delegate(request)
        return web.Response(status=status)

    raw = await aiohttp_raw_server(handler)
    client = await make_broker(make_settings(raw.make_url("")))
    session = await new_session(client)
    response = await client.get("/checkout/invoice", headers=auth(session))
    assert response.status == status
    assert await response.read() == b""


def test_the_transport_runs_on_uvloop(unused_tcp_port: int) -> None:
    """Production runs uvloop, whose loop API differs in details from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if "silent" in request.line:
            await asyncio.sleep(1.0)
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        writer.write(chunked if "chunked" in request.line else OK)
        return True

    async def scenario() -> None:
        upstream = RawUpstream(respond)
        port = await upstream.start()
        base = URL(f"http://127.0.0.1:{port}")
        settings = UpstreamSettings(
            base_url=base, client_id="c", client_secret="s", read_timeout=0.2
        )
        lean = LeanTransport(settings)
        try:
            assert await get(lean, "/x") == b"ok"
            assert await get(lean, "/chunked") == b"ok"
            with pytest.raises(TimeoutError):
                await lean.send("GET", base / "silent", {}, None)
            assert await get(lean, "/x") == b"ok"
            assert upstream.connections == 2
        finally:
            await lean.close()
            assert upstream.server is not None
            upstream.server.close()
        refused = URL(f"http://127.0.0.1:{unused_tcp_port}")
        nowhere = LeanTransport(
            UpstreamSettings(base_url=refused, client_id="c", client_secret="s")
        )
        with pytest.raises(UpstreamUnreachable):
            await nowhere.send("GET", refused / "x", {}, None)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# -- configuration -----------------------------------------------------------------------


def test_the_transport_is_chosen_in_configuration(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        signing_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    environ = {
        "BROKER_UPSTREAM_CLIENT_ID": "cid",
        "BROKER_UPSTREAM_CLIENT_SECRET": "secret",
        "BROKER_SESSIONS_API_KEYS": "key-one-0123456789abc",
        "BROKER_SESSIONS_SIGNING_KEY_FILE": str(key_file),
    }
    defaults = REPO / "config" / "broker.toml"
    assert load_settings(defaults, environ).upstream.transport == "lean"
    fallback = {**environ, "BROKER_UPSTREAM_TRANSPORT": "aiohttp"}
    assert load_settings(defaults, fallback).upstream.transport == "aiohttp"
    with pytest.raises(ConfigError, match=r"upstream\.transport: must be one of aiohttp, lean"):
        load_settings(defaults, {**environ, "BROKER_UPSTREAM_TRANSPORT": "httpx"})


@pytest.mark.forwarding
async def test_the_gateway_builds_the_configured_transport(
    make_broker: MakeBroker, sandbox: Sandbox, transport: str
) -> None:
    client = await make_broker(make_settings(sandbox.url))
    built = client.app[gateway_key].first.transport
    assert type(built) is (LeanTransport if transport == "lean" else AiohttpTransport)


async def test_slots_are_bounded_fifo_and_survive_cancelled_waiters() -> None:
    slots = Slots(2)
    assert slots.take_now()
    assert slots.take_now()
    assert not slots.take_now()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.take()
        order.append(name)

    first, doomed, last = (asyncio.create_task(wait(n)) for n in ("first", "doomed", "last"))
    await asyncio.sleep(0)
    doomed.cancel()  # a waiter that gives up must not swallow a slot
    await asyncio.sleep(0)
    slots.give()
    slots.give()
    await asyncio.gather(first, last)
    assert order == ["first", "last"]
    assert not slots.take_now()  # both slots are held again
    slots.give()
    slots.give()
    assert [slots.take_now() for _ in range(3)] == [True, True, False]


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    slots = Slots(1)
    assert slots.take_now()
    unlucky = asyncio.create_task(slots.take())
    patient = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # the slot goes to `unlucky`...
    unlucky.cancel()  # ...which is cancelled before it runs again
    await asyncio.wait_for(patient, 1.0)  # so it must reach `patient`
    assert unlucky.cancelled()
    assert not slots.take_now()

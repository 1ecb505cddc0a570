"""One keep-alive HTTP/1.1 connection to the upstream: an asyncio.Protocol fed to llhttp.

The connection carries one exchange at a time (no pipelining). Parser callbacks only
record what arrived and wake the one waiting reader; the reader checks the state and
raises. Every failure is final: the connection is aborted and never pooled again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from broker.headers import CONTENT_LENGTH, TRANSFER_ENCODING
from broker.upstream.transport import (
    MAX_RESPONSE_HEAD,
    NO_BODY_STATUSES,
    UpstreamProtocolError,
    UpstreamReset,
)

# Status line and header fields: the bound both transports keep (aiohttp's client also
# allows 8 KiB per line); a proxy relaying one JSON API does not need more in total.
MAX_HEAD: Final = MAX_RESPONSE_HEAD
# Chunk-size lines, chunk extensions and trailers between two body bytes: without a bound
# a hostile upstream could keep the parser busy forever sending framing and no body.
MAX_FRAMING: Final = 64 * 1024
# Buffered body that pauses reading from the socket, and the level that resumes it: the
# upstream is slowed down to the caller's pace instead of filling our memory.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
_NO_HEADERS: Final[CIMultiDictProxy[str]] = CIMultiDictProxy(CIMultiDict())


class ClosedBeforeAnswer(UpstreamReset):
    """The connection ended before the first response byte (maybe a stale keep-alive)."""


class UpstreamConnection(asyncio.Protocol):
    """The socket, the parser and the state of the current exchange."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_started = 0.0
        self._last_read = 0.0
        self._body: deque[bytes] = deque()
        self._begin(head_only=False)
        self.in_flight = False

    def _begin(self, *, head_only: bool) -> None:
        self.in_flight = True
        self._head_only = head_only
        self._answered = False
        self._head_size = 0  # bytes fed while the head was incomplete
        self._fields_size = 0
        self._reason = b""
        self._fields: list[tuple[str, str]] = []
        self._headers_done = False
        self._complete = False
        self._eof_body = False
        self._keep_alive = False
        self._body.clear()
        self._buffered = 0
        self._body_events = 0
        self._framing = 0
        self._error: BaseException | None = None
        self.status = 0
        self.reason = ""
        self.headers = _NO_HEADERS
        self.content_length: int | None = None

    # -- the exchange, as the pool and the response see it ------------------------------

    @property
    def usable(self) -> bool:
        # is_closing: the socket failed and connection_lost is still on its way.
        transport = self._transport
        return (
            not self.closed
            and self._error is None
            and transport is not None
            and not transport.is_closing()
        )

    @property
    def reusable(self) -> bool:
        """The whole response was received and the upstream keeps the connection open.

        Unread body bytes already in the buffer don't matter: they are dropped, as
        aiohttp does for a response released after its payload reached EOF.
        """
        return (
            self._complete
            and self._keep_alive
            and self.usable
            # An early answer (a 401 before our body was sent): the rest of the body would
            # reach the upstream as the start of the next request.
            and self._transport is not None
            and not self._transport.get_write_buffer_size()
        )

    async def exchange(self, request: bytes, *, head_only: bool) -> None:
        """Write *request* in one go, then wait for the final (non-1xx) response head."""
        transport = self._transport
        if transport is None:  # never connected: nothing was written
            raise ClosedBeforeAnswer("no connection to write to")
        self._begin(head_only=head_only)
        transport.write(request)
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_exactly(self, size: int) -> bytes:
        while self._buffered < size:
            if self._complete:
                raise UpstreamProtocolError("body shorter than its Content-Length")
            if self._error is not None:
                raise self._error
            await self._wait_for_body()
        return self._take(size)

    async def next_chunk(self) -> bytes:
        """Whatever body is buffered (waiting for some), or b"" once the body is over."""
        while not self._buffered:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait_for_body()
        return self._take(self._buffered)

    def finish(self) -> None:
        """The exchange is over and the connection goes back to the pool."""
        self.in_flight = False
        self._body.clear()
        self._buffered = 0
        if self._paused:
            self._set_reading(paused=False)
        self.idle_since = self._loop.time()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- waiting ---------------------------------------------------------------------

    async def _wait_for_body(self) -> None:
        if self._paused:  # the reader wants more than the high-water mark holds
            self._set_reading(paused=False)
        await self._wait()

    async def _wait(self) -> None:
        """Until the parser or the socket reports something, or read_timeout of silence."""
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        self._wait_started = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._wait_started + self._read_timeout, self._check_idle)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_idle(self) -> None:
        # One timer per connection, not per wait: left running when a wait ends, and
        # when it fires pushed forward to the current wait's deadline (or dropped when
        # nobody waits). Arming and cancelling one per wait cost every request.
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return  # the next wait arms a new one
        deadline = max(self._last_read, self._wait_started) + self._read_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_idle)
            return
        self._fail(TimeoutError(f"no byte from the upstream in {self._read_timeout} s"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.abort()
        self._wake()

    def _take(self, size: int) -> bytes:
        body = self._body
        if size == self._buffered:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
        else:
            joined = b"".join(body)
            data = joined[:size]
            body.clear()
            body.append(joined[size:])
        self._buffered -= size
        if self._paused and self._buffered <= LOW_WATER:
            self._set_reading(paused=False)
        return data

    def _set_reading(self, *, paused: bool) -> None:
        self._paused = paused
        if self._transport is not None and not self.closed:
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_flight:
            # Bytes nobody asked for: the framing of this connection can't be trusted.
            self._fail(UpstreamProtocolError("unsolicited bytes from the upstream"))
            return
        self._answered = True
        self._last_read = self._loop.time()
        events = self._body_events
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            # A limit raised from a callback comes back wrapped; keep its message.
            own = exc.__context__
            error = own if isinstance(own, UpstreamProtocolError) else None
            self._fail(error or UpstreamProtocolError(f"unparsable response: {exc}"))
            return
        if not self._headers_done:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:  # e.g. one endless header line
                self._fail(UpstreamProtocolError("response head over the limit"))
        elif not self._complete:
            self._framing = 0 if self._body_events != events else self._framing + len(data)
            if self._framing > MAX_FRAMING:
                self._fail(UpstreamProtocolError("chunk framing without body bytes"))

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost tells the reader

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:  # it would keep this connection alive until it fires
            self._timer.cancel()
            self._timer = None
        if self.in_flight and not self._complete and self._error is None:
            if not self._headers_done:
                error: UpstreamReset = (
                    UpstreamReset("upstream closed mid-headers")
                    if self._answered
                    else ClosedBeforeAnswer("upstream closed the connection before answering")
                )
                error.__cause__ = exc
                self._error = error
            elif self._eof_body:
                self._complete = True  # a body delimited by the end of the connection
            else:
                self._error = UpstreamProtocolError("upstream closed mid-body")
                self._error.__cause__ = exc
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status  # llhttp may hand it over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # trailers: nothing downstream can use them
        self._fields.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )
        self._fields_size += len(name) + len(value) + 4
        if self._fields_size > MAX_HEAD:
            raise UpstreamProtocolError("response head over the limit")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: wait for the final answer
            if status < 100:  # llhttp takes any three digits: 099 is no interim answer
                raise UpstreamProtocolError(f"status {status} is no HTTP status")
            self._reason, self._fields = b"", []
            return
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        self.status, self.headers = status, headers
        self.reason = self._reason.decode("utf-8", "surrogateescape")
        # Only after the headers: llhttp resets its flags once the message is complete.
        self._keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        if self._head_only or status in NO_BODY_STATUSES:
            # Whatever Content-Length says, no body follows; without one, None as aiohttp.
            self.content_length = 0 if CONTENT_LENGTH in headers else None
            if self._head_only:
                # llhttp can't be told that a HEAD answer has no body, so the parser
                # would misread the next response: this connection is not reused.
                self._complete, self._keep_alive = True, False
        elif codings := headers.getall(TRANSFER_ENCODING, ()):
            # llhttp decides the framing; the body ends at EOF unless chunked comes last.
            self._eof_body = codings[-1].rsplit(",", 1)[-1].strip().lower() != "chunked"
        elif (length := headers.get(CONTENT_LENGTH)) is not None:
            self.content_length = int(length)  # llhttp refused anything but digits
        else:
            self._eof_body = True
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        self._body.append(body)
        self._buffered += len(body)
        self._body_events += 1
        if self._buffered > HIGH_WATER and not self._paused:
            self._set_reading(paused=True)
        self._wake()

    def on_message_complete(self) -> None:
        if not self._headers_done or self._head_only:
            return  # an interim 1xx answer, or the HEAD answer we completed ourselves
        self._complete = True
        self._wake()

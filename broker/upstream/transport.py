"""How proxied calls reach the upstream: a small seam with aiohttp's client behind it.

The proxy only needs to send a request and read a response (all at once when small,
in chunks when large). Keeping that behind ``UpstreamTransport`` lets a leaner HTTP/1.1
client slot in for the hot path, chosen by configuration, without touching handlers.
Errors a transport raises: ``TimeoutError`` (no byte in time), ``UpstreamUnreachable``
(no connection), ``UpstreamProtocolError`` (garbage, early close); aiohttp's own
exceptions are translated the same way by ``upstream.UpstreamCall``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Mapping
from typing import Final, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from broker.bounded import memo
from broker.headers import CONTENT_LENGTH

STREAM_CHUNK = 64 * 1024
# RFC 9110 §9.2.2: safe to send again when a connection died before answering.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# The methods a browser's SDK sends (RFC 9110's, without CONNECT and TRACE).
STANDARD_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Response head (status line and fields) at most this large on either transport.
MAX_RESPONSE_HEAD: Final = 32 * 1024
# RFC 9112 §6.3: answers that end at their head, whatever their Content-Length says.
NO_BODY_STATUSES: Final = frozenset({204, 304})
# What llhttp (the lean transport's parser) requires of a response head and aiohttp's
# lenient client parser does not: field names that are tokens (RFC 9110 §5.6.2) and
# values without a CTL but HTAB (§5.5).
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class TransportError(Exception):
    """A failure of a non-aiohttp transport (aiohttp raises its own ClientError)."""


class UpstreamUnreachable(TransportError):
    """No connection to the upstream could be made."""


class UpstreamBusy(TransportError):
    """No upstream connection could be had in time (the pool, or the caller's share of
    it, is full): the caller gets a fast 503 rather than an unbounded wait."""


class UpstreamReset(UpstreamUnreachable):
    """The connection ended before a complete response head: an idempotent request may
    be sent again on a new connection."""


class UpstreamProtocolError(TransportError):
    """The upstream broke HTTP: unparsable answer, or closed before the body ended."""


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    async def read_exactly(self, size: int) -> bytes:
        """The next *size* body bytes; UpstreamProtocolError if the body ends first."""

    async def next_chunk(self) -> bytes:
        """The next part of the body as it arrives, or b"" once the body is over.

        A coroutine rather than an async generator: the modules that mypyc compiles
        (the compiled wheel) cannot hold async generators."""

    def release(self) -> None:
        """Give the connection back (or close it if the body was not fully read)."""


class UpstreamTransport(Protocol):
    async def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        holder: str = "",
    ) -> UpstreamResponse:
        """Send; *holder* (a customer) may hold at most its share of the connections."""

    async def close(self) -> None: ...


class Slots:
    """At most ``size`` holders at once; waiters are served first come, first served.

    asyncio.Semaphore does the same but scans its waiters on every call, and this
    pool takes and gives back a slot for every proxied request.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot; the caller bounds the wait."""
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):  # give() may have dropped it already
                    self._waiters.remove(waiter)
            else:
                self.give()  # handed a slot just as we were cancelled: pass it on
            raise

    async def take_within(self, seconds: float) -> None:
        """Wait at most *seconds* for a slot (``pool_wait``), else ``UpstreamBusy``: a
        request past its deadline gets a fast 503, not a place in an endless queue. For
        both transports, after ``take_now`` found none free."""
        try:
            async with asyncio.timeout(seconds):
                await self.take()
        except TimeoutError:
            raise UpstreamBusy("no free upstream connection within pool_wait") from None

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the first waiter
                return
        self._free += 1


class HolderSlots:
    """At most ``size`` connections per holder, so that one customer's stuck calls
    cannot take the whole pool; past it, ``UpstreamBusy`` at once (no queue: the
    holder's own calls are what is stuck). The empty holder is not counted."""

    __slots__ = ("_held", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._held: dict[str, int] = {}

    def take(self, holder: str) -> None:
        if not holder:
            return
        held = self._held.get(holder, 0)
        if held >= self._size:
            raise UpstreamBusy("this customer holds its share of upstream connections")
        self._held[holder] = held + 1

    def give(self, holder: str) -> None:
        held = self._held.get(holder, 0)
        if held > 1:
            self._held[holder] = held - 1
        elif held:
            del self._held[holder]

    def held(self, holder: str) -> int:
        return self._held.get(holder, 0)


class AiohttpResponse:
    __slots__ = ("_holder", "_response", "_transport")

    def __init__(
        self, response: aiohttp.ClientResponse, transport: AiohttpTransport, holder: str
    ) -> None:
        self._response = response
        self._transport: AiohttpTransport | None = transport
        self._holder = holder

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def reason(self) -> str:
        return self._response.reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    @property
    def content_length(self) -> int | None:
        response = self._response
        if response.status in NO_BODY_STATUSES or response.method == "HEAD":
            # No body follows (aiohttp's parser reads none): 0, not the field's value,
            # or relay_response would wait for bytes that never come. As lean does.
            return 0 if CONTENT_LENGTH in response.headers else None
        return response.content_length

    async def read_exactly(self, size: int) -> bytes:
        if not size:  # a 204's payload is aiohttp's EmptyStreamReader, which raises here
            return b""
        try:
            return await self._response.content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise UpstreamProtocolError("body shorter than its Content-Length") from exc

    async def next_chunk(self) -> bytes:
        return await self._response.content.read(STREAM_CHUNK)

    def release(self) -> None:
        self._response.release()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.give_back(self._holder)


class AiohttpTransport:
    """The default transport: the app's shared aiohttp ClientSession, with the pool
    bounds the lean transport has (aiohttp's connector waits for a free connection
    without a deadline, and lets one customer take every connection)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_connections: int = 256,
        pool_wait: float = 1.0,
        max_per_holder: int = 256,
    ) -> None:
        self._session = session
        self._slots = Slots(max_connections)
        self._pool_wait = pool_wait
        self._holders = HolderSlots(max_per_holder)

    async def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        holder: str = "",
    ) -> UpstreamResponse:
        self._holders.take(holder)
        if not self._slots.take_now():
            try:
                await self._slots.take_within(self._pool_wait)
            except BaseException:
                self._holders.give(holder)
                raise
        try:
            response = await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            self.give_back(holder)
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise
            raise UpstreamReset("the upstream reset the connection") from exc
        except BaseException:
            self.give_back(holder)
            raise
        problem = _head_problem(response)
        if problem is not None:
            response.close()
            self.give_back(holder)
            raise UpstreamProtocolError(problem)
        return AiohttpResponse(response, self, holder)

    def give_back(self, holder: str) -> None:
        self._slots.give()
        self._holders.give(holder)

    async def close(self) -> None:
        return None  # the session belongs to the gateway, which closes it


def _is_token(name: bytes) -> bool:
    return _TOKEN.fullmatch(name) is not None


def _short(name: bytes) -> bool:
    return len(name) <= 64


# Field names repeat on every answer: each is judged once (the upstream chooses them,
# so only short ones are kept: the memo stays small).
_token_name: Final = memo(_is_token, 1024, keep=_short)


def _head_problem(response: aiohttp.ClientResponse) -> str | None:
    """Why the head must not be used, or None: the rules llhttp holds the lean transport
    to, so that both transports refuse the same heads. ``Content-Length : 2`` above all
    (RFC 9112 §5.1: MUST be refused): aiohttp takes it for another field and reads the
    body to EOF, a framing desync."""
    size = len(response.reason or "") + 16
    for name, value in response.raw_headers:
        size += len(name) + len(value) + 4
        if not _token_name(name):
            return "a response field name that is no token"
        if _CTL.search(value):
            return "a control character in a response field value"
    if size > MAX_RESPONSE_HEAD:
        return "response head over the limit"
    return None

"""A lean HTTP/1.1 keep-alive pool to the one upstream (``upstream.transport = "lean"``).

aiohttp's client spends ~140 µs of CPU per proxied request; most of it is generality
the proxy path never uses (redirects, cookies, auth, tracing, per-request timeouts).
This pool speaks only what the proxy needs: one origin, requests with a known body,
responses parsed by llhttp (httptools), keep-alive reuse, and the transport seam's
errors (see ``broker.upstream.transport``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDictProxy
from yarl import URL

from broker.bounded import memo
from broker.config.model import UpstreamSettings
from broker.upstream.lean_connection import ClosedBeforeAnswer, UpstreamConnection
from broker.upstream.transport import (
    IDEMPOTENT_METHODS,
    STANDARD_METHODS,
    HolderSlots,
    Slots,
    UpstreamResponse,
    UpstreamUnreachable,
)

__all__ = ["LeanResponse", "LeanTransport", "Slots"]

# Kept-alive connections unused this long are closed (aiohttp's keepalive_timeout is 30 s
# in open_session too); most servers drop theirs after 60 s or more.
IDLE_TIMEOUT = 30.0
# After close, how long answers still streaming may go on before their connections are
# aborted: a reload retires an account with its downloads in flight, and read_timeout
# bounds only silence, so an answer that keeps coming needs a bound of its own.
DRAIN_LIMIT = 300.0
# Framing is the transport's business; a caller's value would desynchronise the stream.
_OWN_FIELDS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_TARGET: Final = re.compile(r"[\x00-\x20\x7f]")
# RFC 9110 §8.6: methods whose content has a meaning say how long it is, even empty
# (some front ends answer 411 otherwise). The proxy passes body=None for an empty one.
_CONTENT_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


def _judge_field(name: str) -> bool:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header {name!r} with unsafe characters")
    return name.lower() not in _OWN_FIELDS


# Field name -> sent (True) or framing we own (False); names are few and fixed by the
# caller's allowlist, so each is judged once rather than per request. An unsafe name
# raises, and an exception is never remembered: it is judged (and refused) every time.
_sent_field: Final = memo(_judge_field, 1024)


class LeanResponse:
    """The head of an upstream answer, and its body read straight from the connection."""

    __slots__ = ("_conn", "_holder", "_transport", "content_length", "headers", "reason", "status")

    def __init__(self, transport: LeanTransport, conn: UpstreamConnection, holder: str) -> None:
        self._transport = transport
        self._holder = holder
        self._conn: UpstreamConnection | None = conn
        self.status = conn.status
        self.reason = conn.reason
        self.headers: CIMultiDictProxy[str] = conn.headers
        self.content_length = conn.content_length

    async def read_exactly(self, size: int) -> bytes:
        return await self._live().read_exactly(size)

    async def next_chunk(self) -> bytes:
        return await self._live().next_chunk()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport.give_back(conn, self._holder)

    def _live(self) -> UpstreamConnection:
        # A released connection may already carry someone else's response.
        if self._conn is None:
            raise RuntimeError("the upstream response was released")
        return self._conn


class LeanTransport:
    """Up to ``max_connections`` keep-alive connections to ``base_url``'s origin."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        base_url: URL | None = None,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        drain_limit: float = DRAIN_LIMIT,
    ) -> None:
        base = settings.base_url if base_url is None else base_url  # a partner's upstream
        host_field = base.host_port_subcomponent
        if base.raw_host is None or base.port is None or host_field is None:
            raise ValueError(f"upstream.base_url has no host or port: {base}")
        self._host, self._port = base.raw_host, base.port
        self._host_field = host_field
        self._tls = base.scheme == "https"
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._idle_timeout = idle_timeout
        self._drain_limit = drain_limit
        # Counts requests in flight, so connections (busy + idle) never exceed the bound:
        # a new one is opened only when no idle one is left.
        self._slots = Slots(settings.max_connections)
        self._pool_wait = settings.pool_wait
        self._holders = HolderSlots(settings.max_connections_per_customer)
        self._idle: list[UpstreamConnection] = []  # LIFO: surplus connections age out
        self._open: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._drain_cutoff: asyncio.TimerHandle | None = None

    async def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        holder: str = "",
    ) -> UpstreamResponse:
        if self._closed:
            raise UpstreamUnreachable("the upstream transport is closed")
        request = self._serialize(method, url, headers, body)
        self._holders.take(holder)
        if not self._slots.take_now():  # the usual case: a slot at once, no wait, no timer
            try:
                await self._slots.take_within(self._pool_wait)
            except BaseException:
                self._holders.give(holder)
                raise
        try:
            conn = await self._exchange(method, request)
        except BaseException:
            self._slots.give()
            self._holders.give(holder)
            raise
        return LeanResponse(self, conn, holder)

    async def close(self) -> None:
        """Take no more requests and close the idle connections; a busy one finishes
        its exchange and is closed when released (requests in flight finish with what
        they started with, docs/partners.md), or is aborted after ``drain_limit``."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        if self._open:
            self._arm_drain_cutoff()
        await asyncio.sleep(0)  # let connection_lost run, so sockets close before the loop

    def _arm_drain_cutoff(self) -> None:
        if self._drain_cutoff is None:
            loop = asyncio.get_running_loop()
            self._drain_cutoff = loop.call_later(self._drain_limit, self._abort_open)

    def _abort_open(self) -> None:
        self._drain_cutoff = None
        for conn in self._open:
            conn.abort()  # its reader gets an UpstreamProtocolError (a cut stream)
        self._open.clear()

    def give_back(self, conn: UpstreamConnection, holder: str = "") -> None:
        """Pool *conn* if its exchange ended cleanly, else close it; free its slots."""
        self._holders.give(holder)
        if conn.reusable and not self._closed:
            conn.finish()
            self._idle.append(conn)
            if self._sweeper is None:
                self._arm_sweeper()
        else:
            self._discard(conn)
        self._slots.give()

    def _serialize(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        if url.raw_host != self._host or url.port != self._port:
            raise ValueError(f"the lean transport only reaches {self._host_field}")
        target = url.raw_path_qs  # byte for byte as the caller sent it
        # A standard method is a token for sure: a set lookup, not a regex call a request.
        method_safe = method in STANDARD_METHODS or _TOKEN.fullmatch(method)
        if not method_safe or _UNSAFE_TARGET.search(target):
            raise ValueError("request line with unsafe characters")
        parts = [f"{method} {target} HTTP/1.1\r\nHost: {self._host_field}\r\n"]
        values = []
        for name, value in headers.items():
            if _sent_field(name):
                parts.append(f"{name}: {value}\r\n")
                values.append(value)
        # CR, LF or NUL would end the field early: request smuggling. One scan per character
        # over every value (a tab cannot hide or fake one): `in` is a memchr, far quicker
        # than a regex stepping through the values byte by byte.
        joined = "\t".join(values)
        if "\r" in joined or "\n" in joined or "\x00" in joined:
            raise ValueError("header value with unsafe characters")
        if body is not None:  # never chunked on our side
            parts.append(f"Content-Length: {len(body)}\r\n")
        elif method in _CONTENT_METHODS:
            parts.append("Content-Length: 0\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("utf-8", "surrogateescape")
        return head + body if body else head

    async def _exchange(self, method: str, request: bytes) -> UpstreamConnection:
        head_only = method == "HEAD"
        conn = self._pop_idle()
        if conn is not None:
            try:
                await conn.exchange(request, head_only=head_only)
                return conn
            except ClosedBeforeAnswer:
                # The upstream dropped the kept-alive connection as we reused it. Only an
                # idempotent request may go again: a POST may have been acted on.
                self._discard(conn)
                if method not in IDEMPOTENT_METHODS:
                    raise
            except BaseException:
                self._discard(conn)
                raise
        conn = await self._connect()
        try:
            await conn.exchange(request, head_only=head_only)
        except BaseException:
            self._discard(conn)
            raise
        return conn

    def _pop_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            self._discard(conn)  # closed by the upstream while idle: never written to
        return None

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(loop, self._read_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                )
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise UpstreamUnreachable(f"cannot connect to the upstream: {exc}") from exc
        self._open.add(conn)
        if self._closed:  # for a request that was waiting for a slot as we closed
            self._arm_drain_cutoff()
        return conn

    def _discard(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        if conn.usable:
            conn.close()  # e.g. "Connection: close" or an unread body: a clean FIN
        else:
            conn.abort()
        if self._drain_cutoff is not None and not self._open:
            self._drain_cutoff.cancel()  # the last busy connection after close
            self._drain_cutoff = None

    def _arm_sweeper(self) -> None:
        oldest = self._idle[0].idle_since
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_at(oldest + self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = asyncio.get_running_loop().time() - self._idle_timeout
        idle = self._idle
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= cutoff:
            self._discard(idle[expired])
            expired += 1
        del idle[:expired]
        if idle:
            self._arm_sweeper()

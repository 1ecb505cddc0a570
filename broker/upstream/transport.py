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
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

STREAM_CHUNK = 64 * 1024


class TransportError(Exception):
    """A failure of a non-aiohttp transport (aiohttp raises its own ClientError)."""


class UpstreamUnreachable(TransportError):
    """No connection to the upstream could be made."""


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
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class AiohttpResponse:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

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
        return self._response.content_length

    async def read_exactly(self, size: int) -> bytes:
        try:
            return await self._response.content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise UpstreamProtocolError("body shorter than its Content-Length") from exc

    async def next_chunk(self) -> bytes:
        return await self._response.content.read(STREAM_CHUNK)

    def release(self) -> None:
        self._response.release()


class AiohttpTransport:
    """The default transport: the app's shared aiohttp ClientSession."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        response = await self._session.request(
            method, url, headers=headers, data=body, allow_redirects=False
        )
        return AiohttpResponse(response)

    async def close(self) -> None:
        return None  # the session belongs to the gateway, which closes it

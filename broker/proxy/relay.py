"""Forwarding one request upstream and streaming the answer back, headers cleaned."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy, istr

from broker.bounded import memo
from broker.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    UpstreamFailure,
)
from broker.headers import (
    AUTHORIZATION,
    BROKER_USER_AGENT,
    CACHE_CONTROL,
    CONNECTION,
    CONTENT_ENCODING,
    REQUEST_ID,
    RETRY_AFTER,
    USER_AGENT,
)
from broker.observability.exchange import Exchange
from broker.proxy.answer import Answer
from broker.proxy.cors import CorsPolicy
from broker.proxy.finishing import finish_headers
from broker.upstream.transport import (
    STREAM_CHUNK,
    TransportError,
    UpstreamProtocolError,
    UpstreamResponse,
)

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy Proxy-Connection.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The only browser headers the upstream gets; everything else (Authorization, Cookie,
# X-Forwarded-*, Origin, ...) stays at the broker.
FORWARDED_REQUEST_HEADERS = ("Accept", "Accept-Language", "Content-Type", "Idempotency-Key")
_FORWARDED: Final = tuple((istr(name), name.lower()) for name in FORWARDED_REQUEST_HEADERS)
_SINGLE_VALUED: Final = frozenset({"content-type", "idempotency-key"})
# What of the upstream's answer reaches the browser: what describes the body, and what
# the SDK reads (Retry-After). The broker chooses; it does not relay. Everything else
# stays here: cookies, Location, Alt-Svc, Strict-Transport-Security, CORS (the broker's
# to answer), the upstream's Server, Date, Cache-Control, request id and framing (the
# broker frames what it sends).
_RELAYED_RESPONSE_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-disposition",
        "content-encoding",
        "content-language",
        "etag",
        "last-modified",
        "retry-after",
    }
)
SMALL_BODY: Final = 64 * 1024
# An upstream 5xx body is read only for its ``code`` (the vendor's HttpError shape):
# this much of it, this quickly, or not at all.
FAILURE_BODY_LIMIT: Final = 16 * 1024
FAILURE_BODY_WITHIN: Final = 2.0
# What of that code reaches the log: a short identifier, or "unrecognised" (the
# upstream's text is not the broker's to log verbatim).
_UPSTREAM_CODE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
UNRECOGNISED_CODE: Final = "unrecognised"
_LONGEST_RETRY_AFTER: Final = 60
_NO_NAMES: Final[frozenset[str]] = frozenset()


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in ``Connection``: hop-by-hop for this connection only."""
    values = headers.getall(CONNECTION, ())
    if not values:  # most browser requests: HTTP/1.1 keeps the connection by default
        return _NO_NAMES
    if len(values) == 1:
        return _listed_names(values[0])  # most: "keep-alive", judged once
    return _names_in(",".join(values))


def _names_in(value: str) -> frozenset[str]:
    return frozenset(token.strip().lower() for token in value.split(","))


def _relayed_as(name: str) -> str:
    """*name* lowercased, or "" when the broker never relays that field."""
    lowered = name.lower()
    return lowered if lowered in _RELAYED_RESPONSE_HEADERS else ""


def _short(text: str) -> bool:
    return len(text) <= 64


# Values and names are few and repeat on every answer: each is judged once. Callers and
# the upstream choose them, so only short ones are kept: the memos stay small.
_listed_names: Final = memo(_names_in, 256, keep=_short)
_relayed_name: Final = memo(_relayed_as, 1024, keep=_short)


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], *, bearer: str, request_id: str
) -> dict[str, str]:
    named = connection_tokens(incoming)
    headers: dict[str, str] = {}
    for name, lowered in _FORWARDED:
        if lowered in named:
            continue
        values = incoming.getall(name, ())
        if not values:
            continue
        if len(values) > 1 and lowered in _SINGLE_VALUED:
            raise BadRequest(f"Duplicate {name} header.")
        headers[name] = ", ".join(values)
    headers[AUTHORIZATION] = f"Bearer {bearer}"
    headers[USER_AGENT] = BROKER_USER_AGENT
    headers[REQUEST_ID] = request_id
    return headers


Fields = list[tuple[str, str]]


def downstream_response_headers(upstream: CIMultiDictProxy[str]) -> Fields:
    """The upstream's fields the browser may see, as pairs: aiohttp's response makes its
    own multidict of them in one call (a multidict built here would be copied).

    The values are copied unchecked: aiohttp's writer refuses a control character (and
    drops the connection once the answer is committed), so no head with one gets this
    far. The transports answer it with UpstreamProtocolError (502): llhttp refuses it on
    lean, ``transport._head_problem`` on aiohttp, whose client parser lets it through."""
    named = connection_tokens(upstream)
    fields = [
        (name, value)
        for name, value in upstream.items()
        if (lowered := _relayed_name(name)) and lowered not in named
    ]
    fields.append((CACHE_CONTROL, "no-store"))
    return fields


async def read_body(request: web.Request, limit: int, within: float) -> bytes | None:
    """The whole request body (bounded, so that it can be replayed after a 401)."""
    encoding = request.headers.get(CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType("compressed request body")
    if not request.body_exists:
        return None
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"declared body of {request.content_length} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(within):  # a slow body must not hold a worker
            async for chunk in request.content.iter_chunked(STREAM_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge("streamed body over the limit")
    except TimeoutError:
        raise RequestTimeout("request body too slow") from None
    return bytes(body)


async def relay_response(
    request: web.Request, upstream: UpstreamResponse, request_id: str, cors: CorsPolicy | None
) -> web.StreamResponse:
    """Send the upstream's answer: small bodies whole, as an Answer (one write), large
    ones streamed. (A small one leaves the request id and CORS to the front door, as
    every answer does; a stream's headers are sent here, before the front door sees the
    response.)"""
    headers = downstream_response_headers(upstream.headers)
    if upstream.status == 429 and RETRY_AFTER not in upstream.headers:
        # The SDK waits Retry-After seconds before it retries; without one it retries at once.
        headers.append((RETRY_AFTER, "1"))
    length = upstream.content_length
    if length is None or length > SMALL_BODY:
        return await stream_back(request, upstream, headers, request_id, cors)
    # Read before answering, so a broken small body is still a clean 502/504; and one
    # write of headers and body instead of three costs a third of the syscalls.
    try:
        body = await upstream.read_exactly(length)
    except TimeoutError as exc:
        raise GatewayTimeout("upstream body timed out") from exc
    except (aiohttp.ClientError, UpstreamProtocolError) as exc:
        raise BadGateway("upstream body broken") from exc
    # No reason: the standard phrase. The upstream's is its own text, not the contract,
    # and a control character in it would make aiohttp refuse to write the status line.
    return Answer(body, status=upstream.status, headers=headers)


async def stream_back(
    request: web.Request,
    upstream: UpstreamResponse,
    headers: Fields,
    request_id: str,
    cors: CorsPolicy | None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=headers)  # standard phrase
    if upstream.content_length is not None:  # else chunked, or to EOF on HTTP/1.0
        response.content_length = upstream.content_length
    # Prepared here, so finished here: the front door sees this response only once sent.
    finish_headers(request, response.headers, request_id, cors)
    await response.prepare(request)
    # A failure from here on propagates: aiohttp drops the connection and the client
    # sees a truncated body, never a well-framed but incomplete one.
    while chunk := await upstream.next_chunk():
        await response.write(chunk)
    await response.write_eof()
    return response


async def upstream_failure(
    upstream: UpstreamResponse, exchange: Exchange, method: str
) -> UpstreamFailure:
    """The refusal that replaces an upstream 5xx answer: its status, the broker's body.
    The upstream's error ``code`` is recorded on *exchange* (the request_finished line)."""
    body = None if method == "HEAD" else await _failure_body(upstream)
    exchange.upstream_error_code = upstream_error_code(body)
    retry_after = None
    if upstream.status == 503:  # the broker's 503s always say when to come back
        retry_after = _retry_after(upstream.headers.get(RETRY_AFTER, ""))
    return UpstreamFailure(upstream.status, retry_after=retry_after)


async def _failure_body(upstream: UpstreamResponse) -> bytes | None:
    length = upstream.content_length
    if length is not None and length > FAILURE_BODY_LIMIT:
        return None
    try:
        async with asyncio.timeout(FAILURE_BODY_WITHIN):
            if length is not None:
                return await upstream.read_exactly(length)
            body = bytearray()
            while chunk := await upstream.next_chunk():
                body += chunk
                if len(body) > FAILURE_BODY_LIMIT:
                    return None
            return bytes(body)
    except (TimeoutError, aiohttp.ClientError, TransportError):
        return None  # the status is answer enough; the connection is not reused


def upstream_error_code(body: bytes | None) -> str | None:
    """The ``code`` of an upstream error body (``{"code", "message", ...}``) as it may
    be logged: None when the body has none, UNRECOGNISED_CODE when it is no short
    identifier."""
    if not body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        return None
    code = document.get("code") if isinstance(document, dict) else None
    if code is None:
        return None
    if isinstance(code, str) and _UPSTREAM_CODE.fullmatch(code):
        return code
    return UNRECOGNISED_CODE


def _retry_after(value: str) -> float:
    # Delay-seconds only (an HTTP-date would trust the upstream's clock), capped.
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 6:
        return float(min(max(int(value), 1), _LONGEST_RETRY_AFTER))
    return 1.0

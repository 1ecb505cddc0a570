"""Fuzz targets for the path canonicaliser and the header filters: each takes raw bytes
and asserts the properties that must hold for every input.

The same functions serve two callers: ``tests/fuzz/run.py`` (atheris, coverage-guided,
for a chosen number of seconds) and ``tests/fuzz/test_corpus.py`` (the committed corpus
replayed in every pytest run, without atheris). A target returns normally when the input
is accepted or refused the documented way, and raises (AssertionError, or whatever
escaped) when a property breaks: that input is a finding.

Where the broker reads bytes a client sent, the bytes go through aiohttp's own HTTP
parser first, as they would in production (what it refuses is a refusal: a 400 from the
runner); each target also feeds the same bytes to the filter directly, bypassing the
parser, since a filter must never raise anything but its refusal on any string.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote

from aiohttp import http_exceptions, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser, RawRequestMessage
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from broker.config.model import CorsSettings
from broker.errors import BadRequest, BrokerError, MethodNotAllowed, NotFound
from broker.headers import BROKER_USER_AGENT
from broker.proxy.allowlist import PROXIED_METHODS, RouteTable
from broker.proxy.cors import CorsPolicy
from broker.proxy.finishing import finish_headers
from broker.proxy.paths import MAX_TARGET_LENGTH, check_proxy_target, split_target
from broker.proxy.relay import (
    FORWARDED_REQUEST_HEADERS,
    connection_tokens,
    downstream_response_headers,
    upstream_request_headers,
)
from broker.proxy.targets import ProxyTargets

Target = Callable[[bytes], None]

PREFIXES: Final = ("/checkout/", "/checkout/v1/")
ORIGIN: Final = "https://upstream.example:8443/base"
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
BEARER: Final = "checkout-jwt-for-the-fuzzer"
REQUEST_ID: Final = "fuzz-request-1"
ALLOWED_ORIGIN: Final = "https://shop.example"

# The filters' contracts, written out here rather than imported: a test that read the
# allowlist from the code under test could not notice it growing.
REQUEST_FIELDS_SENT: Final = frozenset(
    {"accept", "accept-language", "content-type", "idempotency-key"}
)
BROKER_REQUEST_FIELDS: Final = frozenset({"authorization", "user-agent", "x-request-id"})
SINGLE_VALUED: Final = frozenset({"content-type", "idempotency-key"})
RESPONSE_FIELDS_RELAYED: Final = frozenset(
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
BROKER_RESPONSE_FIELDS: Final = frozenset(
    {
        "cache-control",
        "x-request-id",
        "server",
        "referrer-policy",
        "vary",
        "access-control-allow-origin",
        "access-control-expose-headers",
    }
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE_ASCII: Final = re.compile(r"[\x21-\x7e]*")

_loop: asyncio.AbstractEventLoop | None = None
_route_tables = (RouteTable(), RouteTable(allow_any=True))
_targets = tuple(ProxyTargets(ORIGIN, PREFIXES, table) for table in _route_tables)
_cors = CorsPolicy(CorsSettings(allowed_origins=(ALLOWED_ORIGIN,)))


def _parser_loop() -> asyncio.AbstractEventLoop:
    """aiohttp's parsers want a loop to hand payloads to; they never run it."""
    global _loop  # noqa: PLW0603 - one loop for the process, made on first use
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop


def parse_request(head: bytes) -> RawRequestMessage | None:
    """*head* as aiohttp's server parser reads it, or None where it refuses it."""
    loop = _parser_loop()
    parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, max_field_size=8190)
    try:
        messages, _, _ = parser.feed_data(head)
    except http_exceptions.HttpProcessingError:
        return None
    return messages[0][0] if messages else None


def parse_response_headers(head: bytes) -> CIMultiDictProxy[str] | None:
    """The fields of *head* as aiohttp's client parser reads them, or None."""
    loop = _parser_loop()
    parser = HttpResponseParser(BaseProtocol(loop), loop, 2**16, max_field_size=8190)
    try:
        messages, _, _ = parser.feed_data(head)
    except http_exceptions.HttpProcessingError:
        return None
    return messages[0][0].headers if messages else None


def lines_to_fields(data: bytes) -> CIMultiDictProxy[str]:
    """Fields straight from bytes, no parser: ``name:value`` per line, any characters."""
    fields: CIMultiDict[str] = CIMultiDict()
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        name, _, value = line.partition(":")
        fields.add(name, value.strip(" \t"))
    return CIMultiDictProxy(fields)


# -- the path canonicaliser ---------------------------------------------------------------


def paths(data: bytes) -> None:
    """Byte 0 picks the method and whether the allowlist is on; the rest is the target."""
    if not data:
        return
    method = METHODS[data[0] % len(METHODS)]
    table = (data[0] >> 4) & 1
    raw = data[1:]
    _judge_target(method, raw.decode("utf-8", "surrogateescape"), table)
    message = parse_request(method.encode() + b" " + raw + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    if message is not None:
        _judge_target(method, message.path, table)


def _judge_target(method: str, raw: str, table: int) -> None:
    try:
        path, query = check_proxy_target(raw, PREFIXES)
    except (BadRequest, NotFound):
        accepted = False
    else:
        accepted = True
        _assert_canonical(raw, path, query)
    refusal: BrokerError | None = None
    try:
        url = _targets[table].upstream_url(method, raw)
    except (BadRequest, NotFound, MethodNotAllowed) as exc:
        refusal = exc
    if refusal is not None:
        _assert_refusal(refusal, method, accepted)
        _assert_refused_again(method, raw, table, type(refusal))
        return
    assert accepted, "a target the checks refuse got an upstream URL"
    assert method in PROXIED_METHODS
    _assert_upstream_url(url, path, query)
    assert _targets[table].upstream_url(method, raw) == url  # remembered, not changed


def _assert_refusal(refusal: BrokerError, method: str, accepted: bool) -> None:
    if isinstance(refusal, MethodNotAllowed):
        assert accepted, "a 405 for a target the checks refuse"
        assert method not in refusal.allowed
        assert set(refusal.allowed) <= PROXIED_METHODS
    else:  # past the checks, only the allowlist refuses (404)
        assert not accepted or isinstance(refusal, NotFound), "refused after the checks passed"


def _assert_canonical(raw: str, path: str, query: str) -> None:
    assert (path, query) == split_target(raw), "the checked target is not what is forwarded"
    assert len(raw) <= MAX_TARGET_LENGTH
    assert path.startswith(PREFIXES)
    assert _PRINTABLE_ASCII.fullmatch(path), "a forwarded path byte outside printable ASCII"
    for segment in path[1:].split("/"):
        decoded = unquote(segment, errors="surrogateescape")
        assert segment not in {"", ".", ".."}, segment
        assert decoded not in {".", ".."}, segment
        assert not {"/", "\\", ";", "%", "?", "#"} & set(decoded), segment
        assert not _CONTROL.search(decoded), segment
    assert not _CONTROL.search(unquote(query, errors="surrogateescape"))
    assert "#" not in query
    # Idempotent: the accepted form, checked again, is accepted unchanged.
    canonical = path + (f"?{query}" if query else "")
    assert check_proxy_target(canonical, PREFIXES) == (path, query)


def _assert_upstream_url(url: URL, path: str, query: str) -> None:
    base = URL(ORIGIN)
    assert (url.scheme, url.raw_host, url.port) == (base.scheme, base.raw_host, base.port)
    assert url.raw_path == base.raw_path + path
    assert url.raw_query_string == query
    assert str(url) == ORIGIN + path + (f"?{query}" if query else "")


def _assert_refused_again(method: str, raw: str, table: int, kind: type[BrokerError]) -> None:
    try:
        _targets[table].upstream_url(method, raw)
    except kind:
        return
    raise AssertionError("a refusal was remembered as something else")


# -- the request header filter ------------------------------------------------------------


def request_headers(data: bytes) -> None:
    """*data* is the field section of a browser's request."""
    message = parse_request(b"GET /checkout/invoice HTTP/1.1\r\nHost: h\r\n" + data + b"\r\n\r\n")
    if message is not None:
        sent = _filter_request(message.headers)
        if sent is not None:
            # What the parser accepted cannot end a field early upstream.
            for value in sent.values():
                assert not {"\r", "\n", "\x00"} & set(value), "a field that would split"
    _filter_request(lines_to_fields(data))


def _filter_request(incoming: CIMultiDictProxy[str]) -> dict[str, str] | None:
    named = connection_tokens(incoming)
    try:
        sent = upstream_request_headers(incoming, bearer=BEARER, request_id=REQUEST_ID)
    except BadRequest:
        repeated = [
            name
            for name in SINGLE_VALUED
            if name not in named and len(incoming.getall(name, ())) > 1
        ]
        assert repeated, "refused without a repeated single-valued field"
        return None
    assert sent["Authorization"] == f"Bearer {BEARER}", "the browser's credential went upstream"
    assert sent["User-Agent"] == BROKER_USER_AGENT
    assert sent["X-Request-Id"] == REQUEST_ID
    names = {name.lower() for name in sent}
    assert names <= REQUEST_FIELDS_SENT | BROKER_REQUEST_FIELDS, names
    assert len(names) == len(sent), "a field sent twice"
    for name in FORWARDED_REQUEST_HEADERS:
        lowered = name.lower()
        values = incoming.getall(name, ())
        if lowered in named or not values:
            assert name not in sent, f"{name} sent though named in Connection or absent"
        else:
            assert sent[name] == ", ".join(values), f"{name} changed on its way"
    return sent


# -- the response header filter and the answer's finishing --------------------------------


def response_headers(data: bytes) -> None:
    """*data* is the upstream's field section, then (after the first NUL byte) the
    browser's ``Origin``."""
    section, _, origin = data.partition(b"\x00")
    incoming = parse_response_headers(b"HTTP/1.1 200 OK\r\n" + section + b"\r\n\r\n")
    origin_text = origin.decode("utf-8", "surrogateescape")
    if incoming is not None:
        _filter_response(incoming, origin_text)
    _filter_response(lines_to_fields(section), origin_text)


def _filter_response(upstream: CIMultiDictProxy[str], origin: str) -> None:
    named = connection_tokens(upstream)
    fields = downstream_response_headers(upstream)
    relayed = [(name, value) for name, value in fields if name.lower() != "cache-control"]
    expected = [
        (name, value)
        for name, value in upstream.items()
        if name.lower() in RESPONSE_FIELDS_RELAYED and name.lower() not in named
    ]
    assert relayed == expected, "relayed fields differ from the allowlisted ones, in order"
    headers: CIMultiDict[str] = CIMultiDict(fields)
    browser = origin if _valid_field_value(origin) else None
    finish_headers(_browser_request(browser), headers, REQUEST_ID, _cors)
    names = {name.lower() for name in headers}
    assert names <= RESPONSE_FIELDS_RELAYED | BROKER_RESPONSE_FIELDS, names
    assert headers.getall("Cache-Control") == ["no-store"]
    assert headers.getall("Server") == ["token-broker"]
    assert headers.getall("Referrer-Policy") == ["no-referrer"]
    assert headers.getall("X-Request-Id") == [REQUEST_ID]
    assert headers.getall("Vary") == ["Origin"]
    allowed = headers.getall("Access-Control-Allow-Origin", [])
    if browser == ALLOWED_ORIGIN:
        assert allowed == [ALLOWED_ORIGIN]
    else:
        assert allowed == [], "CORS granted to an origin not allowed"


@functools.lru_cache(maxsize=256)
def _browser_request(origin: str | None) -> web.Request:
    """A request with *origin* as its Origin (none when None): built without a server
    (the fuzzer runs thousands a second), remembered since it is costly to build."""
    headers = {} if origin is None else {"Origin": origin}
    return make_mocked_request("GET", "/checkout/invoice", headers=headers)


def _valid_field_value(value: str) -> bool:
    """What a browser's field value can be once aiohttp parsed it (no CR, LF or NUL),
    and that its request helper can encode."""
    return not {"\r", "\n", "\x00"} & set(value) and value.isascii()


TARGETS: Final[dict[str, Target]] = {
    "paths": paths,
    "request_headers": request_headers,
    "response_headers": response_headers,
}

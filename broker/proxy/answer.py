"""A whole answer written in one go (``Answer``): the small relayed upstream answers,
the broker's own errors and JSON answers, CORS preflights: nearly every answer the
public and admin listeners send.

aiohttp's ``web.Response`` takes a dozen Python calls to get out (its constructor and
body setter, ``prepare``, two ``_start``, ``_prepare_headers``, ``_write_headers``,
three ``write_eof``): ~10 % of the instructions of a proxied request in the image's
build (bench/instructions.py). An Answer knows its whole body when it is made, so its
``prepare`` frames it and writes it through the request's own writer (aiohttp's
StreamWriter: its header serializer, which refuses CR and LF in a field, its byte
count, its drain) as one header block and one body write, by the rules aiohttp's
response follows (``_framed``). aiohttp's server does the rest as for any response:
keep-alive, the access log line. tests/web/test_answer.py holds Answer to what
``web.Response`` sends for the same status, method, version, body, fields and
keep-alive, byte for byte.

What an Answer is not: a streamed body, compressed or chunked, with cookies, or seen
by an application's ``on_response_prepare`` signal (FrontDoor refuses to start an app
that has one, see ``broker.web.front_door``).
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from broker.headers import CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING

# RFC 9110 §6.4.1, 15.3.5, 15.4.5: these statuses, and any answer to HEAD, have no body;
# these statuses no Content-Length either (aiohttp drops it: RFC 9110 §8.6 lets a 304
# carry the resource's, which an answer made here never knows).
_BODILESS_STATUSES: Final = frozenset((204, 304, *range(100, 200)))
_OCTETS: Final = "application/octet-stream"
JSON_TYPE: Final = "application/json; charset=utf-8"


class Answer(web.StreamResponse):
    """*body*, whole, under *status* and *headers* (which carry no framing: the answer
    frames itself). Its fields can be changed until it is prepared."""

    def __init__(
        self,
        body: bytes,
        *,
        status: int = 200,
        reason: str | None = None,
        headers: LooseHeaders | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if content_type is not None:
            self.headers[CONTENT_TYPE] = content_type
        self._whole_body = body
        self._keeps_alive: bool | None = None  # None: as the request asks
        self._sent: int | None = None  # bytes written, once written

    @property
    def body(self) -> bytes:
        return self._whole_body

    @property
    def prepared(self) -> bool:
        return self._sent is not None

    @property
    def keep_alive(self) -> bool | None:
        return self._keeps_alive

    def force_close(self) -> None:
        self._keeps_alive = False

    @property
    def body_length(self) -> int:
        """What was written, status line and fields included (as aiohttp counts it)."""
        return self._sent or 0

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._sent is not None:
            return None
        keep_alive = request.keep_alive if self._keeps_alive is None else self._keeps_alive
        self._keeps_alive = keep_alive
        body = _framed(self.headers, self._whole_body, self.status, request, keep_alive)
        version = request.version
        status_line = f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}"
        writer = request.writer
        await writer.write_headers(status_line, self.headers)
        await writer.write_eof(body)
        self._sent = writer.output_size
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to write: ``prepare`` wrote the whole answer."""
        if data:
            raise RuntimeError("an Answer's body is given when it is made")

    def __repr__(self) -> str:
        state = "sent" if self.prepared else "not sent"
        return f"<Answer {self.status} {self.reason} {state}>"


def json_answer(data: Any, *, status: int = 200, headers: LooseHeaders | None = None) -> Answer:
    """``web.json_response(data, ...)`` as an Answer: the same bytes and Content-Type."""
    body = json.dumps(data).encode()
    return Answer(body, status=status, headers=headers, content_type=JSON_TYPE)


def _framed(
    headers: CIMultiDict[str], body: bytes, status: int, request: web.BaseRequest, keep: bool
) -> bytes:
    """Add to *headers* what aiohttp's ``Response`` adds before it sends a body it holds
    (its length, a default type, Date, Server, Connection: ``Response._start`` and
    ``StreamResponse._prepare_headers``); return what of *body* goes out."""
    if CONTENT_LENGTH in headers or TRANSFER_ENCODING in headers:
        raise RuntimeError("an Answer frames its body itself")
    method = request.method
    tunnel = 200 <= status < 300 and method == hdrs.METH_CONNECT
    bodiless = status in _BODILESS_STATUSES or method == hdrs.METH_HEAD or tunnel
    # An empty answer to HEAD says no length: it would claim the resource's is 0.
    if (body or method != hdrs.METH_HEAD) and not (status in _BODILESS_STATUSES or tunnel):
        headers[CONTENT_LENGTH] = str(len(body))
    if body and not bodiless:
        headers.setdefault(CONTENT_TYPE, _OCTETS)
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = _http_date.now()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers:
        if keep:
            if request.version == HttpVersion10:
                headers[hdrs.CONNECTION] = "keep-alive"
        elif request.version == HttpVersion11:
            headers[hdrs.CONNECTION] = "close"
    return b"" if bodiless else body


class _HttpDate:
    """The Date field's value (RFC 9110 §5.6.7), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, formatdate(second, usegmt=True)
        return self._value


_http_date: Final = _HttpDate()

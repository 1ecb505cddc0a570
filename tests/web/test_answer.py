"""An ``Answer`` (broker.proxy.answer) goes out as the very bytes aiohttp's
``web.Response`` would send for it: status line, fields in their order, body, and
whether the connection stays open, for every status, method, HTTP version, body,
fields and keep-alive choice the broker's answers can have. Both are answered by one
real aiohttp server and read off the socket; only the Date field's value may differ.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpServer

from broker.proxy.answer import Answer, json_answer

STATUSES = [200, 201, 204, 304, 404, 429, 500, 503]
BODIES = [b"", b"x", b'{"code":"upstream_error"}']
FIELDS: dict[str, list[tuple[str, str]]] = {
    "none": [],
    "typed": [("Content-Type", "application/json"), ("ETag", '"v1"')],
    "finished": [("Cache-Control", "no-store"), ("Server", "token-broker"), ("X-Request-Id", "r")],
}
METHODS = ["GET", "HEAD", "POST", "DELETE", "OPTIONS"]
# (version, the request's Connection field or None)
CONNECTIONS = [("1.1", None), ("1.1", "close"), ("1.0", None), ("1.0", "keep-alive")]
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def answer_of(params: dict[str, str], *, ours: bool) -> web.StreamResponse:
    status = int(params["status"])
    if params["kind"] == "json":
        data = {"code": "x", "status": status}
        headers = FIELDS[params["fields"]][1:]  # no Content-Type with a JSON body
        response: web.StreamResponse = (
            json_answer(data, status=status, headers=headers)
            if ours
            else web.json_response(data, status=status, headers=headers)
        )
    else:
        body = BODIES[int(params["body"])]
        fields = FIELDS[params["fields"]]
        response = (
            Answer(body, status=status, headers=fields)
            if ours
            else web.Response(status=status, headers=fields, body=body)
        )
    if params["close"] == "1":
        response.force_close()
    return response


def app() -> web.Application:
    async def ours(request: web.Request) -> web.StreamResponse:
        return answer_of(dict(request.query), ours=True)

    async def aiohttps(request: web.Request) -> web.StreamResponse:
        return answer_of(dict(request.query), ours=False)

    async def end(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="end")

    application = web.Application()
    application.router.add_route("*", "/ours", ours)
    application.router.add_route("*", "/aiohttp", aiohttps)
    application.router.add_get("/end", end)
    return application


async def exchange(
    port: int, method: str, target: str, version: str, connection: str | None
) -> bytes:
    """The bytes that come back for *method* *target*, then, when it asked to keep the
    connection, for a pipelined request that ends it (unless the answer closed it), to
    the close."""
    fields = "Host: 127.0.0.1\r\n" + (f"Connection: {connection}\r\n" if connection else "")
    first = f"{method} {target} HTTP/{version}\r\n{fields}\r\n"
    keeps = connection == "keep-alive" or (version == "1.1" and connection is None)
    last = "GET /end HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" if keeps else ""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((first + last).encode())
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


Case = tuple[str, int, str, str, str, str | None, str]


def cases(method: str) -> list[Case]:
    plain = [
        ("plain", status, str(body), fields, version, connection, close)
        for status, body, fields, (version, connection), close in itertools.product(
            STATUSES, range(len(BODIES)), FIELDS, CONNECTIONS, "01"
        )
    ]
    shaped = [
        ("json", status, "0", fields, version, connection, close)
        for status, fields, (version, connection), close in itertools.product(
            STATUSES, ["typed", "finished"], CONNECTIONS, "01"
        )
    ]
    return plain + shaped


@pytest.mark.parametrize("method", METHODS)
async def test_an_answer_sends_what_a_response_sends(
    aiohttp_server: AiohttpServer, method: str
) -> None:
    server = await aiohttp_server(app())
    assert server.port is not None
    differences: list[str] = []
    for kind, status, body, fields, version, connection, close in cases(method):
        query = f"kind={kind}&status={status}&body={body}&fields={fields}&close={close}"
        ours = await exchange(server.port, method, f"/ours?{query}", version, connection)
        theirs = await exchange(server.port, method, f"/aiohttp?{query}", version, connection)
        if _DATE.sub(b"\r\nDate: -\r\n", ours) != _DATE.sub(b"\r\nDate: -\r\n", theirs):
            differences.append(
                f"{method} HTTP/{version} {connection} {query}:\n{ours!r}\n{theirs!r}"
            )
    assert not differences, "\n".join(differences[:5]) + f"\n({len(differences)} in all)"


async def test_an_answer_counts_what_it_wrote_and_is_sent_once(
    aiohttp_server: AiohttpServer,
) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = Answer(b"hello", headers=[("X-A", "1")])
        seen["answer"] = answer
        return answer

    application = web.Application()
    application.router.add_get("/", handler)
    server = await aiohttp_server(application)
    assert server.port is not None
    data = await exchange(server.port, "GET", "/", "1.1", "close")
    answer = seen["answer"]
    assert isinstance(answer, Answer)
    assert answer.prepared
    assert answer.body_length == len(data)  # status line, fields and body, as aiohttp's
    assert data.endswith(b"\r\n\r\nhello")
    assert data.count(b"HTTP/1.1 200 OK") == 1


def test_an_answer_refuses_framing_fields_of_its_own() -> None:
    answer = Answer(b"x", headers=[("Content-Length", "1")])
    with pytest.raises(RuntimeError, match="frames its body itself"):
        asyncio.run(answer.prepare(make_mocked_request("GET", "/")))

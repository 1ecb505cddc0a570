"""Request smuggling on raw sockets: ambiguous framing is refused, never forwarded.

Each case hides a second request (for a path nothing else here calls) behind framing
that two HTTP parsers could read differently. The broker must answer 400 or close the
connection, answer nothing else on that connection, and forward nothing upstream.

The module runs under aiohttp's C parser (the default) and, through a subprocess with
``AIOHTTP_NO_EXTENSIONS=1``, under the pure-Python parser, which is chosen at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp.http_parser
import pytest

from tests.conftest import BrokerClient, MakeBroker, new_session
from tests.helpers import Sandbox
from tests.security.conftest import (
    hardened_settings,
    header_values,
    http_request,
    roomy_limits,
    send_to,
    upstream_traffic,
)

SMUGGLED_PATH = "/checkout/v1/card-form/credentials"
OUTER_PATH = "/checkout/payments"
PURE_PYTHON = bool(os.environ.get("AIOHTTP_NO_EXTENSIONS"))
REPO_ROOT = Path(__file__).resolve().parents[2]

Case = Callable[[str], bytes]


def smuggled(session: str) -> bytes:
    return http_request(
        "GET", SMUGGLED_PATH, [("Authorization", f"Bearer {session}"), ("X-Request-Id", "smuggled")]
    )


def head(session: str, *fields: str, line_end: str = "\r\n") -> bytes:
    """The outer request's head, with extra header lines written exactly as given."""
    lines = [
        f"POST {OUTER_PATH} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {session}",
        "Content-Type: application/json",
        "X-Request-Id: outer",
        *fields,
    ]
    return (line_end.join(lines) + line_end + line_end).encode()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


def _cases() -> dict[str, Case]:
    def cl_te(s: str) -> bytes:  # CL.TE: the chunked terminator hides the rest
        body = b"0\r\n\r\n" + smuggled(s)
        return head(s, f"Content-Length: {len(body)}", "Transfer-Encoding: chunked") + body

    def te_cl(s: str) -> bytes:  # TE.CL: the Content-Length stops inside the chunk
        body = chunked(smuggled(s))
        return head(s, "Transfer-Encoding: chunked", "Content-Length: 4") + body

    def duplicate_cl_same(s: str) -> bytes:
        return head(s, "Content-Length: 2", "Content-Length: 2") + b"{}"

    def duplicate_cl_different(s: str) -> bytes:
        inner = smuggled(s)
        return head(s, "Content-Length: 0", f"Content-Length: {len(inner)}") + inner

    def te_chunked_identity(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked, identity") + b"0\r\n\r\n" + smuggled(s)

    def te_chunked_then_identity_fields(s: str) -> bytes:
        fields = ("Transfer-Encoding: chunked", "Transfer-Encoding: identity")
        return head(s, *fields) + b"0\r\n\r\n" + smuggled(s)

    def te_xchunked(s: str) -> bytes:
        return head(s, "Transfer-Encoding: xchunked") + chunked(smuggled(s))

    def te_xchunked_with_cl(s: str) -> bytes:
        body = chunked(smuggled(s))
        return head(s, "Transfer-Encoding: xchunked", f"Content-Length: {len(body)}") + body

    def te_leading_space(s: str) -> bytes:
        body = b"0\r\n\r\n" + smuggled(s)
        return head(s, f"Content-Length: {len(body)}", " Transfer-Encoding: chunked") + body

    def te_space_before_colon(s: str) -> bytes:
        body = b"0\r\n\r\n" + smuggled(s)
        return head(s, f"Content-Length: {len(body)}", "Transfer-Encoding : chunked") + body

    def te_obs_fold(s: str) -> bytes:
        body = b"0\r\n\r\n" + smuggled(s)
        return head(s, f"Content-Length: {len(body)}", "Transfer-Encoding:", " chunked") + body

    def te_obs_fold_after_other_field(s: str) -> bytes:
        body = b"0\r\n\r\n" + smuggled(s)
        fields = (f"Content-Length: {len(body)}", "X-Padding: x", "\tTransfer-Encoding: chunked")
        return head(s, *fields) + body

    def bare_lf(s: str) -> bytes:
        return head(s, "Content-Length: 2", line_end="\n") + b"{}"

    def bare_lf_mixed(s: str) -> bytes:
        raw = head(s, "Transfer-Encoding: chunked", "Content-Length: 2")
        return raw.replace(b"\r\nTransfer-Encoding", b"\nTransfer-Encoding") + b"{}"

    def bare_lf_in_chunks(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"2\n{}\n0\n\n" + smuggled(s)

    def chunk_size_with_junk(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"2 junk\r\n{}\r\n0\r\n\r\n" + smuggled(s)

    def chunk_size_hex_prefix(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"0x2\r\n{}\r\n0\r\n\r\n" + smuggled(s)

    def chunk_size_signed(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"+2\r\n{}\r\n0\r\n\r\n" + smuggled(s)

    def chunk_size_negative(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"-1\r\n{}\r\n0\r\n\r\n" + smuggled(s)

    def chunk_size_overflow(s: str) -> bytes:
        size = b"1" + b"0" * 20  # 16**20: wraps a 64-bit counter
        return head(s, "Transfer-Encoding: chunked") + size + b"\r\n{}\r\n0\r\n\r\n" + smuggled(s)

    def chunk_longer_than_its_size(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"2\r\n{}XX\r\n0\r\n\r\n" + smuggled(s)

    def request_hidden_in_trailers(s: str) -> bytes:
        return head(s, "Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n" + smuggled(s)

    def cl_with_junk(s: str) -> bytes:
        inner = smuggled(s)
        return head(s, f"Content-Length: +{len(inner)}") + inner

    return {
        name: case for name, case in locals().items() if callable(case) and not name.startswith("_")
    }


CASES = _cases()


@pytest.fixture
async def client(make_broker: MakeBroker, sandbox: Sandbox) -> BrokerClient:
    limits = roomy_limits(body_timeout=1.0)
    return await make_broker(hardened_settings(sandbox.url, limits=limits))


async def primed_session(client: BrokerClient, sandbox: Sandbox) -> str:
    """A session whose checkout JWT is already minted; then a clean upstream log."""
    session = await new_session(client, "cus_carol", "inv_carol_1")
    assert (await client.get(SMUGGLED_PATH, headers={"Authorization": f"Bearer {session}"})).ok
    await sandbox.reset()
    return session


def test_the_parser_in_use_is_the_one_this_run_asked_for() -> None:
    parser = aiohttp.http_parser.HttpRequestParser
    if PURE_PYTHON:
        assert parser is aiohttp.http_parser.HttpRequestParserPy
    else:
        assert parser is not aiohttp.http_parser.HttpRequestParserPy, "C parser not built"


@pytest.mark.parametrize("case", sorted(CASES))
async def test_ambiguous_framing_is_refused_and_nothing_is_forwarded(
    client: BrokerClient, sandbox: Sandbox, case: str
) -> None:
    session = await primed_session(client, sandbox)
    reply = await send_to(client, CASES[case](session))
    refusals = [[400], []]
    if case == "chunk_size_overflow" and PURE_PYTHON:
        # The pure-Python parser takes 16**20 as a (huge) chunk size and waits for it:
        # the rest is body, never a request; the broker times it out or caps it.
        refusals += [[408], [413]]
    assert reply.statuses in refusals, (case, reply.data[:400])
    if reply.statuses == [400]:  # the broker's guard or aiohttp's parser: the same answer
        assert reply.body_json()["code"] == "bad_request", (case, reply.data[:400])
        assert b"aiohttp" not in reply.data, case
    if not reply.statuses:
        assert reply.closed, (case, "neither answered nor closed")
    seen = upstream_traffic(await sandbox.requests())
    assert seen == [], (case, [r["raw_path"] for r in seen])


@pytest.mark.forwarding
async def test_control_a_well_framed_chunked_post_is_forwarded(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    """Proves the harness sees forwarding: the same head with clean framing goes through."""
    session = await primed_session(client, sandbox)
    payload = head(session, "Transfer-Encoding: chunked", "Connection: close") + chunked(b"{}")
    reply = await send_to(client, payload)
    assert reply.statuses == [400]  # the sandbox's validation error, passed through
    (seen,) = upstream_traffic(await sandbox.requests())
    assert (seen["raw_path"], seen["body"]) == (OUTER_PATH, "{}")


@pytest.mark.forwarding
async def test_control_pipelined_requests_are_each_answered_and_forwarded(
    client: BrokerClient, sandbox: Sandbox
) -> None:
    """A second request after a cleanly framed first one is legitimate: both are seen."""
    session = await primed_session(client, sandbox)
    last = http_request(
        "GET", SMUGGLED_PATH, [("Authorization", f"Bearer {session}"), ("Connection", "close")]
    )
    payload = head(session, "Content-Length: 2") + b"{}" + last
    reply = await send_to(client, payload)
    assert reply.statuses == [400, 200], reply.data
    paths = [r["raw_path"] for r in upstream_traffic(await sandbox.requests())]
    assert paths == [OUTER_PATH, SMUGGLED_PATH]
    assert header_values(upstream_traffic(await sandbox.requests())[0], "X-Request-Id") == ["outer"]


@pytest.mark.forwarding
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_request_inside_a_well_framed_body_stays_body_upstream(
    client: BrokerClient, sandbox: Sandbox, framing: str
) -> None:
    """The broker's own upstream connections must not be desynchronised by a body that
    looks like a request: the upstream sees it as body, and the next call is intact."""
    session = await primed_session(client, sandbox)
    inner = smuggled(session)
    if framing == "chunked":
        payload = head(session, "Transfer-Encoding: chunked") + chunked(inner)
    else:
        payload = head(session, f"Content-Length: {len(inner)}") + inner
    reply = await send_to(
        client,
        payload
        + http_request(
            "GET",
            "/checkout/invoice",
            [
                ("Authorization", f"Bearer {session}"),
                ("X-Request-Id", "after"),
                ("Connection", "close"),
            ],
        ),
    )
    assert reply.statuses == [400, 200], reply.data[:300]
    seen = upstream_traffic(await sandbox.requests())
    assert [(r["method"], r["raw_path"]) for r in seen] == [
        ("POST", OUTER_PATH),
        ("GET", "/checkout/invoice"),
    ]
    assert seen[0]["body"].encode() == inner
    assert header_values(seen[1], "X-Request-Id") == ["after"]


@pytest.mark.skipif(PURE_PYTHON, reason="this run already uses the pure-Python parser")
# Slow: a whole second pytest run. Fast: every case above, under the C parser that
# aiohttp uses wherever its extension is installed (as in the image).
@pytest.mark.slow
def test_the_same_module_passes_with_the_pure_python_parser() -> None:
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}
    command = [sys.executable, "-m", "pytest", __file__, "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(  # noqa: S603 - our own interpreter and test file
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in summary, summary
    assert "failed" not in summary, summary
    assert "error" not in summary, summary

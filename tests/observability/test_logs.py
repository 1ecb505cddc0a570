"""Log lines as written: only the fields with a value, and never a credential."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.credentials import fingerprint
from broker.observability import logs
from broker.observability.exchange import Exchange, FinishedRequest, to_microseconds
from broker.observability.logs import (
    LineSink,
    configure_logging,
    flush_logs,
    get_logger,
    log_request,
    reset_logging,
)
from tests.conftest import BrokerClient, LogCapture, new_session
from tests.helpers import auth

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """The stream lines are written to; the format is the test's to configure."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield io.StringIO()
    root.handlers[:], root.level = saved
    reset_logging()


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_request_finished_writes_only_the_fields_with_a_value(
    broker: BrokerClient, logs: LogCapture
) -> None:
    assert (await broker.get("/healthz", headers={"X-Request-Id": "req-health"})).status == 200
    session = await new_session(broker)
    assert (await broker.get("/checkout/invoice", headers=auth(session))).status == 200
    finished = {e["path"]: e for e in logs.events("request_finished")}

    health = finished["/healthz"]
    assert None not in health.values()
    for absent in ("customer_id", "invoice_id", "upstream_status", "upstream_ms", "error_code"):
        assert absent not in health
    assert health["request_id"] == "req-health"
    assert health["status"] == 200
    proxied = finished["/checkout/invoice"]
    assert None not in proxied.values()
    assert "error_code" not in proxied
    assert proxied["customer_id"] == "cus_alice"
    assert proxied["upstream_status"] == 200
    assert "null" not in logs.text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_fields_without_a_value_are_left_out_in_both_formats(
    written: io.StringIO, fmt: str
) -> None:
    configure_logging(fmt=fmt, level="info", stream=written, cache=False)
    get_logger("broker.access").info(
        "request_finished", status=200, customer_id=None, error_code=None, route="/healthz"
    )
    text = written.getvalue()
    assert "request_finished" in text
    assert "route" in text
    assert "/healthz" in text
    assert "customer_id" not in text
    assert "error_code" not in text
    assert "None" not in text
    assert "null" not in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_credentials_are_redacted_in_both_formats(written: io.StringIO, fmt: str) -> None:
    configure_logging(fmt=fmt, level="info", stream=written, cache=False)
    log = get_logger("broker.test")
    for _ in range(2):  # the second time, every field name is one judged before
        log.info(
            "seen",
            path=f"/checkout/{JWT}",
            header="Bearer s3cr3t-value",
            client_secret="hunter2-secret",
        )
    text = written.getvalue()
    for secret in (JWT, "s3cr3t-value", "hunter2-secret"):
        assert secret not in text
    assert text.count(f"<jwt:{fingerprint(JWT)}>") == 2
    assert text.count("<redacted>") == 4


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_credential_in_a_traceback_is_redacted_in_both_formats(
    written: io.StringIO, fmt: str
) -> None:
    configure_logging(fmt=fmt, level="info", stream=written, cache=False)
    try:
        raise ValueError(f"upstream said Bearer {JWT}")
    except ValueError:
        get_logger("broker.test").exception("failed")
    text = written.getvalue()
    assert "ValueError" in text  # the traceback is written, redacted
    assert "upstream said Bearer <jwt:" in text
    assert JWT not in text
    assert fingerprint(JWT) in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_credential_nested_in_a_field_is_redacted_in_both_formats(
    written: io.StringIO, fmt: str
) -> None:
    configure_logging(fmt=fmt, level="info", stream=written, cache=False)
    get_logger("broker.test").info(
        "seen", details={"header": f"Bearer {JWT}", "list": ["Basic dXNlcjpwYXNz"]}
    )
    text = written.getvalue()
    for secret in (JWT, "dXNlcjpwYXNz"):
        assert secret not in text
    assert fingerprint(JWT) in text


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_console_lines_keep_their_colours_and_are_redacted_as_read_without_them(
    written: io.StringIO,
) -> None:
    """ConsoleRenderer colours each column apart, so a credential could be whole only
    once the colour codes are left out (here, a "Bearer" ending one column and what
    follows it): such a line loses its colours, never its redaction; the others keep
    theirs, redacted too."""
    configure_logging(fmt="console", level="info", stream=written, cache=False)
    log = get_logger("broker.test")
    log.info("plain", count=3)
    log.info("seen", details={"header": f"Bearer {JWT}"})
    log.info("refused", scheme="Bearer", value="opaque-credential-value")  # sorted keys
    plain, nested, split = written.getvalue().splitlines()
    assert _ANSI.search(plain)
    assert _ANSI.search(nested)
    assert JWT not in _ANSI.sub("", nested)
    assert "opaque-credential-value" not in split
    assert not _ANSI.search(split)
    assert "scheme=Bearer <redacted>" in split


def test_lines_without_a_credential_are_written_as_given(written: io.StringIO) -> None:
    configure_logging(fmt="json", level="info", stream=written, cache=False)
    log = get_logger("broker.test")
    for _ in range(2):
        log.info("plain", basics="a-b", count=3, ratio=0.5, nested={"k": [1, "two"]})
    first, second = _json_lines(written)
    for line in (first, second):
        assert line["basics"] == "a-b"
        assert line["count"] == 3
        assert line["nested"] == {"k": [1, "two"]}
        assert line["logger"] == "broker.test"
        assert line["level"] == "info"


def _exchange(**values: object) -> Exchange:
    exchange = Exchange(request_id="req-exchange", route="/checkout/invoice")
    for name, value in values.items():
        setattr(exchange, name, value)
    return exchange


def _finished(
    exchange: Exchange | None, path: str = "/checkout/invoice?cursor=c1"
) -> FinishedRequest:
    request_id = exchange.request_id if exchange is not None else "req-ctx"
    return FinishedRequest("GET", path, 200, 0.0123456, 1234, exchange, request_id)


def _both_lines(written: io.StringIO, finished: FinishedRequest) -> tuple[str, str]:
    """The line log_request writes for *finished*, and structlog's for its fields."""
    log_request(finished)
    flush_logs()
    get_logger("broker.access").info("request_finished", **finished.fields())
    # Lines end in "\n" only (splitlines would also split a path at U+2028 and the like).
    shortcut, reference = written.getvalue().removesuffix("\n").split("\n")
    written.seek(0)
    written.truncate()
    return shortcut, reference


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_request_line_is_the_line_structlog_writes(written: io.StringIO, fmt: str) -> None:
    """log_request takes a shorter path than get_logger().info(): the same line comes
    out, field order and redaction included."""
    configure_logging(fmt=fmt, level="info", stream=written, cache=False)
    refused = _exchange(
        customer_id="cus_alice",
        error_code="unauthorized",
        reason=f"bad token {JWT}",
        auth="session",
    )
    for exchange in (refused, None):
        shortcut, reference = _both_lines(written, _finished(exchange, f"/checkout/{JWT}"))
        assert JWT not in shortcut
        if fmt == "json":
            short, ref = json.loads(shortcut), json.loads(reference)
            assert short.pop("timestamp")
            assert ref.pop("timestamp")
            assert list(short.items()) == list(ref.items())
            assert short["path"] == f"/checkout/<jwt:{fingerprint(JWT)}>"
        else:
            # The console line starts with its timestamp; the rest must match.
            assert shortcut.split(" ", 1)[1] == reference.split(" ", 1)[1]


_OPTIONAL = {
    "customer_id": st.sampled_from(["cus_alice", "cus_1"]),
    "invoice_id": st.just("inv_alice_1"),
    "upstream_status": st.sampled_from([200, 503]),
    "upstream_ms": st.floats(0, 1e4),
    "upstream_error_code": st.just("upstream_down"),
    "token_outcome": st.sampled_from(["hit", "minted"]),
    "error_code": st.just("not_found"),
    "reason": st.text(max_size=40),
    "auth": st.just("api_key"),
    "caller": st.just("cus_bob"),
}


@settings(max_examples=60, deadline=None)
@given(
    values=st.fixed_dictionaries({}, optional=_OPTIONAL),
    path=st.text(max_size=300),
    routed=st.booleans(),
)
def test_every_request_line_is_the_line_structlog_writes(
    values: dict[str, object], path: str, routed: bool
) -> None:
    written = io.StringIO()
    configure_logging(fmt="json", level="info", stream=written, cache=False)
    try:
        finished = _finished(_exchange(**values) if routed else None, path)
        shortcut, reference = _both_lines(written, finished)
    finally:
        reset_logging()
    short, ref = json.loads(shortcut), json.loads(reference)
    assert short.pop("timestamp")
    assert ref.pop("timestamp")
    assert list(short.items()) == list(ref.items())
    assert None not in short.values()


def test_the_request_line_falls_back_to_structlog_when_logging_is_not_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reset_logging()
    log_request(_finished(None))
    assert "request_finished" in capsys.readouterr().out


def test_the_request_line_keeps_the_moment_and_the_span_it_was_logged_in() -> None:
    """Rendered after the loop's iteration, a line still says when it was logged and
    in which span."""
    written = io.StringIO()
    configure_logging(fmt="json", level="info", stream=written, cache=False)
    try:
        logs.log_trace_ids(lambda: ("trace-1", "span-1"))
        log_request(_finished(None))
        logs.log_trace_ids(lambda: ("trace-2", "span-2"))
        time.sleep(0.02)
        before_flush = time.time()
        flush_logs()
    finally:
        logs._trace_ids = None
        reset_logging()
    (line,) = _json_lines(written)
    assert (line["trace_id"], line["span_id"]) == ("trace-1", "span-1")
    logged_at = datetime.datetime.fromisoformat(str(line["timestamp"])).timestamp()
    assert logged_at < before_flush - 0.015


class CountedWrites(io.StringIO):
    """A stream that keeps each chunk it is handed before a flush: one write(2) each."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        return super().write(text)

    def flush(self) -> None:
        if self._pending:
            self.chunks.append(self._pending)
            self._pending = ""


def _request_line(number: int) -> None:
    # The line's bytes_sent tells the lines apart.
    log_request(FinishedRequest("GET", "/healthz", 200, 0.001, number, None, None))


async def test_request_lines_of_one_loop_iteration_are_written_together() -> None:
    stream = CountedWrites()
    configure_logging(fmt="json", level="info", stream=stream, cache=False)
    try:
        for number in range(3):
            _request_line(number)
        assert stream.getvalue() == ""  # until the iteration is done
        await asyncio.sleep(0)
        assert len(stream.chunks) == 1
        assert [line["bytes_sent"] for line in _json_lines(stream)] == [0, 1, 2]
    finally:
        reset_logging()


async def test_a_line_logged_directly_comes_after_the_request_lines_before_it() -> None:
    stream = CountedWrites()
    configure_logging(fmt="json", level="info", stream=stream, cache=False)
    try:
        _request_line(0)
        get_logger("broker.test").warning("in_between")
        logging.getLogger("aiohttp.server").error("stdlib_line")
        _request_line(1)
        await asyncio.sleep(0)
        events = [(line["event"], line.get("bytes_sent")) for line in _json_lines(stream)]
        assert events == [
            ("request_finished", 0),
            ("in_between", None),
            ("stdlib_line", None),
            ("request_finished", 1),
        ]
    finally:
        reset_logging()


def test_request_lines_go_out_in_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    stream = CountedWrites()
    sink: LineSink[dict[str, str]] = LineSink(stream, lambda fields: fields["text"])
    lines = [f"{n:04d}" + "é" * 300 for n in range(40)]  # 605 bytes each in UTF-8
    for text in lines:
        sink._deferred.append({"text": text})
    sink.flush()
    assert len(stream.chunks) > 1
    assert all(len(chunk.encode()) <= 4096 for chunk in stream.chunks)
    assert all(chunk.endswith("\n") for chunk in stream.chunks)
    assert "".join(stream.chunks).splitlines() == lines


def test_without_a_running_loop_a_request_line_is_written_at_once(written: io.StringIO) -> None:
    configure_logging(fmt="json", level="info", stream=written, cache=False)
    _request_line(7)
    assert _json_lines(written)[0]["bytes_sent"] == 7


async def test_lines_waiting_for_the_loop_are_written_by_flush_logs_and_by_other_threads(
    written: io.StringIO,
) -> None:
    configure_logging(fmt="json", level="info", stream=written, cache=False)
    _request_line(1)
    flush_logs()
    assert [line["bytes_sent"] for line in _json_lines(written)] == [1]
    _request_line(2)
    thread = threading.Thread(target=get_logger("broker.test").warning, args=("from_a_thread",))
    thread.start()
    thread.join()
    assert [line["event"] for line in _json_lines(written)][1:] == [
        "request_finished",
        "from_a_thread",
    ]


@given(st.floats(min_value=0, max_value=1e9))
def test_durations_are_logged_to_the_microsecond(milliseconds: float) -> None:
    logged = to_microseconds(milliseconds)
    assert abs(logged - milliseconds) <= 0.0005 + 1e-9 * milliseconds
    # As a JSON number the line writes it: three decimals at most.
    assert len(json.dumps(logged).partition(".")[2].rstrip("0")) <= 3


def test_a_duration_that_is_not_finite_is_logged_as_it_is() -> None:
    assert to_microseconds(math.inf) == math.inf
    assert math.isnan(to_microseconds(math.nan))

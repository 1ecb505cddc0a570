"""structlog configuration (called once at start-up) and the redaction it guarantees.

Our events and aiohttp's own loggers (``aiohttp.access``, ``aiohttp.server``,
``aiohttp.client``) go through one pipeline, one JSON object per line on stdout (or
the console renderer on a TTY). Defence in depth: besides never logging credentials,
the pipeline redacts any field whose name suggests a secret, replaces anything that
looks like a JWT with its fingerprint, strips header bytes from aiohttp's parser-error
messages, and renders tracebacks without frame locals (they hold bearer tokens).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final, Generic, TextIO, TypeVar

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from broker.bounded import memo
from broker.credentials import fingerprint
from broker.observability.exchange import ACCESS_LOGGER, REQUEST_LINE_FIELDS, FinishedRequest

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
# aiohttp quotes offending header bytes in parser errors: b'Authorization: ...'.
_QUOTED_BYTES = re.compile(r"""b(['"]).*?(?<!\\)\1""", re.DOTALL)
_SECRET_NAMES = ("authorization", "cookie", "secret", "password", "api_key", "token")
_SAFE_NAMES = frozenset({"token_outcome", "token_fp", "tokens_evicted"})

# The id of the request being handled, added to every line logged while handling it.
# Set once per request by the front door; aiohttp runs each request in a task of its
# own, so the value is that request's. A ContextVar of our own, not structlog's
# bind_contextvars/merge_contextvars, which copy the whole context on every line.
request_id_var: ContextVar[str | None] = ContextVar("broker_request_id", default=None)

# (trace_id, span_id) of the span current where a line is logged, or None: set by
# broker.observability.otel once tracing is on, so that with tracing off a line pays
# one global read for it and opentelemetry is never imported.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def log_trace_ids(source: Callable[[], tuple[str, str] | None]) -> None:
    """Give every line logged inside a span its ``trace_id`` and ``span_id``."""
    global _trace_ids  # noqa: PLW0603 - once per process, when tracing starts
    _trace_ids = source


def redact_text(text: str) -> str:
    text = _JWT.sub(lambda m: f"<jwt:{fingerprint(m.group(0))}>", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} <redacted>", text)


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Scrub secrets from every field: by name, and by shape for anything textual."""
    for name, value in event_dict.items():
        if _secret_name(name):
            event_dict[name] = "<redacted>"
        elif isinstance(value, str) and _suspect(value):
            event_dict[name] = redact_text(value)
    return event_dict


def _suspect(text: str) -> bool:
    # What redact_text may replace (a JWT, a bearer or basic credential) contains one of these.
    return "eyJ" in text or "earer" in text or "asic" in text


def _judge_name(name: str) -> bool:
    lowered = name.lower()
    return lowered not in _SAFE_NAMES and any(s in lowered for s in _SECRET_NAMES)


# Field names are few and fixed by the code, so each is judged once (this runs for
# every field of every line).
_secret_name: Final = memo(_judge_name, 4096)


_Step = Callable[[WrappedLogger, str, EventDict], EventDict]


class LineRenderer:
    """The last processor of every line: drops the fields without a value (``None``),
    redacts (see ``redact``) and renders, as JSON or for the console.

    A JSON line is rendered first and scanned once, in C, for what redaction looks
    for (a field name not yet judged safe; in the text, what a JWT or a credential
    contains); only a line that has some is redacted field by field and rendered
    again, and the text of that line is redacted as a whole too, nested values
    (an exception's message, say) included. The console renderer consumes the
    fields it renders, so there the fields are redacted first, and the rendered
    text as a whole after (``_redact_console``)."""

    def __init__(self, console: bool) -> None:
        self._console = console
        if console:
            # plain_traceback: rich's default formatter would print frame locals.
            self._console_renderer: Processor = structlog.dev.ConsoleRenderer(
                exception_formatter=structlog.dev.plain_traceback
            )
            self._tracebacks: _Step = _identity
        else:
            self._tracebacks = structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        # Names seen and judged not secret: a line of only those skips the judging.
        self._safe_names: set[str] = set()
        # A request line's names are fixed by the code: judged once, here, so that its
        # lines skip even the look-up of their names (~8 % of the line's instructions).
        self._request_names_safe = not any(map(_secret_name, _REQUEST_LINE_NAMES))

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        fields: EventDict = {n: value for n, value in event_dict.items() if value is not None}
        if "exc_info" in fields:
            fields = self._tracebacks(logger, method, fields)
        return self._render(logger, method, fields)

    def render_request(self, fields: EventDict) -> str:
        """The info line of *fields*: a request line's (``_REQUEST_LINE_NAMES``), each
        with a value, no exception."""
        return self._render(None, "info", fields, names_safe=self._request_names_safe)

    def _render(
        self, logger: WrappedLogger, method: str, fields: EventDict, *, names_safe: bool = False
    ) -> str:
        """*names_safe*: the caller knows that no name of *fields* is a secret's."""
        if self._console:
            rendered = self._console_renderer(logger, method, redact(logger, method, fields))
            return _redact_console(str(rendered))
        line = _dumps(fields)
        if not names_safe and not fields.keys() <= self._safe_names:
            self._learn_names(fields)
        elif not _suspect(line):
            return line
        return redact_text(_dumps(redact(logger, method, fields)))

    def _learn_names(self, fields: EventDict) -> None:
        for name in fields:
            if len(self._safe_names) < _KNOWN_NAMES and not _secret_name(name):
                self._safe_names.add(name)


_KNOWN_NAMES: Final = 4096
# The SGR sequences (colours, bold, reset) ConsoleRenderer styles its columns with.
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")


def _redact_console(line: str) -> str:
    """*line*, as ConsoleRenderer coloured it, redacted as a whole, as a JSON line is:
    its fields were redacted before rendering, but not a traceback or a nested value.

    The colour codes sit between columns, never inside one, so the coloured text is
    redacted where it stands. Should a credential be whole only once they are left out
    (a "Bearer" ending one column, a value starting the next), the line loses its
    colours rather than its redaction: either way, read without its colour codes, the
    line is redact_text of the plain line."""
    plain = _ANSI.sub("", line)
    if not _suspect(plain):
        return line
    redacted, plain = redact_text(line), redact_text(plain)
    return redacted if _ANSI.sub("", redacted) == plain else plain


def scrub_aiohttp_records(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """aiohttp's messages may quote raw request bytes (headers, tokens): drop them."""
    record = event_dict.get("_record")
    if record is not None and record.name.startswith("aiohttp"):
        event = event_dict.get("event")
        if isinstance(event, str):
            event_dict["event"] = _QUOTED_BYTES.sub("b'<redacted>'", event)
        exc_info = event_dict.pop("exc_info", None)
        if exc_info:
            exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
            if isinstance(exc, BaseException):
                event_dict["error"] = type(exc).__name__
    return event_dict


def get_logger(name: str) -> Any:
    """A structlog logger whose events carry ``logger=<name>``; safe at import time."""
    return structlog.get_logger(logger_name=name)


REQUEST_FINISHED: Final = "request_finished"
# Every name a request line can carry: its own fields and those the pipeline adds.
_REQUEST_LINE_NAMES: Final = (
    *REQUEST_LINE_FIELDS,
    "event",
    "trace_id",
    "span_id",
    "level",
    "logger",
    "timestamp",
)


def log_request(finished: FinishedRequest) -> None:
    """Log the ``request_finished`` line of *finished* (the access logger's, once per
    answered request; the caller checks the level). The line is the one
    ``get_logger(ACCESS_LOGGER).info(REQUEST_FINISHED, **finished.fields())`` writes,
    but only the moment and the span are read now: its fields are built, rendered and
    written with the other request lines of the event loop's iteration, after it (see
    ``RequestLines`` and ``LineSink``). This is the one line logged per request, which
    is why it skips structlog's bound-logger dispatch (the fields copied three times,
    each processor called through a generic loop)."""
    lines = _request_lines
    if lines is None:  # logging not configured by configure_logging: structlog's own path
        get_logger(ACCESS_LOGGER).info(REQUEST_FINISHED, **finished.fields())
        return
    lines.log(finished)


# A request line waiting to be rendered: the request, when it was logged, and the
# (trace_id, span_id) current then.
_Pending = tuple[FinishedRequest, float, tuple[str, str] | None]


class RequestLines:
    """The request lines of ``configure_logging``'s pipeline: the same steps as its
    processors, in their order (request id, trace ids, level, logger, timestamp), so
    the same line comes out, redacted by the same renderer, on the sink every line of
    the pipeline goes to. What reads the moment and the context runs when the line is
    logged (``log``); the rest when the sink writes it (``render``)."""

    def __init__(self, renderer: LineRenderer, timestamp: IsoTimestamp, stream: TextIO) -> None:
        self._renderer = renderer
        self._timestamp = timestamp
        self.sink: LineSink[_Pending] = LineSink(stream, self.render)

    def log(self, finished: FinishedRequest) -> None:
        ids = _trace_ids() if _trace_ids is not None else None
        self.sink.defer((finished, self._timestamp.clock(), ids))

    def render(self, pending: _Pending) -> str:
        finished, logged_at, ids = pending
        fields: EventDict = finished.fields()
        fields["event"] = REQUEST_FINISHED
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        fields["level"] = "info"
        fields["logger"] = ACCESS_LOGGER
        fields["timestamp"] = self._timestamp.format(logged_at)
        return self._renderer.render_request(fields)


# A write(2) of at most PIPE_BUF bytes to a pipe is atomic: the lines of several
# workers sharing one stdout pipe never interleave within a line.
_PIPE_BUF: Final = 4096
# Request lines kept for the end of the iteration at most: bounds the memory and
# the lines a crash can lose.
_MAX_DEFERRED: Final = 256
# What the sink defers (a request line's record) and renders when it writes it.
Deferred = TypeVar("Deferred")


class LineSink(Generic[Deferred]):
    """The stream every line of ``configure_logging``'s pipeline is written to.

    A line is written when it is logged, except the request lines (``defer``): those
    logged while an event loop runs in this thread are rendered and written together
    once the loop's current iteration is done, in chunks of whole lines of at most
    PIPE_BUF bytes, so that under load one write(2) carries many lines. Lines keep
    their order: a line written directly first writes the request lines deferred
    before it. ``flush()`` (the process's exit path calls ``flush_logs``) writes them
    all. Our loggers write through ``write_line`` (see ``SinkLogger``); logging's
    StreamHandler calls ``write`` and ``flush``, as on a stream. A lock makes it safe
    from any thread."""

    def __init__(self, stream: TextIO, render: Callable[[Deferred], str]) -> None:
        self._stream = stream
        self._render = render
        self._deferred: list[Deferred] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self._deferred:
                self._write_deferred()
            self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._deferred:
                self._write_deferred()
            self._stream.flush()

    def write_line(self, line: str) -> None:
        with self._lock:
            if self._deferred:
                self._write_deferred()
            self._stream.write(line + "\n")
            self._stream.flush()

    def defer(self, item: Deferred) -> None:
        with self._lock:
            deferred = self._deferred
            deferred.append(item)
            if len(deferred) > 1:
                if len(deferred) >= _MAX_DEFERRED:
                    self._write_deferred()
                return  # the first one asked for the flush
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing would flush later
            self.flush()
        else:
            loop.call_soon(self.flush)

    def _write_deferred(self) -> None:
        # Under the lock.
        deferred, self._deferred = self._deferred, []
        render, stream = self._render, self._stream
        chunk: list[str] = []
        size = 0
        for item in deferred:
            line = render(item) + "\n"
            length = len(line) if line.isascii() else len(line.encode())
            if chunk and size + length > _PIPE_BUF:
                stream.write("".join(chunk))
                stream.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += length
        stream.write("".join(chunk))
        stream.flush()


class SinkLogger:
    """structlog's wrapped logger, writing to the sink: one line per call, flushed,
    whatever the level (the bound logger has filtered by level already), as structlog's
    WriteLogger does, which cannot be handed the sink: it keys a lock by a weak
    reference to its file, and a compiled class takes none."""

    def __init__(self, sink: LineSink[_Pending]) -> None:
        self._sink = sink

    def for_logger(self, *_args: object) -> SinkLogger:
        return self

    def msg(self, message: str) -> None:
        self._sink.write_line(message)

    # The methods structlog's bound logger calls, one per level name.
    def debug(self, message: str) -> None:
        self._sink.write_line(message)

    def info(self, message: str) -> None:
        self._sink.write_line(message)

    def warning(self, message: str) -> None:
        self._sink.write_line(message)

    def error(self, message: str) -> None:
        self._sink.write_line(message)

    def critical(self, message: str) -> None:
        self._sink.write_line(message)


_request_lines: RequestLines | None = None
_sink: LineSink[_Pending] | None = None


def flush_logs() -> None:
    """Write the request lines still waiting for the end of the loop's iteration: for
    the process's exit path (a multiprocessing worker does not run ``atexit``)."""
    if _sink is not None:
        _sink.flush()


def reset_logging() -> None:
    """Undo ``configure_logging`` (structlog's defaults again); for tests."""
    global _request_lines, _sink  # noqa: PLW0603 - see configure_logging
    flush_logs()
    _request_lines = _sink = None
    structlog.reset_defaults()


def _add_request_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    request_id = request_id_var.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    if _trace_ids is not None:
        ids = _trace_ids()
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def _name_field(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # Our loggers bind "logger_name" (structlog reserves "logger"); stdlib records get
    # "logger" from add_logger_name. One field name for both in the output.
    if "logger_name" in event_dict:
        event_dict["logger"] = event_dict.pop("logger_name")
    return event_dict


def configure_logging(
    *, fmt: str = "auto", level: str = "info", stream: TextIO | None = None, cache: bool = True
) -> None:
    """Configure structlog and the stdlib root logger; call once, from the entrypoint.

    Our events take structlog's native path (no stdlib LogRecord: about half the cost
    per line, which matters for one line per request); aiohttp's stdlib records are
    rendered by the same processors through a ProcessorFormatter on the same stream.
    """
    global _request_lines, _sink  # noqa: PLW0603 - configured once per process (per test in tests)
    flush_logs()
    stream = stream or sys.stdout
    renderer = LineRenderer(console=fmt == "console" or (fmt == "auto" and stream.isatty()))
    timestamper = IsoTimestamp()
    processors: list[Processor] = [
        _add_request_id,
        structlog.processors.add_log_level,
        _name_field,
        timestamper,
        renderer,
    ]
    _request_lines = RequestLines(renderer, timestamper, stream)
    _sink = _request_lines.sink
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=SinkLogger(_sink).for_logger,
        # Tests reconfigure per test: a cached logger would keep the old stream.
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            _add_request_id,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            scrub_aiohttp_records,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(_sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # The canonical request_finished line replaces aiohttp's access lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class IsoTimestamp:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-11-28T09:45:15.123456Z``), with the date and time formatted once a second
    rather than on every line (a third of the stamper's cost on the hot line); the
    microseconds are always written, also when they are zero."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.format(self.clock())
        return event_dict

    def format(self, now: float) -> str:
        """*now* (a ``clock()`` reading) as the ``timestamp`` field writes it."""
        second = int(now)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
            self._second, self._prefix = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        # Six digits by the digits of 1_000_000 + micros: a format spec (":06d") goes
        # through the generic formatting machinery, ~8x the instructions of str(int).
        micros = int((now - second) * 1_000_000)
        return self._prefix + "." + str(1_000_000 + micros)[1:] + "Z"


def _dumps(value: Any, **_kwargs: Any) -> str:
    # orjson writes a dataclass field by field, secrets included (it ignores repr=False):
    # passed through, a dataclass is written as its str(), which redacts them.
    return orjson.dumps(value, default=str, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()


def _identity(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict

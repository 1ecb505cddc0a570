"""The upstream client session, error translation and call accounting."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Final

import aiohttp

from broker.config.model import UpstreamSettings
from broker.errors import BadGateway, BrokerError, GatewayTimeout, ServiceUnavailable
from broker.headers import ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE, USER_AGENT
from broker.observability.metrics import Metrics
from broker.upstream.transport import (
    UpstreamBusy,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamUnreachable,
)

# The SDK retries a 503 four times at once; a short Retry-After spaces those out.
UNAVAILABLE_RETRY_AFTER = 1.0
_perf_counter: Final = time.perf_counter


def open_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=settings.max_connections,  # default 0 would be unbounded per host
        ttl_dns_cache=60,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,  # a total would cut legitimately long streams
            # Waiting for a pooled connection and connecting: bounded together.
            connect=settings.pool_wait + settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,  # an idle bound instead
        ),
        auto_decompress=False,  # relay bytes as sent; keeps Content-Length true
        cookie_jar=aiohttp.DummyCookieJar(),  # never share cookies across callers
        # Forwarded fields are an exact allowlist: aiohttp adds none of its own (an
        # absent Accept would go out as */*); PartnerApi sets the ones it means.
        skip_auto_headers=(ACCEPT, USER_AGENT, ACCEPT_ENCODING, CONTENT_TYPE),
        trust_env=False,  # HTTP(S)_PROXY must not silently reroute payment traffic
        raise_for_status=False,
    )


class TransientUpstreamError(ServiceUnavailable):
    """A call failed in a way that may not happen again (a 5xx, a connection reset
    before the answer's head, a truncated answer): a mint tries once more."""


class UpstreamCall:
    """Translate client exceptions into the broker's vocabulary and count the call.

    The body of the ``with`` sets ``record.status`` once response headers arrive. A
    class rather than an ``@asynccontextmanager``: this wraps every proxied request,
    and a generator-based context manager costs several times more per use. Entering
    and leaving await nothing, so the proxy uses it as a plain ``with`` (no coroutine
    per step); ``async with`` works too, to share one statement with aiohttp's.
    """

    __slots__ = ("_kind", "_metrics", "_record", "_started")

    def __init__(self, metrics: Metrics, kind: str) -> None:
        self._metrics = metrics
        self._kind = kind
        self._record = CallRecord()
        self._started = 0.0

    def __enter__(self) -> CallRecord:
        self._started = _perf_counter()
        return self._record

    async def __aenter__(self) -> CallRecord:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        record, kind = self._record, self._kind
        record.elapsed = _perf_counter() - self._started
        error = None if exc is None else _translated(exc, kind, record)
        self._metrics.upstream_done(kind, record.status, record.elapsed)
        if error is not None:
            raise error from exc


def _translated(exc: BaseException, kind: str, record: CallRecord) -> BrokerError | None:
    """The broker's error for a failed call, naming its class in ``record.status``; None
    when *exc* is not ours to translate (cancellation, a bug)."""
    if isinstance(exc, TimeoutError):  # ServerTimeoutError, ConnectionTimeoutError, ...
        record.status = "timeout"
        return GatewayTimeout(f"{kind} call timed out")
    if isinstance(exc, UpstreamBusy):
        record.status = "busy"
        return ServiceUnavailable(f"{kind} upstream pool busy", retry_after=UNAVAILABLE_RETRY_AFTER)
    if isinstance(exc, UpstreamReset) or (
        isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
    ):
        # The same answer on both transports: the connection ended before a whole head.
        record.status = "reset"
        return TransientUpstreamError(
            f"{kind} upstream reset the connection", retry_after=UNAVAILABLE_RETRY_AFTER
        )
    if isinstance(exc, aiohttp.ClientConnectorError | UpstreamUnreachable):
        record.status = "unreachable"
        return ServiceUnavailable(
            f"{kind} upstream unreachable", retry_after=UNAVAILABLE_RETRY_AFTER
        )
    if isinstance(exc, aiohttp.ClientError | UpstreamProtocolError | ValueError):
        record.status = "invalid"  # ValueError: JSON
        return BadGateway(f"{kind} upstream sent an invalid answer")
    return None


class CallRecord:
    """What one upstream call did: its status (or error class) and its duration."""

    __slots__ = ("elapsed", "status")

    def __init__(self) -> None:
        self.status = ""
        self.elapsed = 0.0


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Parse a delay-seconds ``Retry-After`` (HTTP dates are rare upstream; use default)."""
    if value is None:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    return min(max(seconds, 0.0), 3600.0)

"""The upstream client session, error translation and call accounting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import hdrs

from broker import __version__
from broker.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from broker.metrics import Metrics
from broker.settings import UpstreamSettings
from broker.transport import UpstreamProtocolError, UpstreamUnreachable

USER_AGENT = f"token-broker/{__version__}"
# The SDK retries a 503 four times at once; a short Retry-After spaces those out.
UNAVAILABLE_RETRY_AFTER = 1.0


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
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,  # an idle bound instead
        ),
        auto_decompress=False,  # relay bytes as sent; keeps Content-Length true
        cookie_jar=aiohttp.DummyCookieJar(),  # never share cookies across callers
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        trust_env=False,  # HTTP(S)_PROXY must not silently reroute payment traffic
        raise_for_status=False,
    )


@asynccontextmanager
async def upstream_call(metrics: Metrics, kind: str) -> AsyncIterator[CallRecord]:
    """Translate client exceptions into the broker's vocabulary and count the call.

    The body of the ``with`` sets ``record.status`` once response headers arrive.
    """
    record = CallRecord()
    started = time.perf_counter()
    try:
        yield record
    except TimeoutError as exc:  # ServerTimeoutError, ConnectionTimeoutError, ...
        record.status = "timeout"
        raise GatewayTimeout(f"{kind} call timed out") from exc
    except (aiohttp.ClientConnectorError, UpstreamUnreachable) as exc:
        record.status = "unreachable"
        raise ServiceUnavailable(
            f"{kind} upstream unreachable", retry_after=UNAVAILABLE_RETRY_AFTER
        ) from exc
    except (aiohttp.ClientError, UpstreamProtocolError, ValueError) as exc:  # ValueError: JSON
        record.status = "invalid"
        raise BadGateway(f"{kind} upstream sent an invalid answer") from exc
    finally:
        record.elapsed = time.perf_counter() - started
        metrics.upstream_done(kind, record.status, record.elapsed)


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

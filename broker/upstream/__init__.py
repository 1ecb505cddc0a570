"""The upstream: the client session and call accounting, the transport seam for proxied
calls with its two implementations side by side (aiohttp's client in ``transport``, the
lean httptools pool in ``lean``), and the calls made with the partner's credentials."""

from broker.upstream.calls import UpstreamCall, open_session
from broker.upstream.lean import LeanTransport
from broker.upstream.partner_api import (
    MintedToken,
    OAuthToken,
    PartnerApi,
    PartnerTokenRejected,
    TransientUpstreamError,
    UpstreamRateLimited,
)
from broker.upstream.traced import TracedTransport
from broker.upstream.transport import (
    IDEMPOTENT_METHODS,
    STANDARD_METHODS,
    STREAM_CHUNK,
    AiohttpTransport,
    TransportError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamResponse,
    UpstreamTransport,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "STANDARD_METHODS",
    "STREAM_CHUNK",
    "AiohttpTransport",
    "LeanTransport",
    "MintedToken",
    "OAuthToken",
    "PartnerApi",
    "PartnerTokenRejected",
    "TracedTransport",
    "TransientUpstreamError",
    "TransportError",
    "UpstreamCall",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamReset",
    "UpstreamResponse",
    "UpstreamTransport",
    "open_session",
]

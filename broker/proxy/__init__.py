"""What may be forwarded and how: the raw-target rules, the route allowlist, CORS,
per-client limits, the relay that forwards a request and streams the answer back, and
the answer written in one go."""

from broker.proxy.allowlist import RouteTable
from broker.proxy.answer import Answer, json_answer
from broker.proxy.cors import CorsPolicy
from broker.proxy.finishing import finish_headers
from broker.proxy.forwarder import Forwarder
from broker.proxy.relay import read_body, relay_response, upstream_failure
from broker.proxy.targets import ProxyTargets
from broker.proxy.throttle import TokenBuckets, client_ip

__all__ = [
    "Answer",
    "CorsPolicy",
    "Forwarder",
    "ProxyTargets",
    "RouteTable",
    "TokenBuckets",
    "client_ip",
    "finish_headers",
    "json_answer",
    "read_body",
    "relay_response",
    "upstream_failure",
]

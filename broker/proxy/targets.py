"""Where a proxied request may go: its method and raw target judged, its upstream URL made.

The judgement is the path rules (``paths``), the route allowlist (``routes``) and the
methods the proxy forwards at all, in that order (a bad path is a 400 whatever the
method). Browsers repeat a few targets (their invoice, its payment methods) on every
call, so each (method, target) pair is judged and its URL parsed once, not per request.
"""

from __future__ import annotations

from yarl import URL

from broker.bounded import memo
from broker.errors import MethodNotAllowed
from broker.proxy.allowlist import PROXIED_METHODS, RouteTable
from broker.proxy.paths import check_proxy_target

# Callers choose targets: only this many pairs are remembered, and only short targets
# (the SDK's are under 100 bytes), so the memo stays a few hundred KB at most.
_REMEMBERED_PAIRS = 1024
_REMEMBERED_TARGET_LENGTH = 256

Pair = tuple[str, str]


def _short_target(pair: Pair) -> bool:
    return len(pair[1]) <= _REMEMBERED_TARGET_LENGTH


class ProxyTargets:
    """``upstream_url(method, raw_target)``: the upstream URL, or the refusal (400, 404,
    405) as a BrokerError. Refusals are never remembered: judged again each time."""

    def __init__(self, origin: str, prefixes: tuple[str, ...], routes: RouteTable) -> None:
        self._origin = origin  # the base URL without its trailing "/"
        self._prefixes = prefixes
        self._routes = routes
        self._judged = memo(self._judge, _REMEMBERED_PAIRS, keep=_short_target)

    def upstream_url(self, method: str, raw_target: str) -> URL:
        return self._judged((method, raw_target))

    def _judge(self, pair: Pair) -> URL:
        method, raw_target = pair
        raw_path, raw_query = check_proxy_target(raw_target, self._prefixes)
        self._routes.check(method, raw_path)
        if method not in PROXIED_METHODS:
            allowed = self._routes.methods(raw_path)
            raise MethodNotAllowed(
                allowed=PROXIED_METHODS if allowed is None else allowed & PROXIED_METHODS
            )
        # The caller's path and query byte for byte: what was checked is what goes.
        return URL(self._origin + raw_path + (f"?{raw_query}" if raw_query else ""), encoded=True)

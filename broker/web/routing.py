"""The proxy routes, found without aiohttp's router.

Nearly every request the public listener serves is a proxied SDK call. For each,
aiohttp's router walks the path's parts through its resource index, matches the route's
pattern and builds, fills and freezes a match info, and ``Application._handle`` checks
for ``Expect`` and middlewares: ~21k of the ~270k instructions a proxied request
costs the image's build (bench/instructions.py). ``ProxyRoutes.take`` takes the
request to its proxy route's front door directly when the router could only have chosen
that route, and answers None for anything else: a path another route has (whatever the
method), an ``Expect`` header (the router answers it before the handler), a path no
prefix covers. Those go through the router as before, so every request gets the route
the router would give it; tests/web/test_routing.py checks that against the router.

A request taken here has no match info (``request.match_info``, ``request.app``): the
proxy route's front door and handler use neither.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broker.headers import EXPECT

# The proxy routes' path template: ``prefix`` + this (broker.web.app).
TAIL: Final = "{tail:[\\s\\S]*}"
_TAIL_CANONICAL: Final = "{tail}"


class ProxyRoutes:
    """The proxy prefixes and their routes' fronts: ``add`` each as its route is added,
    ``freeze`` once the router is final (the runner does, when the app has started)."""

    def __init__(self) -> None:
        self._added: dict[str, Handler] = {}
        # Longest prefix first: the router tries the deepest part of the path first,
        # so of two prefixes that both cover a path, the longer one's route takes it.
        self._prefixes: tuple[tuple[str, Handler], ...] = ()
        # Paths of the router's other routes: the router may choose those instead.
        self._other_paths: frozenset[str] = frozenset()

    def add(self, prefix: str, front: Handler) -> None:
        """*front* serves the route ``prefix + TAIL``."""
        self._added[prefix] = front

    def freeze(self, router: web.UrlDispatcher) -> None:
        """Take the routes as *router* has them: a prefix whose route it holds under
        another pattern (or not at all), and every prefix when it has a route with a
        pattern other than theirs, stay the router's to find."""
        resources = list(router.resources())
        canonicals = {resource.canonical for resource in resources}
        ours = {prefix + _TAIL_CANONICAL: (prefix, front) for prefix, front in self._added.items()}
        prefixes = [pair for canonical, pair in ours.items() if canonical in canonicals]
        others = [resource for resource in resources if resource.canonical not in ours]
        if any(not _takes_path_only(resource) for resource in others):
            prefixes = []
        prefixes.sort(key=lambda pair: len(pair[0]), reverse=True)
        self._prefixes = tuple(prefixes)
        self._other_paths = frozenset(resource.canonical for resource in others)

    def take(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse] | None:
        """*request* served by the proxy route the router would choose for it, or None
        when the router must choose."""
        if not isinstance(request, web.Request):  # the app's requests all are
            return None
        front = self.front_for(request)
        return None if front is None else front(request)

    def front_for(self, request: web.Request) -> Handler | None:
        """The front door of the proxy route the router would choose for *request*, or
        None when it might choose another."""
        if EXPECT in request.headers:
            return None
        path = request.rel_url.path_safe  # what the router matches
        if path in self._other_paths:
            return None
        for prefix, front in self._prefixes:
            if path.startswith(prefix):
                return front
        return None


def _takes_path_only(resource: web.AbstractResource) -> bool:
    """A route that can take no path but its own (a plain path), or only what no other
    route takes (the catch-all, added last)."""
    return isinstance(resource, (web.PlainResource, EveryTarget))


class EveryTarget(web.DynamicResource):
    """Matches every request target, also one no path pattern can match because it does
    not start with "/" (``OPTIONS *``), which aiohttp would answer itself, in plain text
    and naming its version. (``CONNECT host:port`` reaches no resource at all: the
    runner's server refuses it.)"""

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        [route] = self  # the one catch-all route, for every method
        return web.UrlMappingMatchInfo({}, route), {hdrs.METH_ANY}

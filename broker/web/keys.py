"""Every ``web.AppKey`` and ``web.RequestKey``, in one place."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.gateway import Gateway
from broker.observability.exchange import Exchange
from broker.web.reloading import Reloader
from broker.web.routing import ProxyRoutes

gateway_key = web.AppKey("gateway", Gateway)
registry_key = web.AppKey("registry", CollectorRegistry)
reloader_key = web.AppKey("reloader", Reloader)
proxy_routes_key = web.AppKey("proxy_routes", ProxyRoutes)
exchange_key = web.RequestKey("exchange", Exchange)

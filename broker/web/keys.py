"""Every ``web.AppKey`` and ``web.RequestKey``, in one place."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.gateway import Gateway
from broker.observability.exchange import Exchange
from broker.web.reloading import Reloader

gateway_key = web.AppKey("gateway", Gateway)
registry_key = web.AppKey("registry", CollectorRegistry)
reloader_key = web.AppKey("reloader", Reloader)
exchange_key = web.RequestKey("exchange", Exchange)

"""Every ``web.AppKey`` and ``web.RequestKey``, in one place."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from broker.auth.sessions import ApiKeys
from broker.gateway import Gateway
from broker.observability.exchange import Exchange

gateway_key = web.AppKey("gateway", Gateway)
registry_key = web.AppKey("registry", CollectorRegistry)
admin_key_key = web.AppKey("admin_key", ApiKeys)
exchange_key = web.RequestKey("exchange", Exchange)

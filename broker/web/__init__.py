"""The web front: the application and its routes (the proxy routes found past aiohttp's
router), the front door every route goes through, handlers, the runner and server, the
admin listener and the access log."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.web.app import create_admin_app, create_app, create_metrics_app, runner_options
    from broker.web.runner import GatewayRunner
    from broker.web.server import bind_listeners, run, run_loop, serve

__all__ = [
    "GatewayRunner",
    "bind_listeners",
    "create_admin_app",
    "create_app",
    "create_metrics_app",
    "run",
    "run_loop",
    "runner_options",
    "serve",
]

# Imported on first use: every command imports broker.web.listen_file (healthcheck,
# keygen and check-config nothing more), and must not pay for the application.
_LAZY = {
    "create_admin_app": "broker.web.app",
    "create_app": "broker.web.app",
    "create_metrics_app": "broker.web.app",
    "runner_options": "broker.web.app",
    "GatewayRunner": "broker.web.runner",
    "bind_listeners": "broker.web.server",
    "run": "broker.web.server",
    "run_loop": "broker.web.server",
    "serve": "broker.web.server",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

"""Reloading the configuration while serving: on SIGHUP, on the admin call, on a peer's
request (Redis). One reload at a time; each one reads the configuration file and every
secret file again, validates all of it, and either takes it whole or changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from broker.config.model import ConfigError, Settings
from broker.errors import BrokerError
from broker.gateway import Gateway, ReloadRefused
from broker.observability.logs import get_logger

log = get_logger("broker.web.reloading")

# How long the replica that reloads waits for its peers' reports.
PEER_REPORT_WAIT = 2.0

Report = dict[str, Any]
LoadSettings = Callable[[], Settings]


class Reloader:
    """Runs reloads for one gateway from *load* (the way the process loaded its
    settings at start); None when the process has no file to read again."""

    def __init__(self, gateway: Gateway, load: LoadSettings | None) -> None:
        self._gateway = gateway
        self._load = load
        self._lock = asyncio.Lock()
        # In a worker process: tells the parent, which passes SIGHUP to every worker.
        self.siblings: Callable[[], None] | None = None

    def attach_peers(self) -> None:
        """Answer peers' requests (once the gateway has started and has its channel)."""
        if self._gateway.peers is not None:
            self._gateway.peers.answer_with(lambda: self.reload("peer"))

    async def reload(self, origin: str) -> Report:
        """Reload here; the report says what changed, or why nothing did."""
        async with self._lock:
            return await self._reload(origin)

    async def reload_everywhere(self, origin: str) -> Report:
        """Reload here, then (with Redis) ask every other replica and collect their
        reports: ``{"status", ..., "peers": [reports]}``."""
        report = await self.reload(origin)
        if self.siblings is not None:
            self.siblings()
        peers = self._gateway.peers
        if peers is None:
            return report
        try:
            report["peers"] = await peers.ask_peers(PEER_REPORT_WAIT)
        except Exception:  # noqa: BLE001 - Redis down: this replica's outcome still stands
            report["peers_unreachable"] = True
        return report

    async def _reload(self, origin: str) -> Report:
        if self._load is None:
            return self._refused(origin, ["this process was not started from a config source"])
        try:
            settings = self._load()
        except ConfigError as exc:
            return self._refused(origin, exc.problems)
        try:
            outcome = await self._gateway.reload(settings)
        except ReloadRefused as exc:
            return self._refused(origin, exc.problems)
        except (BrokerError, OSError, ValueError) as exc:
            # Opening a new account failed (Redis unreachable, a bad upstream URL): the
            # running configuration stays; say what failed without its details.
            return self._refused(origin, [f"could not start the new configuration ({exc})"])
        log.info("config_reload_done", origin=origin, partners=outcome.partners)
        return {
            "status": "reloaded",
            "partners": outcome.partners,
            "signing_key_rotated": outcome.signing_key_rotated,
        }

    def _refused(self, origin: str, problems: list[str]) -> Report:
        log.error("config_reload_refused", origin=origin, problems=problems)
        return {"status": "refused", "problems": problems}

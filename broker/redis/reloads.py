"""Reloads across replicas: one replica's reload asks every other to reload too.

Each replica reads its own configuration (the same files, mounted on each), reloads,
and answers with its result on the same channel; the replica that asked collects the
answers for a short while, so that the operator sees each replica's outcome. Events
carry replica ids, outcomes and configuration problems (which never hold a secret),
never a configuration value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from broker.config.model import CacheSettings
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics
from broker.redis.events import ClusterEvent, ClusterEvents
from broker.redis.link import RedisLink, RedisUnavailable

log = get_logger("broker.redis")

RELOAD = "reload"  # subject: the request id; every other replica reloads
RELOADED = "reloaded"  # subject: JSON {"request", "replica", "status", "problems", ...}

Report = dict[str, Any]


class ClusterReloads:
    """Asks peers to reload and collects their reports; answers peers' requests."""

    def __init__(self, link: RedisLink, events: ClusterEvents) -> None:
        self._link = link
        self._events = events
        self.replica = link.replica_id
        self._handler: Callable[[], Awaitable[Report]] | None = None
        self._collecting: dict[str, list[Report]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        events.subscribe(RELOAD, self._on_request)
        events.subscribe(RELOADED, self._on_report)

    @classmethod
    async def open(cls, settings: CacheSettings, metrics: Metrics) -> ClusterReloads:
        link = RedisLink.connect(settings, metrics)
        await link.start()
        events = ClusterEvents(link)
        if not link.degraded:
            events.start()
        return cls(link, events)

    def answer_with(self, handler: Callable[[], Awaitable[Report]]) -> None:
        """What a peer's request runs here: this replica's reload, returning its report."""
        self._handler = handler

    async def ask_peers(self, within: float) -> list[Report]:
        """Ask every other replica to reload; their reports received *within* seconds.
        Raises RedisUnavailable when the request could not be published."""
        request = secrets.token_hex(8)
        reports: list[Report] = []
        self._collecting[request] = reports
        try:
            await self._events.publish(RELOAD, request)
            await asyncio.sleep(within)
        finally:
            self._collecting.pop(request, None)
        return reports

    def _on_request(self, event: ClusterEvent) -> None:
        if event.sender == self.replica or self._handler is None:
            return
        task = asyncio.get_running_loop().create_task(self._answer(event.subject))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: str) -> None:
        if self._handler is None:
            return
        report = await self._handler()
        message = json.dumps({**report, "request": request, "replica": self.replica})
        with contextlib.suppress(RedisUnavailable):
            await self._events.publish(RELOADED, message)

    def _on_report(self, event: ClusterEvent) -> None:
        try:
            report = json.loads(event.subject)
        except ValueError:
            return
        if not isinstance(report, dict):
            return
        reports = self._collecting.get(str(report.get("request")))
        if reports is not None and report.get("replica") != self.replica:
            reports.append({k: v for k, v in report.items() if k != "request"})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._events.close()
        await self._link.close()

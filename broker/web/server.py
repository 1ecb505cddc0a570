"""Running the gateway: listeners, signals, draining, and worker processes."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web

from broker import __version__, compiled
from broker.config.model import Settings
from broker.observability.logs import configure_logging, get_logger
from broker.web import listen_file
from broker.web.access_log import AccessLogger
from broker.web.app import create_admin_app, create_app, create_metrics_app, runner_options
from broker.web.keys import gateway_key
from broker.web.runner import GatewayRunner

log = get_logger("broker.web.server")

OnStarted = Callable[[list[str]], Awaitable[None]]


async def serve(
    settings: Settings, *, reuse_port: bool = False, on_started: OnStarted | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: not ready first, then stop listening."""
    registry = prometheus_client.REGISTRY  # keeps the default process/GC collectors
    separate_metrics = settings.metrics_port != 0
    app = create_app(settings, registry=registry, serve_metrics=not separate_metrics)
    runners = [GatewayRunner(app, **runner_options(settings))]
    await runners[0].setup()
    site = web.TCPSite(
        runners[0], settings.server.host, settings.server.port, reuse_port=reuse_port or None
    )
    await site.start()
    urls = [site.name]
    if separate_metrics:
        metrics_runner = GatewayRunner(create_metrics_app(registry), access_log=None)
        await metrics_runner.setup()
        metrics_site = web.TCPSite(
            metrics_runner,
            settings.server.host,
            settings.metrics_port,
            reuse_port=reuse_port or None,
        )
        await metrics_site.start()
        runners.append(metrics_runner)
        urls.append(metrics_site.name)
    if settings.admin.enabled:
        admin_runner = GatewayRunner(create_admin_app(app), access_log_class=AccessLogger)
        await admin_runner.setup()
        admin_site = web.TCPSite(
            admin_runner, settings.admin.host, settings.admin.port, reuse_port=reuse_port or None
        )
        await admin_site.start()
        runners.append(admin_runner)
        urls.append(admin_site.name)
    announce_listening(settings.server.host, site.port)
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "broker_started",
        version=__version__,
        compiled=compiled(),
        listening=urls,
        pid=os.getpid(),
    )
    if on_started is not None:
        await on_started(urls)
    await stop.wait()
    app[gateway_key].draining = True
    log.info("broker_draining", drain_delay_s=settings.server.drain_delay)
    await asyncio.sleep(settings.server.drain_delay)
    for runner in reversed(runners):
        await runner.cleanup()  # stop listening, finish in-flight requests, close upstream
    log.info("broker_stopped")


def announce_listening(host: str, port: int) -> None:
    """Write the listen file when one is asked for (the image's health probe reads it).
    A file that cannot be written costs the probe, not the service: log it and serve."""
    path = os.environ.get(listen_file.ENVIRONMENT_VARIABLE)
    if not path:
        return
    try:
        listen_file.write(Path(path), host, port)
    except OSError as exc:
        log.warning("listen_file_unwritable", path=path, error=exc.strerror or str(exc))


# The young generation's threshold: collect once this many more tracked objects were
# allocated than freed. Python's default (700) is below what a few dozen requests in
# flight hold at once, so under load it ran a collection every ~80 requests, a few
# percent of the CPU, that found next to nothing to free (the broker makes few cycles).
GC_YOUNG_THRESHOLD = 7000


def settle_garbage_collector() -> None:
    """Once started: what startup built lives as long as the process, so move it out of
    the collector's sight (``gc.freeze``), then collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


LoadSettings = Callable[[], Settings]


def run(load: LoadSettings, workers: int) -> None:
    """Run in this process, or in *workers* processes sharing the port (SO_REUSEPORT).

    *load* must be picklable (a module-level callable or a ``functools.partial`` of
    one): each worker loads the settings itself, since key objects do not pickle.
    """
    if workers <= 1:
        run_loop(serve(load()))
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(load,)) for _ in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    raise SystemExit(1 if failed else 0)


def _worker(load: LoadSettings) -> None:
    settings = load()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    run_loop(serve(settings, reuse_port=True))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run *main* on uvloop when installed (its event loop costs less per request)."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)

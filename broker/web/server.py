"""Running the gateway: listeners, signals, draining, and worker processes."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web

from broker import __version__, compiled
from broker.config import listen
from broker.config.model import Settings
from broker.observability.logs import configure_logging, flush_logs, get_logger
from broker.observability.tracing import open_tracing
from broker.web import listen_file
from broker.web.access_log import AccessLogger
from broker.web.app import create_admin_app, create_app, create_metrics_app, runner_options
from broker.web.keys import gateway_key, reloader_key
from broker.web.reloading import LoadSettings
from broker.web.runner import GatewayRunner

log = get_logger("broker.web.server")

OnStarted = Callable[[list[str]], Awaitable[None]]


async def serve(
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_started: OnStarted | None = None,
    listeners: dict[str, list[socket.socket]] | None = None,
    load: LoadSettings | None = None,
    in_worker: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: not ready first, then stop listening.
    SIGHUP reloads the configuration from *load* (see ``broker.web.reloading``).

    Every listener is bound before the app starts (its token fetch, its client
    session): an address in use raises CannotListen with nothing begun. *listeners*:
    already bound by the caller (``bind_listeners``), who had more to start.
    *in_worker*: one of ``run``'s worker processes, whose parent passes SIGHUP on."""
    if listeners is None:
        listeners = bind_listeners(settings, reuse_port=reuse_port)
    try:
        runners, urls = await _start(settings, listeners, load)
    except BaseException:
        for sockets in listeners.values():
            listen.close(sockets)
        raise
    app = runners[0].app
    announce_listening(settings.server.host, listeners["main"][0].getsockname()[1])
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloader = app[reloader_key]
    if in_worker:
        # An admin reload reaches this worker only: the parent tells the others.
        reloader.siblings = lambda: os.kill(os.getppid(), signal.SIGHUP)
    reloads: set[asyncio.Task[object]] = set()

    def reload_on_signal() -> None:
        task = loop.create_task(reloader.reload("sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
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


def bind_listeners(settings: Settings, *, reuse_port: bool) -> dict[str, list[socket.socket]]:
    """The sockets of every listener *settings* asks for (main, metrics, admin), bound;
    CannotListen, with none left open, when one cannot be."""
    server = settings.server
    addresses = {"main": listen.Address(server.host, server.port, ("server.port",),
                                        ("server.host",))}  # fmt: skip
    if settings.metrics_port != 0:
        addresses["metrics"] = listen.Address(
            settings.metrics_host, settings.metrics_port, ("metrics.port",), ("metrics.host",)
        )
    if settings.admin.enabled:
        admin = settings.admin
        addresses["admin"] = listen.Address(admin.host, admin.port, ("admin.port",),
                                            ("admin.host",))  # fmt: skip
    bound: dict[str, list[socket.socket]] = {}
    try:
        for name, address in addresses.items():
            bound[name] = listen.bind(address, reuse_port=reuse_port)
    except listen.CannotListen:
        for sockets in bound.values():
            listen.close(sockets)
        raise
    return bound


async def _start(
    settings: Settings, listeners: dict[str, list[socket.socket]], load: LoadSettings | None
) -> tuple[list[GatewayRunner], list[str]]:
    """The app and a runner per listener, serving on *listeners*' sockets."""
    registry = prometheus_client.REGISTRY  # keeps the default process/GC collectors
    separate_metrics = "metrics" in listeners
    tracing = open_tracing(os.environ, trust_incoming=settings.tracing.trust_incoming)
    # The main port serves /metrics only with metrics.bearer_token (create_app decides).
    app = create_app(settings, registry=registry, load=load, tracing=tracing)
    runners = [GatewayRunner(app, **runner_options(settings))]
    if separate_metrics:
        metrics_app = create_metrics_app(registry, settings.metrics_bearer_token)
        runners.append(GatewayRunner(metrics_app, access_log=None))
    elif not settings.metrics_bearer_token:
        log.warning("metrics_not_served", reason="no metrics.port and no metrics.bearer_token",
                    hint="set metrics.port for a private listener")  # fmt: skip
    if "admin" in listeners:
        runners.append(GatewayRunner(create_admin_app(app), access_log_class=AccessLogger))
    hosts = {"main": settings.server.host, "metrics": settings.metrics_host,
             "admin": settings.admin.host}  # fmt: skip
    urls = []
    try:
        for runner, (name, sockets) in zip(runners, listeners.items(), strict=True):
            await runner.setup()
            for sock in sockets:
                await web.SockSite(runner, sock, backlog=listen.BACKLOG).start()
            urls.append(listen.url(hosts[name], sockets))
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    return runners, urls


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


def run(load: LoadSettings, workers: int) -> None:
    """Run in this process, or in *workers* processes sharing the port (SO_REUSEPORT).

    *load* must be picklable (a module-level callable or a ``functools.partial`` of
    one): each worker loads the settings itself, since key objects do not pickle.
    """
    if workers <= 1:
        run_loop(serve(load(), load=load))
        return
    # Every worker binds with SO_REUSEPORT; an address taken by another program is
    # found here, once, rather than by each worker.
    for sockets in bind_listeners(load(), reuse_port=True).values():
        listen.close(sockets)
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
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its own configuration
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed and all(code == listen.CannotListen.exit_code for code in failed):
        raise SystemExit(listen.CannotListen.exit_code)
    raise SystemExit(1 if failed else 0)


def _worker(load: LoadSettings) -> None:
    settings = load()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    try:
        run_loop(serve(settings, reuse_port=True, load=load, in_worker=True))
    except listen.CannotListen as exc:  # taken since the parent's check: rare
        log.error("cannot_listen", address=exc.address.shown, reason=exc.reason)  # noqa: TRY400 - one line, no traceback
        raise SystemExit(exc.exit_code) from None


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run *main* on uvloop when installed (its event loop costs less per request)."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(main)
    finally:
        flush_logs()  # the request lines of the loop's last iteration

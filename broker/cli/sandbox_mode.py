"""``token-broker serve --sandbox``: the gateway and a sandbox upstream in one process.

This is the embedded default a new user starts with: demo credentials from
``config/sandbox.toml``, a signing key generated for this run, and a printed quick
start that works by copy and paste. ``run_sandbox`` is ``token-broker sandbox``: the
sandbox upstream alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from socket import socket
from typing import Protocol

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.cli.text import quick_start
from broker.config import listen
from broker.config.model import ConfigError, Settings, load_settings, unknown_environment
from broker.observability.logs import configure_logging, get_logger
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.web.server import bind_listeners, run_loop, serve

log = get_logger("broker.cli.sandbox_mode")

EXIT_OK, EXIT_CONFIG = 0, 1


def sandbox_config_path() -> Path:
    """config/sandbox.toml from a checkout, else the copy shipped inside the wheel."""
    in_repo = Path(__file__).resolve().parents[2] / "config" / "sandbox.toml"
    if in_repo.is_file():
        return in_repo
    return Path(str(importlib.resources.files("broker") / "_config" / "sandbox.toml"))


def sandbox_settings(host: str | None, port: int | None, sandbox_port: int) -> Settings:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    environ = {
        **os.environ,
        "BROKER_SESSIONS_SIGNING_KEY": pem,
        "BROKER_UPSTREAM_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
    }
    if host:
        environ["BROKER_SERVER_HOST"] = host
    if port is not None:
        environ["BROKER_SERVER_PORT"] = str(port)
    return load_settings(sandbox_config_path(), environ)


class Companion(Protocol):
    """A site served beside the sandbox-mode broker: the demo partner site
    (``broker.demo``). Declared here so that this module never imports the demo."""

    async def start(self, settings: Settings, *, sandbox_url: str) -> str:
        """Listen, and return the site's origin (the broker allows it by CORS)."""

    def broker_started(self, broker_url: str, allowed_origins: Sequence[str]) -> None:
        """The broker listens at *broker_url*, allowing *allowed_origins* by CORS."""

    async def stop(self) -> None: ...


def with_cors_origins(settings: Settings, origins: Sequence[str]) -> Settings:
    """*settings* allowing *origins* too (each once, configured ones first)."""
    allowed = tuple(dict.fromkeys((*settings.cors.allowed_origins, *origins)))
    return dataclasses.replace(
        settings, cors=dataclasses.replace(settings.cors, allowed_origins=allowed)
    )


def serve_with_sandbox(
    *,
    host: str | None,
    port: int | None,
    sandbox_port: int,
    cors_origins: Sequence[str] = (),
    companion: Companion | None = None,
) -> int:
    try:
        settings = sandbox_settings(host, port, sandbox_port)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"token-broker: {problem}")
        return EXIT_CONFIG
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    for name, closest in unknown_environment(os.environ):
        log.warning("environment_variable_ignored", variable=name, did_you_mean=closest,
                    reason="not a setting")  # fmt: skip
    run_loop(_run(settings, sandbox_port, cors_origins, companion))
    return EXIT_OK


async def _run(
    settings: Settings,
    sandbox_port: int,
    cors_origins: Sequence[str],
    companion: Companion | None,
) -> None:
    sandbox = SandboxSettings(
        client_id=settings.upstream.client_id, client_secret=settings.upstream.client_secret
    )
    # Every address first, so that one in use stops the command before anything runs.
    listeners = bind_listeners(settings, reuse_port=False)
    try:
        sockets = listen.bind(listen.Address("127.0.0.1", sandbox_port, ("--sandbox-port",)))
    except listen.CannotListen:
        for bound in listeners.values():
            listen.close(bound)
        raise
    runner = web.AppRunner(create_sandbox_app(sandbox), access_log=None)
    await runner.setup()
    demo_url = None
    try:
        sandbox_url = listen.url("127.0.0.1", sockets)
        if companion is not None:
            # Its origin is allowed before the broker starts: a page opened as soon as
            # the banner shows must not meet a refused preflight.
            demo_url = await companion.start(settings, sandbox_url=sandbox_url)
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=listen.BACKLOG).start()
        log.info("sandbox_started", url=sandbox_url)
        settings = with_cors_origins(settings, [*([demo_url] if demo_url else []), *cors_origins])

        async def announce(urls: list[str]) -> None:
            if companion is not None:
                companion.broker_started(urls[0], settings.cors.allowed_origins)
            banner = quick_start(
                settings, broker_url=urls[0], sandbox_port=sandbox_port, demo_url=demo_url
            )
            print(banner, flush=True)

        await serve(settings, on_started=announce, listeners=listeners)
    finally:
        if companion is not None:
            await companion.stop()
        await runner.cleanup()
        for bound in [*listeners.values(), sockets]:
            listen.close(bound)  # those serve() took are closed already


def run_sandbox(settings: SandboxSettings, host: str, port: int) -> None:
    """``token-broker sandbox``: the sandbox upstream alone, until SIGINT or SIGTERM;
    CannotListen before anything starts when its address is taken."""
    sockets = listen.bind(listen.Address(host, port, ("--port",), ("--host",)))
    run_loop(_sandbox_only(settings, host, sockets))


async def _sandbox_only(settings: SandboxSettings, host: str, sockets: list[socket]) -> None:
    runner = web.AppRunner(create_sandbox_app(settings), access_log=None)
    await runner.setup()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=listen.BACKLOG).start()
        url = listen.url(host, sockets)
        log.info("sandbox_started", url=url)
        print(
            f"token-broker sandbox: the simulated upstream listens on {url} (demo client id"
            f" {settings.client_id!r}; what it saw at {url}/_sandbox/stats). Stop with Ctrl-C.",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()

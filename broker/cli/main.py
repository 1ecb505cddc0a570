"""The ``token-broker`` command: serve, sandbox, check-config, keygen, healthcheck.

Exit codes: 0 ok, 1 bad configuration, 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker import __version__
from broker.config.checks import Checker
from broker.config.model import ConfigError, Settings, load_settings, redacted_values
from broker.observability.logs import configure_logging
from broker.web import listen_file

if TYPE_CHECKING:
    from broker.demo.sdk import SdkSource

EXIT_OK, EXIT_CONFIG, EXIT_USAGE = 0, 1, 2
# healthcheck: the server does not answer (what Docker's HEALTHCHECK expects of a failure).
EXIT_UNHEALTHY = 1


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    raise SystemExit(args.command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-broker",
        description="A gateway that swaps browser session tokens for checkout JWTs.",
    )
    parser.add_argument("--version", action="version", version=f"token-broker {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration")
    source.add_argument(
        "--sandbox", action="store_true", help="run against an embedded sandbox upstream"
    )
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--workers", type=int, help="processes sharing the port (overrides server.workers)"
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="also allow this exact origin (e.g. http://localhost:3000) to call from a"
        " browser; repeatable; adds to cors.allowed_origins",
    )
    sandbox_only = serve.add_argument_group("with --sandbox")
    sandbox_only.add_argument(
        "--sandbox-port", type=int, default=8081, help="the embedded sandbox's port"
    )
    sandbox_only.add_argument(
        "--demo-port",
        type=_port,
        metavar="P",
        help="the demo partner site's port on 127.0.0.1 (default 8082; 0: any free port)",
    )
    sandbox_only.add_argument(
        "--sdk-url",
        type=_sdk_source,
        metavar="URL",
        help="where the demo page loads the vendor's SDK: an http(s) URL or a local copy"
        " of its dist/index.mjs (default: the pinned version from a public npm CDN)",
    )
    serve.set_defaults(command=_serve)

    sandbox = commands.add_parser("sandbox", help="run only the sandbox upstream")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    sandbox.add_argument(
        "--token-ttl", type=float, default=300.0, help="checkout JWT lifetime (seconds)"
    )
    sandbox.add_argument(
        "--rate-limit-per-second",
        type=float,
        help="answer 429 past this many partner calls per second (the vendor's is 5)",
    )
    sandbox.add_argument(
        "--rate-limit-window",
        type=float,
        default=1.0,
        metavar="S",
        help="measure that rate over any S seconds (default 1, as the vendor; shorter"
        " tolerates jitter in a paced client's arrivals)",
    )
    sandbox.set_defaults(command=_sandbox)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(command=_check_config)

    keygen = commands.add_parser("keygen", help="print a new ES256 private key (PEM)")
    keygen.set_defaults(command=_keygen)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when the local server answers /healthz (the image's HEALTHCHECK)",
    )
    health.add_argument(
        "--url",
        help="the /healthz URL to probe (default: from the file the server writes at "
        f"${listen_file.ENVIRONMENT_VARIABLE}, else {listen_file.DEFAULT_HEALTH_URL})",
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    health.set_defaults(command=_healthcheck)
    return parser


def _origin(value: str) -> str:
    """An origin as cors.allowed_origins accepts it (the same check as the config's)."""
    problems: list[str] = []
    Checker(problems).origins([value])
    if problems:
        raise argparse.ArgumentTypeError(problems[0].removeprefix("cors.allowed_origins: "))
    return value


def _port(value: str) -> int:
    port = int(value) if value.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return port


def _sdk_source(value: str) -> SdkSource:
    from broker.demo.sdk import sdk_source  # noqa: PLC0415 - only `serve --sandbox` needs it

    return sdk_source(value)


def load_for_serve(
    path: Path,
    environ: Mapping[str, str],
    host: str | None,
    port: int | None,
    cors_origins: Sequence[str] = (),
) -> Settings:
    settings = load_settings(path, environ)
    server = settings.server
    server = dataclasses.replace(
        server, host=host or server.host, port=server.port if port is None else port
    )
    # --cors-origin adds to the configured origins (each once), never replaces them.
    origins = tuple(dict.fromkeys((*settings.cors.allowed_origins, *cors_origins)))
    cors = dataclasses.replace(settings.cors, allowed_origins=origins)
    return dataclasses.replace(settings, server=server, cors=cors)


def _serve(args: argparse.Namespace) -> int:
    from broker.web.server import run  # noqa: PLC0415 - keeps check-config/keygen light

    if args.sandbox:
        from broker.cli.sandbox_mode import serve_with_sandbox  # noqa: PLC0415
        from broker.demo import DEFAULT_PORT, DemoSite  # noqa: PLC0415

        demo = DemoSite(
            port=DEFAULT_PORT if args.demo_port is None else args.demo_port,
            sdk=args.sdk_url,
        )
        return serve_with_sandbox(
            host=args.host,
            port=args.port,
            sandbox_port=args.sandbox_port,
            cors_origins=args.cors_origin,
            companion=demo,
        )
    if args.demo_port is not None or args.sdk_url is not None:
        sys.stderr.write("token-broker serve: --demo-port and --sdk-url need --sandbox\n")
        return EXIT_USAGE
    load = functools.partial(
        load_for_serve,
        args.config.resolve(),
        dict(os.environ),
        args.host,
        args.port,
        tuple(args.cors_origin),
    )
    try:
        settings = load()
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    workers = settings.server.workers if args.workers is None else args.workers
    run(load, workers or os.cpu_count() or 1)
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    from aiohttp import web  # noqa: PLC0415

    from broker.sandbox import SandboxSettings, create_sandbox_app  # noqa: PLC0415

    configure_logging(fmt="auto", level="info")
    try:
        sandbox_settings = SandboxSettings(
            token_ttl=args.token_ttl,
            rate_limit_per_second=args.rate_limit_per_second,
            rate_limit_window=args.rate_limit_window,
        )
    except ValueError as exc:
        sys.stderr.write(f"token-broker sandbox: {exc}\n")
        return EXIT_USAGE
    app = create_sandbox_app(sandbox_settings)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_settings(args.file, os.environ)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    effective = redacted_values(args.file, os.environ)
    print(json.dumps(effective, indent=2, sort_keys=True))
    return EXIT_OK


def _keygen(_args: argparse.Namespace) -> int:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    sys.stdout.write(pem.decode())
    return EXIT_OK


def _healthcheck(args: argparse.Namespace) -> int:
    url = args.url
    path = os.environ.get(listen_file.ENVIRONMENT_VARIABLE)
    if url is None and path:
        try:
            url = listen_file.read(Path(path))
        except FileNotFoundError:
            sys.stderr.write(f"token-broker healthcheck: {path} does not exist yet\n")
            return EXIT_UNHEALTHY
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"token-broker healthcheck: {exc}\n")
            return EXIT_UNHEALTHY
    problem = listen_file.probe(url or listen_file.DEFAULT_HEALTH_URL, args.timeout)
    if problem is not None:
        sys.stderr.write(f"token-broker healthcheck: {problem}\n")
        return EXIT_UNHEALTHY
    return EXIT_OK


def _print_problems(exc: ConfigError) -> None:
    lines = "\n".join(f"  - {problem}" for problem in exc.problems)
    sys.stderr.write(
        f"token-broker: invalid configuration ({len(exc.problems)} problems):\n{lines}\n"
    )


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``token-broker`` command: serve, sandbox, check-config, doctor, keygen, healthcheck.

Exit codes: 0 ok, 1 bad configuration (or a file that cannot be written), 2 usage,
3 an address that cannot be listened on, 4 a ``doctor`` check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker import __version__
from broker.config.checks import Checker
from broker.config.listen import CannotListen
from broker.config.model import (
    ConfigError,
    Settings,
    load_settings,
    redacted_values,
    unknown_environment,
)
from broker.credentials import valid_id
from broker.observability.logs import configure_logging, get_logger
from broker.web import listen_file

if TYPE_CHECKING:
    from broker.demo.sdk import SdkSource

EXIT_OK, EXIT_CONFIG, EXIT_USAGE = 0, 1, 2
EXIT_CANNOT_LISTEN = CannotListen.exit_code  # 3
EXIT_CHECK_FAILED = 4  # doctor: a check failed (the configuration itself loaded)
# healthcheck: the server does not answer (what Docker's HEALTHCHECK expects of a failure).
EXIT_UNHEALTHY = 1
# The flags of `serve` that override a configuration key: named when that key's
# address cannot be listened on.
SERVE_FLAGS = {"server.port": "--port", "server.host": "--host"}

log = get_logger("broker.cli")


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

    doctor = commands.add_parser(
        "doctor",
        help="check a configuration against the world: upstream credentials, init path,"
        " JWKS, Redis, clock, TLS",
    )
    doctor.add_argument("--config", type=Path, metavar="FILE", required=True)
    doctor.add_argument(
        "--customer", type=_id, metavar="ID", help="with --invoice: mint a checkout JWT for it"
    )
    doctor.add_argument(
        "--invoice", type=_id, metavar="ID", help="with --customer: an invoice it owns"
    )
    doctor.add_argument(
        "--broker",
        metavar="URL",
        help="a running broker (http://host:port) whose JWKS must hold this signing key",
    )
    doctor.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per check (default 10)"
    )
    doctor.set_defaults(command=_doctor)

    _add_operator_commands(commands)

    keygen = commands.add_parser("keygen", help="print a new ES256 private key (PEM)")
    keygen.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the key to FILE (mode 0600, atomically) instead of standard output",
    )
    keygen.add_argument("--force", action="store_true", help="with --out: replace FILE")
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


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``reload`` and ``promote``: calls to a running broker's admin listener."""
    reload = commands.add_parser(
        "reload",
        help="ask a running broker (its admin listener, from FILE) to re-read its"
        " configuration; with Redis every replica does; prints each one's outcome",
    )
    reload.add_argument("--config", type=Path, metavar="FILE", required=True)
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    reload.set_defaults(command=_reload)

    promote = commands.add_parser(
        "promote",
        help="make one of a partner's configured OAuth credentials its primary (rotation)",
    )
    promote.add_argument("--config", type=Path, metavar="FILE", required=True)
    promote.add_argument(
        "--partner", default="default", metavar="ID", help="the partner account (default: default)"
    )
    promote.add_argument("--client-id", required=True, metavar="ID", help="the credential's id")
    promote.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    promote.set_defaults(command=_promote)


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


def _id(value: str) -> str:
    if not valid_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an ID (1-64 of [A-Za-z0-9_-])")
    return value


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
    try:
        return _serve_until_stopped(args)
    except CannotListen as exc:  # before anything started: one sentence, no traceback
        sys.stderr.write(exc.sentence(SERVE_FLAGS) + "\n")
        return EXIT_CANNOT_LISTEN


def _serve_until_stopped(args: argparse.Namespace) -> int:
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
        # Not resolved: relative paths in the file are read beside it as named, also
        # when it is a symlink (a Kubernetes ConfigMap's).
        args.config.absolute(),
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
    log_unknown_environment(os.environ)
    workers = (settings.server.workers if args.workers is None else args.workers) or (
        os.cpu_count() or 1
    )
    # Loading checked server.workers; --workers may change the count, so check it again.
    problems: list[str] = []
    Checker(problems).admin_workers(settings.admin, workers=workers, backend=settings.cache.backend)
    if problems:
        _print_problems(ConfigError(problems))
        return EXIT_CONFIG
    run(load, workers)
    return EXIT_OK


def unknown_environment_warnings(environ: Mapping[str, str]) -> list[str]:
    return [
        f"{name} is not a setting, so it is ignored"
        + (f"; did you mean {closest}?" if closest else "")
        for name, closest in unknown_environment(environ)
    ]


def log_unknown_environment(environ: Mapping[str, str]) -> None:
    """One warning per ``BROKER_*`` variable no setting reads (logged at start)."""
    for name, closest in unknown_environment(environ):
        log.warning("environment_variable_ignored", variable=name, did_you_mean=closest,
                    reason="not a setting")  # fmt: skip


def _sandbox(args: argparse.Namespace) -> int:
    from broker.cli.sandbox_mode import run_sandbox  # noqa: PLC0415
    from broker.sandbox import SandboxSettings  # noqa: PLC0415

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
    try:
        run_sandbox(sandbox_settings, args.host, args.port)
    except CannotListen as exc:
        sys.stderr.write(exc.sentence() + "\n")
        return EXIT_CANNOT_LISTEN
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    for warning in unknown_environment_warnings(os.environ):
        sys.stderr.write(f"token-broker: warning: {warning}\n")
    try:
        load_settings(args.file, os.environ)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    effective = redacted_values(args.file, os.environ)
    print(json.dumps(effective, indent=2, sort_keys=True))
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    from broker.cli import operator  # noqa: PLC0415

    return operator.reload(args.config, os.environ, args.timeout)


def _promote(args: argparse.Namespace) -> int:
    from broker.cli import operator  # noqa: PLC0415

    return operator.promote(args.config, os.environ, args.partner, args.client_id, args.timeout)


def _doctor(args: argparse.Namespace) -> int:
    from broker.cli.doctor import run_doctor  # noqa: PLC0415 - its imports are heavier

    if (args.customer is None) != (args.invoice is None):
        sys.stderr.write("token-broker doctor: give --customer and --invoice together\n")
        return EXIT_USAGE
    return run_doctor(
        args.config,
        os.environ,
        customer=args.customer,
        invoice=args.invoice,
        broker=args.broker,
        timeout=args.timeout,
    )


def _keygen(args: argparse.Namespace) -> int:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if args.out is not None:
        return _write_private(args.out, pem, force=args.force)
    if args.force:
        sys.stderr.write("token-broker keygen: --force needs --out\n")
        return EXIT_USAGE
    readable = _others_may_read_stdout()
    if readable is not None:
        sys.stderr.write(
            f"token-broker keygen: warning: standard output is a file other users may read"
            f" (mode {readable:04o}), and this is a private key; write it with"
            " `token-broker keygen --out FILE` (mode 0600), or `chmod 600` that file\n"
        )
    sys.stdout.write(pem.decode())
    return EXIT_OK


def _others_may_read_stdout() -> int | None:
    """The mode of standard output when it is a regular file that its group or others
    may read (a shell's ``> file`` under the usual umask), else None. Such a file is
    not ours to chmod: we did not create it, and it may hold more than the key."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        return stat.S_IMODE(mode)
    return None


def _write_private(path: Path, data: bytes, *, force: bool) -> int:
    """*data* in *path*, mode 0600 from its first byte, all or nothing: written to a
    scratch file beside it, then linked into place (which refuses an existing *path*)
    or, with *force*, renamed over it."""
    directory = path.absolute().parent
    try:
        descriptor, scratch = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    except OSError as exc:
        sys.stderr.write(f"token-broker keygen: cannot write in {directory} ({exc.strerror})\n")
        return EXIT_CONFIG
    try:
        with os.fdopen(descriptor, "wb") as handle:  # mkstemp made it 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            Path(scratch).replace(path)
        else:
            os.link(scratch, path)
    except FileExistsError:
        sys.stderr.write(
            f"token-broker keygen: {path} exists; pass --force to replace it"
            " (a signing key still in use must stay in sessions.verify_key_files)\n"
        )
        return EXIT_USAGE
    except OSError as exc:
        sys.stderr.write(f"token-broker keygen: cannot write {path} ({exc.strerror})\n")
        return EXIT_CONFIG
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(scratch).unlink()
    sys.stderr.write(f"token-broker keygen: wrote a new ES256 private key to {path} (mode 0600)\n")
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

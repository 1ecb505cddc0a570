"""``token-broker reload`` and ``promote``: the admin calls, made from the configuration.

Both read the configuration file to find the admin listener and its key, so an
operator types no secret on the command line (where it would reach the shell history
and the process list).
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config.model import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_REFUSED = 1  # the broker answered, and refused (a bad configuration, no such credential)
EXIT_UNREACHABLE = 5


def reload(config: Path, environ: Mapping[str, str], timeout: float) -> int:
    """Ask the broker to reload (every replica, with Redis); print what each did."""
    return _call(config, environ, "POST", "/admin/v1/reload", None, timeout)


def promote(
    config: Path, environ: Mapping[str, str], partner: str, client_id: str, timeout: float
) -> int:
    path = f"/admin/v1/partners/{partner}/promote"
    return _call(config, environ, "POST", path, {"client_id": client_id}, timeout)


def _call(
    config: Path,
    environ: Mapping[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    timeout: float,
) -> int:
    try:
        settings = load_settings(config, environ)
    except ConfigError as exc:
        # The file on disk is what a reload would read: its problems are the answer.
        for problem in exc.problems:
            sys.stderr.write(f"token-broker: {problem}\n")
        return EXIT_REFUSED
    admin = settings.admin
    if not admin.enabled:
        sys.stderr.write(
            "token-broker: admin.enabled is false in this configuration: enable the admin"
            " listener, or send SIGHUP to the broker's process to reload it\n"
        )
        return EXIT_REFUSED
    host = _connect_host(settings)
    connection = http.client.HTTPConnection(host, admin.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {admin.api_key}", "Content-Type": "application/json"}
    try:
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    except OSError as exc:
        sys.stderr.write(
            f"token-broker: the admin listener at {host}:{admin.port} did not answer"
            f" ({exc.strerror or exc}); is the broker running with this configuration?\n"
        )
        return EXIT_UNREACHABLE
    finally:
        connection.close()
    try:
        shown = json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        shown = text
    print(shown)
    return EXIT_OK if response.status == 200 else EXIT_REFUSED


def _connect_host(settings: Settings) -> str:
    host = settings.admin.host
    return "127.0.0.1" if host in {"0.0.0.0", ""} else "::1" if host == "::" else host  # noqa: S104

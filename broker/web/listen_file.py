"""The listen file: where a running server says it listens, so that a probe started
beside it (the image's HEALTHCHECK, ``token-broker healthcheck``) checks the port the
server really has, whatever ``--port``, ``BROKER_SERVER_PORT`` or the config file chose.

Only written when ``TOKEN_BROKER_LISTEN_FILE`` names a path (the image sets it): two
brokers on one host must not share a file by accident.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

ENVIRONMENT_VARIABLE = "TOKEN_BROKER_LISTEN_FILE"
DEFAULT_HEALTH_URL = "http://127.0.0.1:8080/healthz"


def health_url(host: str, port: int) -> str:
    """The /healthz URL a process on the same host reaches the server at."""
    try:
        address = ipaddress.ip_address(host or "0.0.0.0")  # noqa: S104 - only parsed
    except ValueError:
        return f"http://{host}:{port}/healthz"  # a host name: as configured
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}/healthz"


def write(path: Path, host: str, port: int) -> None:
    """Replace *path* atomically, so that a probe never reads half a file."""
    document = json.dumps({"pid": os.getpid(), "healthz": health_url(host, port)})
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(document)
        Path(scratch).replace(path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def read(path: Path) -> str:
    """The /healthz URL in *path*; ValueError when it holds none."""
    try:
        url = json.loads(path.read_text())["healthz"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} does not name a health URL") from exc
    if not isinstance(url, str) or not url.startswith("http://"):
        raise ValueError(f"{path} does not name a health URL")
    return url


def probe(url: str, timeout: float) -> str | None:
    """None when *url* answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http only
            status: int = answer.status
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url} answered {status}"

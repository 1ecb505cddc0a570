"""``token-broker healthcheck``, the image's HEALTHCHECK: it probes the port the server
really listens on (the listen file), whatever chose that port."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.web import listen_file
from tests.cli.commands import BROKER, Ran, run_main, start_broker


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9000/healthz"),
        ("", "http://127.0.0.1:9000/healthz"),
        ("::", "http://[::1]:9000/healthz"),
        ("127.0.0.2", "http://127.0.0.2:9000/healthz"),
        ("::1", "http://[::1]:9000/healthz"),
        ("broker.internal", "http://broker.internal:9000/healthz"),
    ],
)
def test_the_health_url_is_where_a_neighbour_reaches_the_server(host: str, url: str) -> None:
    assert listen_file.health_url(host, 9000) == url


def test_a_listen_file_without_a_health_url_is_refused(tmp_path: Path) -> None:
    for text in ["", "[]", '{"healthz": 3}', '{"healthz": "file:///etc/passwd"}', "{"]:
        (tmp_path / "listen").write_text(text)
        with pytest.raises(ValueError, match="does not name a health URL"):
            listen_file.read(tmp_path / "listen")


def healthcheck(*args: str) -> Ran:
    """The probe, in this process (the servers it probes are real processes); the image's
    own HEALTHCHECK, a process, is tests/image's."""
    return run_main("healthcheck", *args)


async def test_healthcheck_follows_the_port_the_server_was_given(
    tmp_path: Path,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --port P`` with BROKER_SERVER_PORT saying something else: the probe
    follows the port the server listens on, and fails once it has stopped."""
    port, sandbox_port, demo_port, decoy = (unused_tcp_port_factory() for _ in range(4))
    path = tmp_path / "run" / "broker.listen"
    monkeypatch.setenv(listen_file.ENVIRONMENT_VARIABLE, str(path))
    monkeypatch.setenv("BROKER_SERVER_PORT", str(decoy))
    assert healthcheck().returncode == 1  # no server, no file yet
    process, _ = await start_broker(
        processes, port,
        *BROKER, "serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
        "--demo-port", str(demo_port),  # not the default 8082, which anything may hold
    )  # fmt: skip
    assert json.loads(path.read_text())["healthz"] == f"http://127.0.0.1:{port}/healthz"
    answered = await asyncio.to_thread(healthcheck)
    assert answered.returncode == 0, answered.stderr
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), timeout=20)
    refused = await asyncio.to_thread(healthcheck)
    assert refused.returncode == 1
    assert f"127.0.0.1:{port}" in refused.stderr


async def test_healthcheck_without_a_listen_file_probes_the_url_given(
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, sandbox_port, demo_port = (unused_tcp_port_factory() for _ in range(3))
    monkeypatch.delenv(listen_file.ENVIRONMENT_VARIABLE, raising=False)
    await start_broker(
        processes, port,
        *BROKER, "serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
        "--demo-port", str(demo_port),  # not the default 8082, which anything may hold
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/healthz"
    assert (await asyncio.to_thread(healthcheck, "--url", url)).returncode == 0
    missing = await asyncio.to_thread(healthcheck, "--url", url.replace("healthz", "nope"))
    assert missing.returncode == 1
    assert "answered 404" in missing.stderr

"""The `token-broker` command as users run it: real processes, real signals; what needs
no process (keygen's output, usage errors, check-config) through main() in this process."""

from __future__ import annotations

import asyncio
import json
import re
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.config.model import load_settings
from tests.cli.commands import (
    BROKER,
    alice_session,
    private_pem,
    run_main,
    start_broker,
    write_config,
)
from tests.conftest import MakeSandbox
from tests.helpers import API_KEY, auth


def test_keygen_prints_an_es256_private_key(tmp_path: Path) -> None:
    result = run_main("keygen")
    assert result.returncode == 0
    key = load_pem_private_key(result.stdout.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    # What it prints is what a configuration takes, in the form the other tests' keys have.
    config = write_config(tmp_path, "http://127.0.0.1:1", 8080, key_pem=result.stdout.encode())
    loaded = load_settings(config, {}).sessions.signing_key
    assert loaded.public_key().public_numbers() == key.public_key().public_numbers()
    assert result.stdout.splitlines()[0] == private_pem().decode().splitlines()[0]


def test_usage_errors_exit_2() -> None:
    assert run_main().returncode == 2
    assert run_main("serve").returncode == 2
    assert run_main("frobnicate").returncode == 2


def test_check_config_reports_all_problems_or_prints_redacted_config(tmp_path: Path) -> None:
    good = write_config(tmp_path, "http://127.0.0.1:1", 8080)
    result = run_main("check-config", str(good))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["upstream"]["client_secret"] == "<redacted>"
    assert "canary-cli-secret" not in result.stdout
    assert "BEGIN" not in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(
        good.read_text()
        .replace("port = 8080", "port = 99999")
        .replace("allow_insecure_http = true", "allow_insecure_http = false")
    )
    result = run_main("check-config", str(bad))
    assert result.returncode == 1
    assert "server.port" in result.stderr
    assert "https is required" in result.stderr
    assert "canary-cli-secret" not in result.stderr + result.stdout


async def test_serve_sandbox_runs_the_quick_start(
    unused_tcp_port_factory: Callable[[], int], processes: list[asyncio.subprocess.Process]
) -> None:
    port, sandbox_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    demo_port = unused_tcp_port_factory()
    process, url = await start_broker(
        processes, port,
        *BROKER, "serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
        "--demo-port", str(demo_port),
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        token = await alice_session(http, url, "sandbox-demo-api-key")
        async with http.get(url + "/checkout/invoice", headers=auth(token)) as response:
            assert response.status == 200
            assert (await response.json())["id"] == "inv_alice_1"
    # What aiohttp's parser refuses gets the broker's answer on the served listener too.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/1.1\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode())
    refused = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert refused.startswith(b"HTTP/1.0 400 "), refused
    assert b"Server: token-broker\r\n" in refused
    assert token.encode() not in refused
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    text = output.decode()
    assert "Quick start" in text
    assert f"http://127.0.0.1:{port}" in text
    # The demo site is the first URL the banner names.
    banner = text[text.index("token-broker is running") :]
    assert re.findall(r"http://127\.0\.0\.1:\d+", banner)[0] == f"http://127.0.0.1:{demo_port}"
    assert token not in text


async def test_sigterm_drains_a_slow_in_flight_request_then_exits_zero(
    tmp_path: Path,
    make_sandbox: MakeSandbox,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
) -> None:
    """The image's entrypoint: `token-broker serve --config FILE`."""
    sandbox = await make_sandbox(client_secret="canary-cli-secret")
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, str(sandbox.url), port)
    executable = str(Path(sys.executable).parent / "token-broker")
    process, url = await start_broker(processes, port, executable, "serve", "--config", str(config))
    async with aiohttp.ClientSession() as http:
        token = await alice_session(http, url, API_KEY)
        async with http.get(url + "/checkout/invoice", headers=auth(token)) as response:
            assert response.status == 200  # warm: the slow call below is the proxy itself
        await sandbox.faults(latency_ms=2000)
        slow = asyncio.ensure_future(http.get(url + "/checkout/invoice", headers=auth(token)))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(slow, timeout=10)
        assert response.status == 200
        assert (await response.json())["id"] == "inv_alice_1"
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    events = [
        json.loads(line)["event"] for line in output.decode().splitlines() if line.startswith("{")
    ]
    assert events.index("broker_draining") < events.index("broker_stopped")


def _connected_within(sockets: list[socket.socket], seconds: float) -> int:
    """How many of *sockets* (non-blocking, connecting) complete their handshake."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_WRITE)
        connected = 0
        deadline = time.monotonic() + seconds
        while connected < len(sockets) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(timeout=left):
                selector.unregister(key.fileobj)
                assert isinstance(key.fileobj, socket.socket)
                error = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                connected += error == 0
    return connected


async def test_a_burst_of_connections_while_the_loop_is_busy_waits_in_the_kernel(
    tmp_path: Path,
    make_sandbox: MakeSandbox,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
) -> None:
    """The listen backlog: a burst that arrives while the broker accepts nothing (here:
    stopped) is queued whole and served once it runs, no SYN dropped (128, aiohttp's
    default backlog, would complete 129 of these and leave the rest to retry)."""
    sandbox = await make_sandbox(client_secret="canary-cli-secret")
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, str(sandbox.url), port)
    process, _ = await start_broker(processes, port, *BROKER, "serve", "--config", str(config))
    burst = 400
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(burst)]
    try:
        process.send_signal(signal.SIGSTOP)
        try:
            for sock in sockets:
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
            assert _connected_within(sockets, 1.5) == burst
        finally:
            process.send_signal(signal.SIGCONT)
        # Once the broker runs again, every queued connection is served (its log read
        # meanwhile: a full pipe would stop it).
        assert process.stdout is not None
        log = asyncio.ensure_future(process.stdout.read())
        answers = await asyncio.to_thread(_healthz_on_each, sockets)
        assert answers.count(b"HTTP/1.1 200 ") == burst, set(answers)
        log.cancel()
    finally:
        for sock in sockets:
            sock.close()


def _healthz_on_each(sockets: list[socket.socket]) -> list[bytes]:
    request = b"GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n"
    for sock in sockets:
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(request)
    return [sock.recv(64)[:13] for sock in sockets]

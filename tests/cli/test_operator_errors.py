"""Errors that say what to do, as an operator meets them: real processes on loopback.

A port in use is one line naming the address and the way to change it, exit 3, and
nothing else (no traceback, no token fetch, no unclosed session); keygen protects the
private key it writes; `sandbox` says where it listens; unknown BROKER_* variables are
warned about.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.cli.commands import BROKER, run_cli, run_main, start_broker, write_config
from tests.conftest import MakeSandbox

EXIT_CANNOT_LISTEN = 3


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == EXIT_CANNOT_LISTEN, result.stdout + result.stderr
    assert result.stdout == ""  # no log line: nothing had started
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for text in ("address already in use", *expected):
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_busy_port_is_one_line_naming_the_address_and_the_ways_to_change_it(
    tmp_path: Path, taken_port: int
) -> None:
    # An unreachable upstream: the token fetch that used to fail first never starts.
    config = write_config(tmp_path, "http://127.0.0.1:1", taken_port)
    line = assert_one_line(
        run_cli("serve", "--config", str(config)),
        f"cannot listen on 127.0.0.1:{taken_port}",
        "--port, server.port or BROKER_SERVER_PORT",
    )
    assert line.startswith("token-broker: ")


def test_a_busy_port_with_workers_is_found_once(tmp_path: Path, taken_port: int) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", taken_port)
    assert_one_line(run_cli("serve", "--config", str(config), "--workers", "2"), "--port")


def test_a_busy_admin_port_names_its_key(
    tmp_path: Path, taken_port: int, unused_tcp_port_factory: Callable[[], int]
) -> None:
    extra = f'[admin]\nenabled = true\nport = {taken_port}\napi_key = "{"a" * 40}"'
    config = write_config(tmp_path, "http://127.0.0.1:1", unused_tcp_port_factory(), extra)
    assert_one_line(
        run_cli("serve", "--config", str(config)),
        f"127.0.0.1:{taken_port}",
        "admin.port or BROKER_ADMIN_PORT",
    )


def test_an_address_of_no_interface_names_the_host_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", 8080)
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine. Nothing is sent.
    result = run_cli("serve", "--config", str(config), "--host", "192.0.2.1")
    assert result.returncode == EXIT_CANNOT_LISTEN
    assert result.stderr.splitlines() == [
        "token-broker: cannot listen on 192.0.2.1:8080: no interface of this machine has"
        " that address; choose another host with --host, server.host or BROKER_SERVER_HOST"
    ]


@pytest.mark.parametrize("listener", ["--port", "--sandbox-port", "--demo-port"])
def test_serve_sandbox_names_the_flag_of_the_busy_listener(
    listener: str, taken_port: int, unused_tcp_port_factory: Callable[[], int]
) -> None:
    ports = {flag: str(unused_tcp_port_factory()) for flag in ("--port", "--sandbox-port")}
    ports["--demo-port"] = "0"
    ports[listener] = str(taken_port)
    argv = [arg for pair in ports.items() for arg in pair]
    line = assert_one_line(run_cli("serve", "--sandbox", *argv), f"127.0.0.1:{taken_port}")
    assert line.endswith(f"choose another port with {listener}") or (
        listener == "--port" and line.endswith("--port, server.port or BROKER_SERVER_PORT")
    )


def test_sandbox_on_a_busy_port(taken_port: int) -> None:
    line = assert_one_line(run_cli("sandbox", "--port", str(taken_port)))
    assert line.endswith("choose another port with --port")


async def test_sandbox_prints_its_url_when_it_starts(
    unused_tcp_port_factory: Callable[[], int], processes: list[asyncio.subprocess.Process]
) -> None:
    port = unused_tcp_port_factory()
    process = await asyncio.create_subprocess_exec(
        *BROKER, "sandbox", "--port", str(port), stdout=asyncio.subprocess.PIPE
    )
    processes.append(process)
    assert process.stdout is not None
    url = f"http://127.0.0.1:{port}"
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        assert line, "the sandbox exited without saying where it listens"
        if not line.startswith("{"):  # a log line (not a TTY: JSON) may come first
            break
    assert f"listens on {url} " in line
    assert f"{url}/_sandbox/stats" in line
    assert "sandbox-secret" not in line
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_sandbox/stats") as answer:
        assert answer.status == 200
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_out_writes_mode_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    old_umask = os.umask(0o022)  # the usual one: a plain `> file` would be 0644
    try:
        result = run_main("keygen", "--out", str(key_file))
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the key went to the file only
    assert f"wrote a new ES256 private key to {key_file} (mode 0600)" in result.stderr
    assert mode(key_file) == 0o600
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    first = key_file.read_bytes()

    refused = run_main("keygen", "--out", str(key_file))
    assert refused.returncode == 2
    assert "exists; pass --force to replace it" in refused.stderr
    assert key_file.read_bytes() == first

    forced = run_main("keygen", "--out", str(key_file), "--force")
    assert forced.returncode == 0, forced.stderr
    assert key_file.read_bytes() != first
    assert mode(key_file) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.pem"]  # no scratch left

    assert run_main("keygen", "--force").returncode == 2
    missing = run_main("keygen", "--out", str(tmp_path / "no" / "such" / "dir.pem"))
    assert missing.returncode == 1
    assert "cannot write" in missing.stderr


@pytest.mark.parametrize(("file_mode", "warned"), [(0o644, True), (0o600, False)])
def test_keygen_to_a_file_others_may_read_warns(
    tmp_path: Path, file_mode: int, warned: bool
) -> None:
    target = tmp_path / "signing.pem"
    target.touch(mode=file_mode)
    target.chmod(file_mode)
    with target.open("w") as stdout:
        result = subprocess.run(  # noqa: S603 - our own command
            [*BROKER, "keygen"], stdout=stdout, stderr=subprocess.PIPE, text=True, check=False
        )
    assert result.returncode == 0
    assert ("other users may read (mode 0644)" in result.stderr) is warned
    assert ("--out FILE" in result.stderr) is warned
    assert "PRIVATE KEY" not in result.stderr
    assert "BEGIN PRIVATE KEY" in target.read_text()
    assert mode(target) == file_mode  # a file we did not create is never chmodded


def test_keygen_to_a_pipe_does_not_warn() -> None:
    result = run_cli("keygen")
    assert result.returncode == 0
    assert result.stderr == ""


def test_check_config_warns_about_unknown_broker_variables(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", 8080)
    env = {"BROKER_SERVER_PROT": "9000", "BROKER_ZZZ_QQQ": "canary-value"}
    result = run_main("check-config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "token-broker: warning: BROKER_SERVER_PROT is not a setting, so it is ignored;"
        " did you mean BROKER_SERVER_PORT?",
        "token-broker: warning: BROKER_ZZZ_QQQ is not a setting, so it is ignored",
    ]
    assert "canary-value" not in result.stderr + result.stdout  # names, never values


async def test_serve_logs_unknown_broker_variables_at_start(
    tmp_path: Path,
    make_sandbox: MakeSandbox,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = await make_sandbox(client_secret="canary-cli-secret")
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, str(sandbox.url), port)
    monkeypatch.setenv("BROKER_UPSTREAM_READ_TIMEUOT", "canary-value")
    process, _ = await start_broker(processes, port, *BROKER, "serve", "--config", str(config))
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    text = output.decode()
    warning = next(line for line in text.splitlines() if "environment_variable_ignored" in line)
    assert '"variable":"BROKER_UPSTREAM_READ_TIMEUOT"' in warning
    assert '"did_you_mean":"BROKER_UPSTREAM_READ_TIMEOUT"' in warning
    assert "canary-value" not in text
    assert text.index("environment_variable_ignored") < text.index("broker_started")

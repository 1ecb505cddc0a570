"""Running the `token-broker` command as users run it: real processes, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.cli.main import main
from tests.helpers import API_KEY, auth

BROKER = [sys.executable, "-m", "broker"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command, fixed arguments
        [*BROKER, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@dataclass(frozen=True)
class Ran:
    """What `token-broker ARGS` exited with and wrote, as subprocess.CompletedProcess has it."""

    returncode: int
    stdout: str
    stderr: str


def run_main(*args: str, env: Mapping[str, str] | None = None) -> Ran:
    """`token-broker *args*` in this process: broker.cli.main.main(argv), which the console
    script calls, with *env* added to os.environ for the call. A process costs a second
    (an interpreter, broker's imports); the tests here that need none, for the argument
    parsing, the configuration's messages, the doctor's checks, call this. What only a
    process shows (the console script, signals, an ASCII terminal, workers, listening)
    keeps run_cli and start_broker. Blocking: an async test calls it in a thread
    (asyncio.to_thread) so that its loop keeps serving the upstreams the command calls."""
    out, err = io.StringIO(), io.StringIO()
    with _environ(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        else:
            raise AssertionError("main() returned instead of exiting")
    assert code is None or isinstance(code, int), code
    return Ran(code or 0, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environ(added: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def private_pem() -> bytes:
    """A new ES256 key (never tests.helpers.signing_key) as `token-broker keygen` prints
    it (PKCS#8 PEM), made in-process: a process per configuration cost a second a test.
    That keygen's own output is what a configuration takes is test_cli.py's
    test_keygen_prints_an_es256_private_key."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_config(
    tmp_path: Path, upstream: str, port: int, extra: str = "", key_pem: bytes | None = None
) -> Path:
    key = tmp_path / "signing.pem"
    key.write_bytes(private_pem() if key_pem is None else key_pem)
    config = tmp_path / "broker.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout = 10.0
[upstream]
base_url = "{upstream}"
allow_insecure_http = true
client_id = "sandbox-client"
client_secret = "canary-cli-secret"
[sessions]
api_keys = ["{API_KEY}"]
signing_key_file = "{key}"
[logging]
format = "json"
{extra}
"""
    )
    return config


async def wait_ready(url: str, process: asyncio.subprocess.Process, within: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            assert process.returncode is None, "the broker exited early"
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the broker never became ready")


async def start_broker(
    processes: list[asyncio.subprocess.Process], port: int, *argv: str
) -> tuple[asyncio.subprocess.Process, str]:
    """Run *argv* (a broker listening on *port*) until ready; stopped by ``processes``."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url, process)
    return process, url


async def alice_session(http: aiohttp.ClientSession, url: str, api_key: str) -> str:
    async with http.post(
        url + "/v1/checkout-auth/init",
        json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
        headers=auth(api_key),
    ) as response:
        token: str = (await response.json())["token"]
    return token

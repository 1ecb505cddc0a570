"""Reloads as an operator makes them: `token-broker serve --config FILE` processes, the
file edited on disk, then SIGHUP or the admin call; with Redis, one replica's reload
reaching the other."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.redis.processes import Managed, RedisServer, broker_command, free_port, http_get

ADMIN_KEY = "admin-key-0123456789abcdef0123456789"
OLD_KEY = "reload-old-api-key-0123456789"
NEW_KEY = "reload-new-api-key-0123456789"

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout = 1

[upstream]
base_url = "http://127.0.0.1:{sandbox_port}"
allow_insecure_http = true
client_id = "sandbox-client"
client_secret = "sandbox-secret"

[sessions]
api_keys_file = "api-keys-{name}.txt"
signing_key_file = "signing.pem"

[admin]
enabled = true
port = {admin_port}
api_key = "{admin_key}"

[logging]
format = "json"
{extra}
"""


def request(
    port: int, method: str, path: str, token: str | None = None, body: object = None
) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        text = response.read().decode()
        return response.status, json.loads(text) if text else {}
    finally:
        connection.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command
        broker_command(*args), capture_output=True, text=True, timeout=30, check=False
    )


def session_status(port: int, api_key: str) -> int:
    body = {"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    return request(port, "POST", "/v1/checkout-auth/init", api_key, body)[0]


def eventually(check: object, within: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.05)


class Replica:
    """One `token-broker serve` with its config file in *workdir*."""

    def __init__(self, workdir: Path, name: str, sandbox_port: int, extra: str = "") -> None:
        self.workdir, self.name = workdir, name
        self.port, self.admin_port = free_port(), free_port()
        self.sandbox_port, self.extra = sandbox_port, extra
        self.config = workdir / f"broker-{name}.toml"
        self.keys = workdir / f"api-keys-{name}.txt"
        self.write(OLD_KEY)
        self.process = Managed(
            name,
            broker_command("serve", "--config", str(self.config)),
            workdir / f"{name}.log",
            workdir,
        )

    def write(self, *api_keys: str, extra: str | None = None) -> None:
        self.keys.write_text("\n".join(api_keys) + "\n")
        self.config.write_text(
            CONFIG.format(
                port=self.port,
                sandbox_port=self.sandbox_port,
                name=self.name,
                admin_port=self.admin_port,
                admin_key=ADMIN_KEY,
                extra=self.extra if extra is None else extra,
            )
        )

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        self.process.start()

    def wait_ready(self) -> None:
        self.process.wait_until(lambda: http_get(self.port, "/readyz")[0] == 200, "ready")

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.process.log.read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [line for line in parsed if line.get("event") == name]


@pytest.fixture
def sandbox_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    sandbox = Managed(
        "sandbox",
        broker_command("sandbox", "--port", str(port)),
        tmp_path / "sandbox.log",
        tmp_path,
    )
    sandbox.start()
    sandbox.wait_until(lambda: http_get(port, "/_sandbox/stats")[0] == 200, "up")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "signing.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    yield port
    sandbox.kill()


def test_sighup_and_the_admin_call_reread_the_files_and_a_bad_one_changes_nothing(
    tmp_path: Path, sandbox_port: int
) -> None:
    replica = Replica(tmp_path, "solo", sandbox_port)
    replica.start()
    try:
        assert session_status(replica.port, OLD_KEY) == 200
        assert session_status(replica.port, NEW_KEY) == 401
        # A new key in the secret file, then SIGHUP: both keys work, no restart.
        replica.write(OLD_KEY, NEW_KEY)
        assert replica.process.process is not None
        os.kill(replica.process.process.pid, signal.SIGHUP)
        eventually(lambda: session_status(replica.port, NEW_KEY) == 200)
        assert session_status(replica.port, OLD_KEY) == 200
        # A broken file: refused, logged, answered; the running configuration stays.
        replica.write(NEW_KEY, extra='[tokens]\nmax_entries = "many"\n')
        status, report = request(replica.admin_port, "POST", "/admin/v1/reload", ADMIN_KEY)
        assert status == 409, report
        assert report["status"] == "refused"
        problems = report["problems"]
        assert isinstance(problems, list)
        assert problems == ["tokens.max_entries: expected int, got 'many'"], problems
        assert session_status(replica.port, OLD_KEY) == 200
        assert replica.events("config_reload_refused")
        # What only a restart can change is refused with that reason.
        replica.write(NEW_KEY, extra="[metrics]\nport = 9\n")
        status, report = request(replica.admin_port, "POST", "/admin/v1/reload", ADMIN_KEY)
        assert status == 409
        assert report["problems"] == [
            "metrics.port: changed, which needs a restart (a reload cannot)"
        ]
        # Fixed: the old key is taken out, at once.
        replica.write(NEW_KEY)
        status, report = request(replica.admin_port, "POST", "/admin/v1/reload", ADMIN_KEY)
        assert status == 200, report
        assert report["partners"] == {"default": "updated"}
        assert session_status(replica.port, OLD_KEY) == 401
        assert session_status(replica.port, NEW_KEY) == 200
        # Without the admin key: refused, and audited.
        assert request(replica.admin_port, "POST", "/admin/v1/reload", "wrong")[0] == 401
        # The commands an operator types: the admin listener and key from the file.
        done = cli("reload", "--config", str(replica.config))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["partners"] == {"default": "kept"}
        refused = cli("promote", "--config", str(replica.config), "--client-id", "nope")
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["code"] == "not_found"
    finally:
        replica.process.kill()
    log = replica.process.log.read_text()
    assert OLD_KEY not in log
    assert NEW_KEY not in log
    assert ADMIN_KEY not in log


def test_with_redis_a_reload_on_one_replica_reloads_the_other_and_reports_it(
    tmp_path: Path, sandbox_port: int, redis_server: RedisServer
) -> None:
    encryption_key = base64.b64encode(os.urandom(32)).decode()
    namespace = f"reload-{os.getpid()}-{time.monotonic_ns()}"
    extra = (
        f'[cache]\nbackend = "redis"\nredis_url = "{redis_server.url}"\n'
        f'encryption_key = "{encryption_key}"\nnamespace = "{namespace}"\n'
        "redis_timeout = 1.0\n"
    )
    replicas = [Replica(tmp_path, name, sandbox_port, extra) for name in ("one", "two")]
    for replica in replicas:  # both start at once, each ready in its own time
        replica.launch()
    try:
        for replica in replicas:
            replica.wait_ready()
        for replica in replicas:
            assert session_status(replica.port, NEW_KEY) == 401
            replica.write(OLD_KEY, NEW_KEY)  # the shared configuration, as mounted on each
        first, second = replicas
        status, report = request(first.admin_port, "POST", "/admin/v1/reload", ADMIN_KEY)
        assert status == 200, report
        peers = report["peers"]
        assert isinstance(peers, list)
        assert [peer["status"] for peer in peers] == ["reloaded"], report
        assert session_status(second.port, NEW_KEY) == 200
        assert second.events("config_reload_done")[-1]["origin"] == "peer"
    finally:
        for replica in replicas:
            replica.process.kill()

"""The container image as an operator runs it, under podman: BROKER_TEST_IMAGE names the
image (``.ci/image`` builds deploy/docker/Dockerfile with its defaults and sets it;
``BROKER_TEST_REDIS_IMAGE`` names a Redis image built the same way). Without it these
tests are skipped: the rest of the suite needs no container engine.

Every container joins the host's network (``--network host``) and listens on 127.0.0.1;
each carries the label below and is removed when its test ends, whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import auth

IMAGE = os.environ.get("BROKER_TEST_IMAGE", "")
REDIS_IMAGE = os.environ.get("BROKER_TEST_REDIS_IMAGE", "")
LABEL = "token-broker-test=image"
API_KEY = "image-test-api-key-0123456789abcdef"
# The sandbox's default partner credentials (broker/sandbox/settings.py).
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
KEYS = [
    ("cus_alice", "inv_alice_1"),
    ("cus_alice", "inv_alice_2"),
    ("cus_bob", "inv_bob_1"),
    ("cus_carol", "inv_carol_1"),
]

pytestmark = pytest.mark.skipif(
    not IMAGE, reason="BROKER_TEST_IMAGE names no image to test (.ci/image builds one)"
)


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed podman arguments
        ["podman", *args],  # noqa: S607 - podman from PATH, as an operator runs it
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Containers:
    """Containers a test starts: each named after the test, all removed at its end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def run(self, name: str, options: list[str], command: list[str], image: str = IMAGE) -> str:
        full = f"{self.prefix}-{name}"
        self.names.append(full)
        started = podman(
            "run", "--detach", "--name", full, "--label", LABEL, "--network", "host",
            *options, image, *command,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        return full

    def logs(self, name: str) -> str:
        return podman("logs", name).stdout + podman("logs", name).stderr

    def remove_all(self) -> None:
        if self.names:
            podman("rm", "--force", "--time", "0", *self.names)


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Containers]:
    assert shutil.which("podman"), "podman is not installed (bash scripts/podman-setup.sh)"
    held = Containers(f"tb-test-{os.getpid()}-{request.node.name[:30]}".replace("_", "-"))
    yield held
    held.remove_all()


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """Secret files the broker's uid (10001) can read, mounted read-only."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    keygen = podman("run", "--rm", "--label", LABEL, IMAGE, "keygen")
    assert keygen.returncode == 0, keygen.stderr
    (folder / "signing-key.pem").write_text(keygen.stdout)
    (folder / "cache-key").write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    folder.chmod(0o755)
    for secret in folder.iterdir():
        secret.chmod(0o644)
    return folder


async def wait_for(url: str, name: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"{name} is {state}:\n{podman('logs', name).stderr}"
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered 200:\n{podman('logs', name).stderr}")


async def session(http: aiohttp.ClientSession, broker: str, customer: str, invoice: str) -> str:
    async with http.post(
        broker + "/v1/checkout-auth/init",
        json={"customer_id": customer, "invoice_id": invoice},
        headers=auth(API_KEY),
    ) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
    return token


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def broker_environment(
    port: int, sandbox_port: int, **extra: str
) -> list[str]:  # the operator's way: the shipped config plus environment and secret files
    env = {
        "BROKER_SERVER_HOST": "127.0.0.1",
        "BROKER_UPSTREAM_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "BROKER_UPSTREAM_ALLOW_INSECURE_HTTP": "true",
        "BROKER_UPSTREAM_CLIENT_ID": CLIENT_ID,
        "BROKER_UPSTREAM_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_SESSIONS_API_KEYS": API_KEY,
        "BROKER_SESSIONS_SIGNING_KEY_FILE": "/run/secrets/token-broker/signing-key.pem",
        "BROKER_LOGGING_FORMAT": "json",
        **extra,
    }
    pairs = [["--env", f"{key}={value}"] for key, value in env.items()]
    return [item for pair in pairs for item in pair]


HARDENED = [
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=16m",  # noqa: S108 - the container's own tmpfs
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
]  # fmt: skip


async def test_the_quick_start_runs_in_the_container(
    containers: Containers, unused_tcp_port_factory: Callable[[], int]
) -> None:
    """README's quick start, through the image: `serve --sandbox`, a session, the invoice."""
    port, sandbox_port, demo_port = (unused_tcp_port_factory() for _ in range(3))
    name = containers.run(
        "sandbox-mode",
        HARDENED,
        ["serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
         *demo_port_arguments(demo_port)],
    )  # fmt: skip
    broker = f"http://127.0.0.1:{port}"
    await wait_for(broker + "/readyz", name)
    async with aiohttp.ClientSession() as http:
        async with http.get(broker + "/healthz") as health:
            assert health.status == 200
        async with http.post(
            broker + "/v1/checkout-auth/init",
            json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
            headers=auth("sandbox-demo-api-key"),
        ) as response:
            assert response.status == 200
            token = (await response.json())["token"]
        async with http.get(broker + "/checkout/invoice", headers=auth(token)) as invoice:
            assert invoice.status == 200
            assert (await invoice.json())["id"] == "inv_alice_1"


def demo_port_arguments(port: int) -> list[str]:
    """`serve --sandbox` serves a demo partner site too, on a port of its own."""
    usage = podman("run", "--rm", "--label", LABEL, IMAGE, "serve", "--help").stdout
    return ["--demo-port", str(port)] if "--demo-port" in usage else []


async def test_an_operator_run_hardened_non_root_healthy_and_draining_on_sigterm(
    containers: Containers, secrets_dir: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    port, sandbox_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    sandbox = containers.run(
        "upstream", HARDENED, ["sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)]
    )
    await wait_for(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats", sandbox)
    # The port comes from the command line, overriding the config file's (8080): the
    # HEALTHCHECK must follow it.
    broker = containers.run(
        "broker",
        [*HARDENED, "--volume", f"{secrets_dir}:/run/secrets/token-broker:ro",
         *broker_environment(port, sandbox_port)],
        ["serve", "--config", "/etc/token-broker/broker.toml", "--port", str(port)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    await wait_for(url + "/readyz", broker)

    health = podman("healthcheck", "run", broker)
    assert health.returncode == 0, health.stdout + health.stderr
    uid = podman("exec", broker, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert uid.stdout.split() == ["10001", "10001"]
    written = podman("exec", broker, "python3", "-c", "open('/opt/venv/x', 'w')")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    capabilities = podman("exec", broker, "grep", "^CapEff", "/proc/1/status").stdout
    assert capabilities.split()[-1] == "0000000000000000"
    started = next(e for e in json_lines(containers.logs(broker)) if e["event"] == "broker_started")
    assert started["compiled"] is True
    assert started["listening"] == [url]

    async with aiohttp.ClientSession() as http:
        token = await session(http, url, "cus_alice", "inv_alice_1")
        async with http.get(url + "/checkout/invoice", headers=auth(token)) as warm:
            assert warm.status == 200
        async with http.post(
            f"http://127.0.0.1:{sandbox_port}/_sandbox/faults", json={"latency_ms": 2000}
        ) as faults:
            assert faults.status == 200
        slow = asyncio.ensure_future(http.get(url + "/checkout/invoice", headers=auth(token)))
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        assert podman("kill", "--signal", "TERM", broker).returncode == 0
        response = await asyncio.wait_for(slow, timeout=10)
        assert response.status == 200
        assert (await response.json())["id"] == "inv_alice_1"
    exit_code = await asyncio.to_thread(podman, "wait", broker)
    stopped_within = time.monotonic() - signalled
    assert exit_code.stdout.strip() == "0", containers.logs(broker)
    assert stopped_within < 15  # the shipped shutdown_timeout
    events = [e["event"] for e in json_lines(containers.logs(broker))]
    assert events.index("broker_draining") < events.index("broker_stopped")
    logs = containers.logs(broker)
    assert token not in logs
    assert CLIENT_SECRET not in logs


@pytest.mark.skipif(not REDIS_IMAGE, reason="BROKER_TEST_REDIS_IMAGE names no Redis image")
async def test_two_replicas_sharing_redis_mint_one_checkout_jwt_per_key(
    containers: Containers, secrets_dir: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    ports = [unused_tcp_port_factory() for _ in range(2)]
    sandbox_port, redis_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    redis_password = secrets.token_hex(16)
    redis = containers.run(
        "redis",
        HARDENED,
        ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
         "--requirepass", redis_password, "--save", "", "--appendonly", "no"],
        image=REDIS_IMAGE,
    )  # fmt: skip
    # The mints are delayed so that concurrent first requests overlap on every key.
    sandbox = containers.run(
        "upstream", HARDENED, ["sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)]
    )
    await wait_for(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats", sandbox)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{sandbox_port}/_sandbox/faults", json={"mint_latency_ms": 300}
        ) as faults,
    ):
        assert faults.status == 200
    replicas = [
        containers.run(
            f"replica-{index}",
            [
                *HARDENED,
                "--volume",
                f"{secrets_dir}:/run/secrets/token-broker:ro",
                *broker_environment(
                    port,
                    sandbox_port,
                    BROKER_CACHE_BACKEND="redis",
                    BROKER_CACHE_REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
                    BROKER_CACHE_ENCRYPTION_KEY_FILE="/run/secrets/token-broker/cache-key",
                ),
            ],
            ["serve", "--config", "/etc/token-broker/broker.toml", "--port", str(port)],
        )
        for index, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url, replica in zip(urls, replicas, strict=True):
        await wait_for(url + "/readyz", replica)
    async with aiohttp.ClientSession() as http:
        tokens = [await session(http, urls[0], *key) for key in KEYS]

        async def fetch(index: int) -> int:
            # Spread over both replicas and all keys, all at once.
            url, token = urls[index % 2], tokens[(index // 2) % len(tokens)]
            async with http.get(url + "/checkout/invoice", headers=auth(token)) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(fetch(index) for index in range(64)))
        async with http.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats") as answer:
            stats = await answer.json()
    assert statuses == [200] * 64
    assert stats["mints_per_key"] == {f"{c}/{i}": 1 for c, i in KEYS}
    for replica in replicas:
        assert podman("exec", redis, "true").returncode == 0  # Redis stayed up throughout
        assert "redis_unavailable" not in containers.logs(replica)


async def test_sighup_in_the_container_rereads_a_rotated_secret_file(
    containers: Containers, secrets_dir: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    """The operator's rotation: a mounted secret file changes, SIGHUP to PID 1 (the
    broker), the new key works and the old one is refused; no restart."""
    port, sandbox_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    new_key = "rotated-api-key-0123456789abcdef"
    keys = secrets_dir / "api-keys"
    keys.write_text(API_KEY + "\n")
    keys.chmod(0o644)
    sandbox = containers.run(
        "upstream", HARDENED, ["sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)]
    )
    await wait_for(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats", sandbox)
    environment = broker_environment(port, sandbox_port)
    index = environment.index(f"BROKER_SESSIONS_API_KEYS={API_KEY}")
    environment[index] = "BROKER_SESSIONS_API_KEYS_FILE=/run/secrets/token-broker/api-keys"
    broker = containers.run(
        "broker",
        [*HARDENED, "--volume", f"{secrets_dir}:/run/secrets/token-broker:ro", *environment],
        ["serve", "--config", "/etc/token-broker/broker.toml", "--port", str(port)],
    )
    url = f"http://127.0.0.1:{port}"
    await wait_for(url + "/readyz", broker)

    async def issued(http: aiohttp.ClientSession, key: str) -> int:
        async with http.post(
            url + "/v1/checkout-auth/init",
            json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"},
            headers=auth(key),
        ) as response:
            return response.status

    async with aiohttp.ClientSession() as http:
        assert await issued(http, API_KEY) == 200
        assert await issued(http, new_key) == 401
        keys.write_text(new_key + "\n")
        assert podman("kill", "--signal", "HUP", broker).returncode == 0
        deadline = time.monotonic() + 10
        while await issued(http, new_key) != 200:
            assert time.monotonic() < deadline, containers.logs(broker)
            await asyncio.sleep(0.1)
        assert await issued(http, API_KEY) == 401
    done = [e for e in json_lines(containers.logs(broker)) if e["event"] == "config_reload_done"]
    assert [e["origin"] for e in done] == ["sighup"]
    assert new_key not in containers.logs(broker)

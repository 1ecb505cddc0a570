"""A cluster as an operator would run it: sandbox, Redis and three `token-broker serve`s.

Synchronous on purpose (subprocesses and blocking HTTP); async tests call the few
blocking steps through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.redis.processes import (
    Managed,
    RedisServer,
    broker_command,
    free_port,
    http_get,
    http_post,
)

API_KEY = "e2e-api-key-0123456789abcdef"
METRICS_TOKEN = "e2e-metrics-token-0123456789abcdef"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
NAMESPACE = "e2e"
RATE = 5  # the vendor's limit, enforced by the sandbox and budgeted by the brokers
# The sandbox measures RATE over this window, not the vendor's full second: the brokers'
# budget keeps RATE calls a WINDOW (1.05 s) apart when granted, and a call reaches the
# sandbox later than its slot by however long its replica's loop took to send it (up to
# 0.15 s seen with four test runs and coverage on 2 cores). A correct shared budget so
# never trips it, with 0.55 s to spare. A budget that grants RATE + 1 in a window sends
# them together, and trips it; replicas budgeting on their own (3 x RATE) trip it
# several times over. A budget too generous over time fails the span assertion instead.
SANDBOX_RATE_WINDOW = 0.5
LEASE_TTL = 2.0
# cache.redis_timeout (default 0.25 s). Five processes share 2 cores with the test and
# whatever else the machine runs (coverage's tracer in each, in scripts/test.sh): a burst
# of hundreds of requests kept a replica's loop from reading Redis's answer within 1 s,
# once within 5 s, and a replica whose call times out budgets alone, with its share of
# the rate, beside the shared budget, which is not what these tests are about
# (test_redis_degraded.py is). A Redis that is down is refused at once, whatever this is.
REDIS_TIMEOUT = 10.0
REPLICAS = 3

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
rate_limit_per_second = {rate}
rate_limit_max_wait = 30
read_timeout = 30

[sessions]
api_keys = ["{api_key}"]
signing_key_file = "{signing_key_file}"

[cache]
backend = "redis"
redis_url = "{redis_url}"
encryption_key = "{encryption_key}"
namespace = "{namespace}"
redis_timeout = {redis_timeout}
lease_ttl = {lease_ttl}

[limits]
# Every test request comes from 127.0.0.1: the per-IP buckets would throttle the test.
ip_requests_per_second = 100000.0
ip_burst = 100000
init_requests_per_second = 100000.0
init_burst = 100000

[logging]
format = "json"

[metrics]
bearer_token = "{metrics_token}"
"""


class Cluster:
    def __init__(self, workdir: Path, redis_executable: str) -> None:
        self.workdir = workdir
        self.redis = RedisServer(redis_executable, free_port(), workdir)
        self.sandbox_port = free_port()
        self.sandbox = Managed(
            "sandbox",
            broker_command(
                "sandbox",
                "--port",
                str(self.sandbox_port),
                "--rate-limit-per-second",
                str(RATE),
                "--rate-limit-window",
                str(SANDBOX_RATE_WINDOW),
            ),
            workdir / "sandbox.log",
            workdir,
        )
        key_file = workdir / "signing.pem"
        key_file.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        encryption_key = base64.b64encode(os.urandom(32)).decode()
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.brokers: list[Managed] = []
        for index, port in enumerate(self.ports):
            config = workdir / f"broker-{index}.toml"
            config.write_text(
                CONFIG.format(
                    port=port,
                    sandbox_port=self.sandbox_port,
                    rate=RATE,
                    api_key=API_KEY,
                    signing_key_file=key_file,
                    redis_url=self.redis.url,
                    encryption_key=encryption_key,
                    namespace=NAMESPACE,
                    lease_ttl=LEASE_TTL,
                    metrics_token=METRICS_TOKEN,
                    redis_timeout=REDIS_TIMEOUT,
                )
            )
            self.brokers.append(
                Managed(
                    f"broker-{index}",
                    broker_command("serve", "--config", str(config)),
                    workdir / f"broker-{index}.log",
                    workdir,
                )
            )

    def start(self) -> None:
        self.redis.start()
        self.sandbox.start()
        self.sandbox.wait_until(
            lambda: http_get(self.sandbox_port, "/_sandbox/stats")[0] == 200, "up"
        )
        self.ensure_healthy()

    def ensure_healthy(self) -> None:
        """Bring back whatever a test stopped, then wait for all replicas in shared mode."""
        if not self.redis.alive:
            self.redis.start()
        for broker in self.brokers:
            if not broker.alive:
                broker.start()
        for broker, port in zip(self.brokers, self.ports, strict=True):
            broker.wait_until(
                lambda port=port: self.ready(port) and not self.degraded(port), "ready"
            )
        assert http_post(self.sandbox_port, "/_sandbox/reset") == 200

    def stop(self) -> None:
        for process in [*self.brokers, self.sandbox, self.redis]:
            process.kill()

    @staticmethod
    def ready(port: int) -> bool:
        return http_get(port, "/readyz")[0] == 200

    @staticmethod
    def degraded(port: int) -> bool:
        status, text = http_get(port, "/metrics", headers=METRICS_AUTH)
        assert status == 200
        return "broker_redis_degraded 1.0" in text

    @staticmethod
    def readiness(port: int) -> tuple[int, dict[str, object]]:
        status, text = http_get(port, "/readyz")
        body: dict[str, object] = json.loads(text)
        return status, body

    def events(self, name: str) -> int:
        """How many times the replicas have logged *name* since they first started."""
        count = 0
        for broker in self.brokers:
            text = broker.log.read_text(errors="replace") if broker.log.exists() else ""
            lines = (line for line in text.splitlines() if line.startswith("{"))
            count += sum(1 for line in lines if json.loads(line).get("event") == name)
        return count

    def wait_for_mode(self, *, degraded: bool, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(self.degraded(port) == degraded for port in self.ports):
                return
            time.sleep(0.05)
        raise AssertionError(f"replicas not all {'degraded' if degraded else 'shared'}")


def unique_tag() -> str:
    return uuid.uuid4().hex[:8]

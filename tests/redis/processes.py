"""Real processes for the Redis tests: redis-server, the sandbox and brokers, on loopback.

Everything here is synchronous and bounded: starting waits for readiness up to a
deadline, stopping kills and reaps. Each process writes its output to a log file
whose tail is quoted when it fails to come up.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 20.0
MISSING_REDIS = (
    "redis-server is not installed: the Redis backend tests need a real server "
    "(`apt-get install -y redis-server`; .ci/run installs it)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_executable() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def http_get(
    port: int, path: str, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def http_post(port: int, path: str, body: str = "{}") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class Managed:
    """One child process, restartable, with its output in *log*."""

    name: str
    argv: list[str]
    log: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv built by the tests
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: object, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not {what} after {START_TIMEOUT} s:\n{self.tail()}")


class RedisServer(Managed):
    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        argv = [
            executable, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
        ]  # fmt: skip
        super().__init__(f"redis-server:{port}", argv, workdir / f"redis-{port}.log", workdir)
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        self.wait_until(self._pong, "answering PING")

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")


def broker_command(*args: str) -> list[str]:
    # The interpreter running the tests, so the subprocesses see the same broker.
    return [sys.executable, "-m", "broker", *args]

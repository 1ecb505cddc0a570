"""Starting the servers a benchmark needs: sandbox, nginx (upstream and reference),
delay server, bare aiohttp proxy and the broker, each on its own loopback port."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import BenchError, Proc, Procs, free_port, http_get, wait_until_ok

BENCH_DIR = Path(__file__).resolve().parent
NGINX_DIR = BENCH_DIR / "nginx"
PAYLOADS = BENCH_DIR / "payloads"
API_KEY = "bench-api-key-0123456789"
METRICS_TOKEN = "bench-metrics-token-0123456789abcdef"
FIXED_BEARER = "bench-fixed-upstream-token"
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
# The broker's own rate limits must not throttle the load generator (these are the
# largest values its configuration accepts).
HIGH_RATE, HIGH_BURST = 100_000.0, 1_000_000
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")

# The broker as this interpreter's environment has it installed: `-P` keeps the working
# directory off sys.path, so that a run from the repository measures an installed wheel
# (the compiled one, say), not the source tree next to it. An editable install still
# resolves to the source.
BROKER_MODULE = ("-P", "-m", "broker")


@dataclass
class Server:
    name: str
    port: int
    proc: Proc
    code: str = ""  # for a broker: the code it was started from (see broker_code)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class BrokerOptions:
    workers: int = 1
    # None: the default configuration's (info: one request_finished line per request),
    # with no BROKER_* variable of this environment passed on (BROKER_UPSTREAM_TRANSPORT,
    # say), so that the broker runs what a user's configuration runs.
    log_level: str | None = "warning"
    max_entries: int = 100_000
    max_connections: int | None = None  # None: the product default (upstream.max_connections)
    session_ttl: int = 86400  # bench/soak.py lets sessions expire under load
    python: str | None = None  # None: this interpreter's broker


class Launcher:
    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.python = sys.executable
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self._signing_key: Path | None = None

    def _start(self, name: str, argv: list[str]) -> Proc:
        return self.procs.start(name, argv)

    def sandbox(self, name: str, token_ttl: float) -> Server:
        port = free_port()
        argv = [self.python, *BROKER_MODULE, "sandbox", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--token-ttl", str(token_ttl)]
        proc = self._start(name, argv)
        wait_until_ok(proc, port, "/_sandbox/stats")
        return Server(name, port, proc)

    def delay_server(self, name: str, delay_ms: float, workers: int) -> Server:
        port = free_port()
        script = str(BENCH_DIR / "delay_server.py")
        argv = [self.python, script, "--port", str(port), "--delay-ms", str(delay_ms)]
        proc = self._start(name, [*argv, "--workers", str(workers)])
        wait_until_ok(proc, port, "/checkout/invoice")
        return Server(name, port, proc)

    def upstream(self, name: str, sandbox: Server, delay: Server | None = None) -> Server:
        """nginx in front: fixed JSON (or the delay server) for checkout, sandbox for mints."""
        subs = {
            "SANDBOX_PORT": str(sandbox.port),
            "INVOICE_JSON": _payload("invoice.json"),
            "PAYMENT_METHODS_JSON": _payload("payment_methods.json"),
        }
        template = "upstream_fast.conf"
        if delay is not None:
            template, subs["DELAY_PORT"] = "upstream_slow.conf", str(delay.port)
        return self._nginx(name, template, subs, "/checkout/invoice")

    def reference(self, name: str, upstream: Server) -> Server:
        subs = {"UPSTREAM_PORT": str(upstream.port), "FIXED_BEARER": FIXED_BEARER}
        return self._nginx(name, "reference.conf", subs, "/checkout/invoice")

    def _nginx(self, name: str, template: str, subs: dict[str, str], probe: str) -> Server:
        port = free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        text = (NGINX_DIR / template).read_text()
        for key, value in {**subs, "PORT": str(port), "PREFIX": str(prefix), "NAME": name}.items():
            text = text.replace(f"@{key}@", value)
        if left := _PLACEHOLDER.findall(text):
            raise BenchError(f"{template}: placeholders left unfilled: {left}")
        conf = prefix / f"{name}.conf"
        conf.write_text(text)
        argv = [self.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / f"{name}.err")]
        proc = self._start(name, argv)
        wait_until_ok(proc, port, probe)
        return Server(name, port, proc)

    def bare_proxy(
        self,
        name: str,
        upstream: Server,
        mode: str = "forward",
        wrapper: Sequence[str] = (),
        python: str | None = None,
    ) -> Server:
        """``mode``: "forward" (the bare aiohttp proxy), "lean", "answer" or "own" (the
        floors); *wrapper*: a command that runs the proxy (valgrind, for
        bench/instructions.py); *python*: an interpreter with the broker installed (the
        floors import its lean client), else this one."""
        port = free_port()
        script = str(BENCH_DIR / "bare_proxy.py")
        argv = [python or self.python, script, "--port", str(port), "--upstream", upstream.base_url]
        proc = self._start(name, [*wrapper, *argv, "--mode", mode])
        wait_until_ok(proc, port, "/checkout/invoice", timeout=120.0 if wrapper else 30.0)
        return Server(name, port, proc)

    def broker(
        self, name: str, upstream: Server, options: BrokerOptions, wrapper: Sequence[str] = ()
    ) -> Server:
        port = free_port()
        config = self.workdir / f"{name}.toml"
        config.write_text(self._broker_toml(port, upstream, options))
        python = options.python or self.python
        argv = [*wrapper, python, *BROKER_MODULE, "serve", "--config", str(config)]
        code = broker_code(python)
        env = None
        if options.log_level is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        proc = self.procs.start(name, argv, env=env)
        # With several workers each answers some probes: ask until several in a row pass.
        for _ in range(4 * options.workers):
            wait_until_ok(proc, port, "/readyz", timeout=180.0 if wrapper else 60.0)
        return Server(name, port, proc, code)

    def signing_key(self) -> Path:
        if self._signing_key is None:
            path = self.workdir / "signing.pem"
            proc = self._start("keygen", [self.python, *BROKER_MODULE, "keygen"])
            if proc.popen.wait(30) != 0:
                raise BenchError(f"token-broker keygen failed:\n{proc.log_tail()}")
            path.write_text(proc.log_path.read_text())
            path.chmod(0o600)
            self._signing_key = path
        return self._signing_key

    def _broker_toml(self, port: int, upstream: Server, options: BrokerOptions) -> str:
        pool = (
            ""
            if options.max_connections is None
            else f"max_connections = {options.max_connections}\n"
        )
        logging = ""
        if options.log_level is not None:
            logging = f'\n[logging]\nformat = "json"\nlevel = "{options.log_level}"\n'
        return f"""\
[server]
host = "127.0.0.1"
port = {port}
workers = {options.workers}
shutdown_timeout = 2.0

[upstream]
base_url = "{upstream.base_url}"
allow_insecure_http = true
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
rate_limit_per_second = 10000
{pool}
[sessions]
api_keys = ["{API_KEY}"]
signing_key_file = "{self.signing_key()}"
ttl = {options.session_ttl}

[tokens]
max_entries = {options.max_entries}

[limits]
ip_requests_per_second = {HIGH_RATE}
ip_burst = {HIGH_BURST}
session_requests_per_second = {HIGH_RATE}
session_burst = {HIGH_BURST}
init_requests_per_second = {HIGH_RATE}
init_burst = {HIGH_BURST}
{logging}
[metrics]
bearer_token = "{METRICS_TOKEN}"
"""


def broker_code(python: str | None = None) -> str:
    """The commit of broker/, plus a fingerprint of any uncommitted change to it.

    Others may edit broker/ while a run goes on; each broker records what it ran.
    """
    repo = BENCH_DIR.parent

    def git(*args: str) -> bytes:
        argv = ["git", "-C", str(repo), *args]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return b""
        return done.stdout if done.returncode == 0 else b""

    head = git("rev-parse", "--short", "HEAD").decode().strip() or "unknown"
    changes = hashlib.sha256(git("diff", "HEAD", "--", "broker"))
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "broker").split()
    for path in sorted(untracked):
        changes.update(path + b"\0" + (repo / path.decode()).read_bytes())
    compiled = "+compiled" if _compiled_build(repo, python or sys.executable) else ""
    if not untracked and changes.digest() == hashlib.sha256(b"").digest():
        return head + compiled
    return f"{head}+local:{changes.hexdigest()[:8]}{compiled}"


def _compiled_build(repo: Path, python: str) -> bool:
    """Whether the broker *python* starts runs the request path compiled: true where
    its environment has the compiled wheel installed."""
    check = subprocess.run(
        [python, "-P", "-c", "import broker; print(broker.compiled())"],
        capture_output=True,
        text=True,
        check=False,
        cwd=repo,
    )
    if check.returncode != 0:
        raise BenchError(check.stderr.strip())
    return check.stdout.strip() == "True"


def _payload(name: str) -> str:
    text = (PAYLOADS / name).read_text().strip()
    json.loads(text)
    if "'" in text or "$" in text:
        raise BenchError(f"{name}: must not contain ' or $ (nginx string)")
    return text


def issue_sessions(broker: Server, count: int, path: Path, prefix: str = "bench") -> Path:
    """``POST /v1/checkout-auth/init`` for *count* distinct keys; one token per line."""
    conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
    tokens = []
    try:
        for index in range(count):
            body = json.dumps(
                {
                    "customer_id": f"cus_{prefix}_{index:06d}",
                    "invoice_id": f"inv_{prefix}_{index:06d}",
                }
            )
            headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
            conn.request("POST", "/v1/checkout-auth/init", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise BenchError(f"init answered {response.status}: {payload[:200]!r}")
            tokens.append(json.loads(payload)["token"])
    finally:
        conn.close()
    path.write_text("\n".join(tokens) + "\n")
    return path


def sandbox_stats(sandbox: Server) -> dict[str, object]:
    status, body = http_get(sandbox.port, "/_sandbox/stats", timeout=30.0)
    if status != 200:
        raise BenchError(f"sandbox stats answered {status}")
    stats: dict[str, object] = json.loads(body)
    return stats


def broker_metrics(broker: Server) -> dict[str, float]:
    """The broker's ``/metrics`` as {"name{labels}": value} (one worker's view)."""
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    status, body = http_get(broker.port, "/metrics", timeout=10.0, headers=headers)
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values

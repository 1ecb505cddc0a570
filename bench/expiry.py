"""Requests that cross a token expiry: short-lived checkout JWTs under a steady load.

Two identical stacks (sandbox, fast nginx upstream, broker with 1 worker), one whose
sandbox mints 3-second tokens and one whose tokens outlive the run. Both get the same
paced load (wrk's delay(): each connection waits between requests, so the broker is
far from saturated and latency is service time, not queueing). Every key is minted and
in use before measuring; then the p99 of the expiry stack is compared with the steady
one, and the broker's lookup outcomes show whether any request waited on a mint.
Alongside, a second, slow wrk (its latency not counted) calls a path that the sandbox
itself verifies, so an expired token forwarded by the broker would show as a 401 there.
The sandbox shares the load generator's core, and minting costs it CPU, so the run uses
fewer keys (``--expiry-keys``) than the throughput matrix; its CPU is reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from load import Load, Sample, finish_wrk, measure, run_wrk, start_wrk
from procs import Procs, cpu_seconds
from profiles import LONG_TOKEN_TTL, Row, RunSettings, layout
from servers import BrokerOptions, Launcher, Server, broker_metrics, issue_sessions, sandbox_stats

SHORT_TOKEN_TTL = 3.0
CONNECTIONS = 32
PACE_MS = 20
VERIFY_PATH = "/checkout/preferences/theme"  # proxied by nginx to the sandbox, which checks
VERIFY_CONNECTIONS, VERIFY_PACE_MS = 2, 50
WARMUP_S = 4.0
_LOOKUP = re.compile(
    r'^broker_token_lookups_total\{outcome="(\w+)",partner="[^"]+",tier="checkout"\}$'
)
_UNAUTHORIZED = re.compile(
    r'^broker_upstream_unauthorized_total\{partner="[^"]+",result="(\w+)"\}$'
)


@dataclass(frozen=True)
class ExpiryRun:
    label: str  # "steady" or "expiry"
    token_ttl: float
    sample: Sample
    lookups: dict[str, int]  # checkout lookup outcome -> requests during the run
    upstream_unauthorized: dict[str, int]
    sandbox: dict[str, object]
    sandbox_cores: float
    verified: int  # requests to VERIFY_PATH during the run
    broker_code: str

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "token_ttl": self.token_ttl,
            "sample": self.sample.as_dict(),
            "lookups": self.lookups,
            "upstream_unauthorized": self.upstream_unauthorized,
            "sandbox": self.sandbox,
            "sandbox_cores": self.sandbox_cores,
            "verified": self.verified,
            "broker_code": self.broker_code,
        }


def run_expiry(settings: RunSettings, progress: Callable[[str], None]) -> list[ExpiryRun]:
    workdir = settings.workdir / "expiry"
    workdir.mkdir(exist_ok=True)
    runs: list[ExpiryRun] = []
    with Procs(workdir) as procs:
        launcher = Launcher(procs, settings.workdir)
        stacks: dict[str, tuple[float, Server, Server]] = {}
        for label, ttl in (("steady", LONG_TOKEN_TTL), ("expiry", SHORT_TOKEN_TTL)):
            sandbox = launcher.sandbox(f"expiry-{label}-sandbox", ttl)
            upstream = launcher.upstream(f"expiry-{label}-upstream", sandbox)
            options = BrokerOptions(
                max_connections=settings.broker_max_connections,
                log_level=None,
                python=settings.builds.image,
            )
            broker = launcher.broker(f"expiry-{label}-broker", upstream, options)
            stacks[label] = (ttl, sandbox, broker)
        tokens = issue_sessions(
            stacks["steady"][2], settings.expiry_keys, workdir / "tokens.txt", prefix="expiry"
        )
        for repeat in range(settings.repeat):
            for label, (ttl, sandbox, broker) in stacks.items():
                row = Row("image", broker, (broker.proc,), pinned=True)
                layout_name, cpus = layout(procs, row)
                load = Load(
                    connections=CONNECTIONS,
                    duration=settings.expiry_duration,
                    cpus=cpus,
                    pace_ms=PACE_MS,
                )
                verify = replace(
                    load,
                    connections=VERIFY_CONNECTIONS,
                    pace_ms=VERIFY_PACE_MS,
                    path=VERIFY_PATH,
                )
                run_wrk(broker.base_url, tokens, replace(load, duration=WARMUP_S))
                metrics_before, stats_before = broker_metrics(broker), sandbox_stats(sandbox)
                sandbox_cpu = cpu_seconds(sandbox.proc.tree())
                verifier = start_wrk(broker.base_url, tokens, verify)
                sample = measure(
                    scenario="expiry",
                    row=label,
                    repeat=repeat,
                    layout=layout_name,
                    base_url=broker.base_url,
                    tokens=tokens,
                    load=load,
                    pids=row.pids,
                    bench_pids=lambda: [pid for proc in procs.all() for pid in proc.tree()],
                )
                sandbox_cpu = cpu_seconds(sandbox.proc.tree()) - sandbox_cpu
                verified = finish_wrk(verifier, timeout=60)
                metrics_after, stats_after = broker_metrics(broker), sandbox_stats(sandbox)
                run = ExpiryRun(
                    label=label,
                    token_ttl=ttl,
                    sample=sample,
                    lookups=_deltas(_LOOKUP, metrics_before, metrics_after),
                    upstream_unauthorized=_deltas(_UNAUTHORIZED, metrics_before, metrics_after),
                    sandbox=_sandbox_deltas(stats_before, stats_after),
                    sandbox_cores=sandbox_cpu / sample.wrk.duration_s,
                    verified=verified.requests,
                    broker_code=broker.code,
                )
                runs.append(run)
                progress(
                    f"expiry [{repeat + 1}/{settings.repeat}] {label} (token ttl {ttl:g} s): "
                    f"{sample.rps:,.0f} req/s, p50 {sample.wrk.p50_ms:.2f} ms, "
                    f"p99 {sample.wrk.p99_ms:.2f} ms, lookups {run.lookups}, "
                    f"mints {run.sandbox['tokens_issued']}"
                )
    return runs


def _deltas(
    pattern: re.Pattern[str], before: dict[str, float], after: dict[str, float]
) -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in after.items():
        match = pattern.match(name)
        if match:
            found[match.group(1)] = round(value - before.get(name, 0.0))
    return found


def _sandbox_deltas(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    def count(stats: dict[str, object], key: str) -> int:
        value = stats.get(key, 0)
        return value if isinstance(value, int) else 0

    old = before.get("mints_per_key")
    new = after.get("mints_per_key")
    assert isinstance(old, dict)
    assert isinstance(new, dict)
    per_key = sorted(int(v) - int(old.get(k, 0)) for k, v in new.items())
    deltas: dict[str, object] = {
        key: count(after, key) - count(before, key)
        for key in ("tokens_issued", "expired_tokens_seen", "unauthorized_served")
    }
    if per_key:
        deltas["mints_per_key_min_median_max"] = [
            per_key[0],
            per_key[len(per_key) // 2],
            per_key[-1],
        ]
    return deltas

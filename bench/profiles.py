"""The throughput matrix: every server, at each connection count, repeated and interleaved.

Profile "fast": nginx answers checkout paths with fixed JSON. Per-core layout: the
measured server alone on one core, wrk and everything else on the other.
Profile "slow": checkout paths wait 20 ms in the delay server behind the same nginx
front. Every process may use both cores (wrk with two threads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from builds import Builds
from load import Load, Sample, measure, run_wrk
from procs import ALL_CPUS, Proc, Procs, pin
from servers import BrokerOptions, Launcher, Server, issue_sessions, sandbox_stats

SERVER_CPU = max(ALL_CPUS)
LOAD_CPUS = frozenset(ALL_CPUS - {SERVER_CPU}) or ALL_CPUS
LONG_TOKEN_TTL = 3600.0  # no checkout JWT expires during a run
ROW_LABELS = {
    "direct": "upstream direct",
    "nginx": "reference nginx proxy",
    "bare": "bare aiohttp proxy",
    "plain": "broker, plain install (`pip install .`), default config",
    "image": "broker, the image's build (compiled wheel), default config",
    "image_warning": "broker, the image's build, log level warning",
    "image2": "broker, the image's build, default config, 2 workers",
    "floor_lean": "floor: aiohttp server + lean client",
    "floor_server": "floor: aiohttp server alone",
    "floor_own": "floor: own server (httptools) + lean client",
}
# The default configuration (BrokerOptions.log_level None): what a user's config file
# that only names the upstream, the credentials and the keys runs.
DEFAULT_CONFIG: Final = None
# Measured at the first connection count of the fast profile only: what the broker
# could reach at best while it keeps aiohttp's server (see bench/bare_proxy.py).
FLOOR_MODES = {"floor_lean": "lean", "floor_server": "answer", "floor_own": "own"}


@dataclass(frozen=True)
class RunSettings:
    profiles: tuple[str, ...]
    connections: tuple[int, ...]
    duration: float
    warmup: float
    repeat: int
    sessions: int
    expiry_duration: float
    expiry_keys: int
    memory: bool
    memory_keys: int
    broker_max_connections: int | None
    builds: Builds
    py_spy: str | None
    workdir: Path
    results_dir: Path


@dataclass(frozen=True)
class Row:
    key: str
    server: Server
    measured: tuple[Proc, ...]
    pinned: bool
    connections: tuple[int, ...] | None = None  # None: every connection count

    def pids(self) -> list[int]:
        return [pid for proc in self.measured for pid in proc.tree()]


@dataclass
class ProfileResult:
    name: str
    samples: list[Sample] = field(default_factory=list)
    mints: dict[str, object] = field(default_factory=dict)
    pyspy: dict[str, object] | None = None
    broker_code: dict[str, str] = field(default_factory=dict)  # row -> code it ran


def layout(procs: Procs, row: Row) -> tuple[str, frozenset[int]]:
    """Pin the measured processes and everything else; returns (name, wrk's CPUs)."""
    if not row.pinned or len(ALL_CPUS) < 2:
        for proc in procs.all():
            pin(proc.tree(), ALL_CPUS)
        return f"all {len(ALL_CPUS)} cores shared", ALL_CPUS
    measured = set(row.pids())
    for proc in procs.all():
        pin([pid for pid in proc.tree() if pid not in measured], LOAD_CPUS)
    pin(measured, {SERVER_CPU})
    return f"server on cpu {SERVER_CPU}, wrk + rest on cpu {_cpus(LOAD_CPUS)}", LOAD_CPUS


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def warm_tokens(broker: Server, sandbox: Server, tokens: Path, passes: int = 20) -> int:
    """Drive every session until a pass mints nothing new: every cache holds every key."""
    start = before = _tokens_issued(sandbox)
    for _ in range(passes):
        run_wrk(broker.base_url, tokens, Load(connections=64, duration=2, cpus=ALL_CPUS))
        after = _tokens_issued(sandbox)
        if after == before:
            return after - start
        before = after
    return before - start


def _tokens_issued(sandbox: Server) -> int:
    value = sandbox_stats(sandbox)["tokens_issued"]
    assert isinstance(value, int)
    return value


def run_profile(name: str, settings: RunSettings, progress: Callable[[str], None]) -> ProfileResult:
    slow = name == "slow"
    result = ProfileResult(name)
    workdir = settings.workdir / name
    workdir.mkdir(exist_ok=True)
    with Procs(workdir) as procs:
        launcher = Launcher(procs, settings.workdir)
        sandbox = launcher.sandbox(f"{name}-sandbox", LONG_TOKEN_TTL)
        delay = launcher.delay_server(f"{name}-delay", 20.0, workers=2) if slow else None
        upstream = launcher.upstream(f"{name}-upstream", sandbox, delay)
        ref = launcher.reference(f"{name}-nginx", upstream)
        bare = launcher.bare_proxy(f"{name}-bare", upstream)
        pool = settings.broker_max_connections
        image = settings.builds.image
        options = {
            "plain": BrokerOptions(
                log_level=DEFAULT_CONFIG, max_connections=pool, python=settings.builds.plain
            ),
            "image": BrokerOptions(log_level=DEFAULT_CONFIG, max_connections=pool, python=image),
        }
        if slow:
            options["image2"] = BrokerOptions(
                workers=2, log_level=DEFAULT_CONFIG, max_connections=pool, python=image
            )
        else:
            options["image_warning"] = BrokerOptions(max_connections=pool, python=image)
        brokers = {
            key: launcher.broker(f"{name}-{key}", upstream, option)
            for key, option in options.items()
        }
        tokens = issue_sessions(brokers["image"], settings.sessions, workdir / "tokens.txt")
        progress(f"{name}: {settings.sessions} sessions issued; minting every key in each broker")
        for key, broker in brokers.items():
            result.broker_code[key] = broker.code
            result.mints[f"warm-up mints, {ROW_LABELS[key]}"] = warm_tokens(broker, sandbox, tokens)
        upstream_procs = (upstream.proc,) if delay is None else (upstream.proc, delay.proc)
        rows = [
            Row("nginx", ref, (ref.proc,), pinned=not slow),
            Row("direct", upstream, upstream_procs, pinned=not slow),
            Row("bare", bare, (bare.proc,), pinned=not slow),
            Row("plain", brokers["plain"], (brokers["plain"].proc,), pinned=not slow),
            Row("image", brokers["image"], (brokers["image"].proc,), pinned=not slow),
        ]
        if slow:
            rows.append(Row("image2", brokers["image2"], (brokers["image2"].proc,), pinned=False))
        else:
            warning = brokers["image_warning"]
            first = settings.connections[:1]
            rows.append(Row("image_warning", warning, (warning.proc,), True, first))
            for key, mode in FLOOR_MODES.items():
                floor = launcher.bare_proxy(f"{name}-{key}", upstream, mode)
                rows.append(Row(key, floor, (floor.proc,), True, first))
        _run_matrix(name, settings, procs, rows, tokens, result, progress, slow=slow)
        stats = sandbox_stats(sandbox)
        result.mints.update(_mint_summary(stats, caches=len(brokers) + slow))
        if settings.py_spy and not slow:
            from pyspy import profile_broker  # noqa: PLC0415 - optional

            progress("fast: py-spy on the image's build (an extra run, not in the table)")
            _, cpus = layout(procs, rows[4])
            result.pyspy = profile_broker(settings.py_spy, brokers["image"], tokens, settings, cpus)
    return result


def _run_matrix(
    name: str,
    settings: RunSettings,
    procs: Procs,
    rows: list[Row],
    tokens: Path,
    result: ProfileResult,
    progress: Callable[[str], None],
    *,
    slow: bool,
) -> None:
    total = (
        sum(
            1
            for c in settings.connections
            for r in rows
            if r.connections is None or c in r.connections
        )
        * settings.repeat
    )
    done = 0
    for repeat in range(settings.repeat):
        for connections in settings.connections:
            for row in rows:
                if row.connections is not None and connections not in row.connections:
                    continue
                layout_name, cpus = layout(procs, row)
                load = Load(
                    connections=connections,
                    duration=settings.duration,
                    cpus=cpus,
                    threads=2 if slow and len(cpus) > 1 else 1,
                )
                sample = measure(
                    scenario=name,
                    row=row.key,
                    repeat=repeat,
                    layout=layout_name,
                    base_url=row.server.base_url,
                    tokens=tokens,
                    load=load,
                    pids=row.pids,
                    bench_pids=lambda: [pid for proc in procs.all() for pid in proc.tree()],
                    warmup=settings.warmup,
                )
                result.samples.append(sample)
                done += 1
                progress(
                    f"{name} [{done}/{total}] {connections} conns, {ROW_LABELS[row.key]}: "
                    f"{sample.rps:,.0f} req/s, p50 {sample.wrk.p50_ms:.2f} ms, "
                    f"p99 {sample.wrk.p99_ms:.2f} ms, {sample.cores:.2f} cores,"
                    f" other load {sample.other_cores:.2f} cores, probe {sample.probe_ms:.1f} ms"
                    + _errors(sample)
                )


def _errors(sample: Sample) -> str:
    wrk = sample.wrk
    if wrk.non_2xx or wrk.socket_errors:
        return f", {wrk.non_2xx} non-2xx, {wrk.socket_errors} socket errors"
    return ""


def _mint_summary(stats: dict[str, object], caches: int) -> dict[str, object]:
    per_key = stats.get("mints_per_key")
    assert isinstance(per_key, dict)
    counts = sorted(int(v) for v in per_key.values())
    if not counts:
        return {}
    return {
        "sandbox tokens_issued": stats.get("tokens_issued"),
        "keys": len(counts),
        "caches (broker processes)": caches,
        "mints per key (min/median/max)": [counts[0], counts[len(counts) // 2], counts[-1]],
        "mints per key per cache": round(sum(counts) / len(counts) / caches, 3),
        "max mints in any second": stats.get("max_mints_in_any_second"),
        "unauthorized served": stats.get("unauthorized_served"),
        "oauth tokens issued": stats.get("oauth_tokens_issued"),
        "ideal": "1 mint per key per cache (long-lived tokens)",
    }

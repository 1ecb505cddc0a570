"""Load from wrk (with bench/wrk/sessions.lua) and what one measured run records."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from procs import (
    BenchError,
    cpu_by_process,
    cpu_seconds,
    harness_seconds,
    rss_bytes,
    system_busy_seconds,
)

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "sessions.lua"
CHECKOUT_PATH = "/checkout/invoice"
WRK_TIMEOUT_S = 5


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    socket_errors: int  # connect, read, write and timeouts
    non_2xx: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass(frozen=True)
class Load:
    """How wrk drives one run."""

    connections: int
    duration: float
    cpus: frozenset[int]
    threads: int = 1
    pace_ms: int = 0
    path: str = CHECKOUT_PATH


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def start_wrk(base_url: str, tokens: Path, load: Load) -> subprocess.Popen[str]:
    """Start wrk in the background; ``finish_wrk`` collects its result."""
    seconds = max(1, math.ceil(load.duration))
    argv = ["taskset", "-c", cpu_list(load.cpus), "wrk"]
    argv += ["-t", str(load.threads), "-c", str(load.connections), "-d", f"{seconds}s"]
    argv += ["--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(LUA_SCRIPT), base_url + load.path]
    argv += ["--", str(tokens), load.path, str(load.pace_ms)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(wrk: subprocess.Popen[str], timeout: float) -> WrkResult:
    try:
        stdout, stderr = wrk.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        wrk.kill()
        wrk.communicate()
        raise BenchError(f"wrk did not finish: {wrk.args!r}") from exc
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return _parse(json.loads(line.removeprefix("BENCH_JSON ")))
    raise BenchError(f"wrk printed no result ({wrk.returncode}):\n{stdout}\n{stderr}")


def run_wrk(base_url: str, tokens: Path, load: Load) -> WrkResult:
    with start_wrk(base_url, tokens, load) as wrk:
        return finish_wrk(wrk, timeout=load.duration + 60)


def _parse(raw: dict[str, float]) -> WrkResult:
    def ms(key: str) -> float:
        return raw[key] / 1000.0

    socket_errors = sum(
        int(raw[f"errors_{kind}"]) for kind in ("connect", "read", "write", "timeout")
    )
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        socket_errors=socket_errors,
        non_2xx=int(raw["errors_status"]),
        mean_ms=ms("latency_mean_us"),
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        p999_ms=ms("p99.9_us"),
        max_ms=ms("latency_max_us"),
    )


@dataclass(frozen=True)
class Sample:
    """One measured run of one server: wrk's view plus the server's CPU and memory."""

    scenario: str
    row: str
    connections: int
    repeat: int
    wrk: WrkResult
    cpu_s: float
    process_cores: tuple[float, ...]  # each measured process that used >= 1% of a core
    rss_bytes: int
    layout: str
    other_cores: float  # CPU used by programs the harness did not start (noise)
    probe_ms: float = math.nan  # machine_speed_probe() just before the run

    @property
    def rps(self) -> float:
        return self.wrk.rps

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.wrk.requests if self.wrk.requests else math.nan

    @property
    def cores(self) -> float:
        """CPU the measured processes used, in cores (1.0 = one core saturated)."""
        return self.cpu_s / self.wrk.duration_s if self.wrk.duration_s else math.nan

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(rps=self.rps, cpu_us_per_request=self.cpu_us_per_request, cores=self.cores)
        return data


def measure(
    *,
    scenario: str,
    row: str,
    repeat: int,
    layout: str,
    base_url: str,
    tokens: Path,
    load: Load,
    pids: Callable[[], list[int]],
    bench_pids: Callable[[], list[int]],
    warmup: float = 0.0,
) -> Sample:
    """Run wrk against *base_url*, accounting CPU and RSS of the processes in *pids*.

    *bench_pids* are all the processes the harness started: the machine's busy time
    minus theirs, wrk's and the harness's own is "other load" (other programs, steal).
    """
    if warmup > 0:
        run_wrk(base_url, tokens, replace(load, duration=warmup))
        time.sleep(0.2)
    probe = machine_speed_probe()
    measured, everything = pids(), bench_pids()
    before = cpu_by_process(measured)
    ours_before, busy_before = cpu_seconds(everything) + harness_seconds(), system_busy_seconds()
    result = run_wrk(base_url, tokens, load)
    after = cpu_by_process(measured)
    ours = cpu_seconds(everything) + harness_seconds() - ours_before
    other = system_busy_seconds() - busy_before - ours
    used = [after[pid] - before.get(pid, 0.0) for pid in after]
    busy = sorted((seconds / result.duration_s for seconds in used), reverse=True)
    return Sample(
        scenario=scenario,
        row=row,
        connections=load.connections,
        repeat=repeat,
        wrk=result,
        cpu_s=sum(used),
        process_cores=tuple(round(cores, 3) for cores in busy if cores >= 0.01),
        rss_bytes=rss_bytes(measured),
        layout=layout,
        other_cores=max(0.0, other / result.duration_s) if result.duration_s else 0.0,
        probe_ms=probe,
    )


PROBE_LOOPS = 300_000


def machine_speed_probe() -> float:
    """Milliseconds a fixed pure-Python loop takes on the slowest CPU, right now.

    A virtual machine's speed changes with its neighbours (by 2x here within minutes,
    unseen by /proc/stat), and runs measured minutes apart are compared: a run whose
    probe is well above the run's fastest probe measured a slower machine.
    """
    cpus = sorted(os.sched_getaffinity(0))
    slowest = 0.0
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            started = time.perf_counter()
            total = 0
            for i in range(PROBE_LOOPS):
                total += i * i % 7
            slowest = max(slowest, time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, cpus)
    return slowest * 1000

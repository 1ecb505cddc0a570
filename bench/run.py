"""Run the token-broker benchmark and print the markdown table.

    python3 bench/run.py [--quick] [--profile fast|slow|all] [--duration S] [--repeat N]
                         [--memory] [--py-spy PATH] [--plain-python PY] [--image-python PY]

The brokers run the two builds users install (bench/builds.py: the plain install and the
image's build, built from this tree and cached) unless --plain-python/--image-python
name interpreters that have them.

Writes bench/results/<time>-<mode>.json and .md (and latest.json / latest.md).
Needs nginx, wrk and taskset on PATH, and an interpreter with the package installed
(this script re-executes itself with one when started from another).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import builds
from expiry import ExpiryRun, run_expiry
from memory import run_memory
from profiles import ProfileResult, RunSettings, run_profile
from report import DASH, TIMES
from summary import render

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"


def ensure_interpreter(script: str = __file__) -> None:
    """Re-exec *script* under a Python that has the broker and aiohttp, if this one
    lacks them."""
    if all(importlib.util.find_spec(name) for name in ("broker", "aiohttp")):
        return
    venv = os.environ.get("VIRTUAL_ENV", "")
    candidates = [
        os.environ.get("BENCH_PYTHON", ""),
        f"{venv}/bin/python" if venv else "",
        str(REPO / ".venv/bin/python"),
        str(REPO.parent / "venv/bin/python"),
    ]
    if not os.environ.get("BENCH_REEXEC"):
        for candidate in filter(None, candidates):
            if Path(candidate).exists():
                # The same script again, under an interpreter that has the package.
                os.environ["BENCH_REEXEC"] = "1"
                os.execv(candidate, [candidate, script, *sys.argv[1:]])  # noqa: S606
    sys.exit(
        f"{Path(script).name}: no Python with token-broker installed; run `pip install -e .`"
        " in a venv and start this script with that venv's python (or set BENCH_PYTHON)."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="token-broker benchmark (issues 7, 19)")
    parser.add_argument("--quick", action="store_true", help="short runs, 1 repeat, fast only")
    parser.add_argument(
        "--profile",
        choices=("fast", "slow", "all", "none"),
        help="throughput profiles (default: all; none: only expiry and memory runs)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument("--repeat", type=int, help="interleaved repeats (default 3)")
    parser.add_argument("--connections", default="64,256", help="comma-separated")
    parser.add_argument("--sessions", type=int, default=1000, help="distinct keys under load")
    parser.add_argument("--no-expiry", action="store_true", help="skip the token-expiry runs")
    parser.add_argument("--expiry-keys", type=int, default=200, help="keys in the expiry runs")
    parser.add_argument("--memory", action="store_true", help="also RSS for cached tokens")
    parser.add_argument("--memory-keys", type=int, default=100_000)
    parser.add_argument(
        "--broker-max-connections",
        type=int,
        help="upstream.max_connections for the brokers (default: the product default)",
    )
    parser.add_argument(
        "--plain-python", metavar="PY", help="a Python with the plain wheel installed"
    )
    parser.add_argument(
        "--image-python", metavar="PY", help="a Python with the compiled wheel installed"
    )
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: profile the broker")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    return parser


def _settings(args: argparse.Namespace, workdir: Path, built: builds.Builds) -> RunSettings:
    quick = args.quick
    profile = args.profile or ("fast" if quick else "all")
    return RunSettings(
        profiles={"all": ("fast", "slow"), "none": ()}.get(profile, (profile,)),
        connections=tuple(int(c) for c in args.connections.split(",")),
        duration=args.duration or (3.0 if quick else 8.0),
        warmup=1.0,
        repeat=args.repeat or (1 if quick else 3),
        sessions=args.sessions,
        expiry_duration=0.0 if args.no_expiry else (8.0 if quick else 16.0),
        expiry_keys=args.expiry_keys,
        memory=args.memory,
        memory_keys=args.memory_keys,
        broker_max_connections=args.broker_max_connections,
        builds=built,
        py_spy=args.py_spy,
        workdir=workdir,
        results_dir=RESULTS,
    )


def _check_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    if "nginx" in missing and Path("/usr/sbin/nginx").exists():
        os.environ["PATH"] += ":/usr/sbin"
        missing.remove("nginx")
    if missing:
        sys.exit(f"bench/run.py: missing {', '.join(missing)} (apt-get install -y nginx-light wrk)")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else "?"


# A run whose speed probe took this many times the run's fastest measured a slow machine.
SLOW_MACHINE = 1.15


def _noise(profiles: dict[str, ProfileResult], expiry: list[ExpiryRun]) -> str:
    loads = [s.other_cores for p in profiles.values() for s in p.samples]
    loads += [run.sample.other_cores for run in expiry]
    if not loads:
        return "- other load: no measured runs"
    busy = sum(load > 0.05 for load in loads)
    line = (
        f"- other load (CPU of programs this run did not start, steal included) during the"
        f" {len(loads)} measured runs: mean {sum(loads) / len(loads):.2f} cores,"
        f" max {max(loads):.2f}; {busy} runs above 0.05"
    )
    if busy:
        line += " (a shared machine: numbers from those runs are noisier)"
    probes = sorted(s.probe_ms for p in profiles.values() for s in p.samples)
    probes += sorted(run.sample.probe_ms for run in expiry)
    probes = sorted(probe for probe in probes if not math.isnan(probe))
    if probes:
        fastest, median = probes[0], probes[len(probes) // 2]
        slow = sum(probe > SLOW_MACHINE * fastest for probe in probes)
        line += (
            f"\n- machine speed (`probe ms`, a fixed Python loop on the slowest CPU just before"
            f" each run): fastest {fastest:.1f} ms, median {median:.1f}, slowest"
            f" {probes[-1]:.1f}; {slow} runs measured a machine more than"
            f" {SLOW_MACHINE - 1:.0%} slower than its fastest"
        )
        if slow:
            line += " (compare ratios within a repeat, and prefer a rerun when it is steady)"
    return line


def _codes(
    profiles: dict[str, ProfileResult],
    expiry: list[ExpiryRun],
    memory: dict[str, object] | None,
) -> str:
    """Which broker code each part measured (broker/ may change while a run goes on)."""
    parts: dict[str, set[str]] = {}
    for name, result in profiles.items():
        parts.setdefault(name, set()).update(result.broker_code.values())
    for run in expiry:
        parts.setdefault("expiry", set()).add(run.broker_code)
    if memory is not None:
        parts.setdefault("memory", set()).add(str(memory.get("broker code")))
    codes = {code for found in parts.values() for code in found}
    # The plain install and the image's build run the same code, one of them compiled.
    if len({code.removesuffix("+compiled") for code in codes}) <= 1:
        return (
            f"- broker code measured: {', '.join(sorted(codes)) or '-'} "
            "(commit[+local:<hash of changes>][+compiled: the mypyc build])"
        )
    each = "; ".join(f"{part} {', '.join(sorted(found))}" for part, found in parts.items())
    return f"- **broker/ changed during the run**; code measured by each part: {each}"


def _header(argv: list[str], settings: RunSettings, runtime: float) -> list[str]:

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return [
        "# token-broker benchmark",
        "",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python3 bench/run.py {' '.join(argv)}`,"
        f" {runtime / 60:.1f} min",
        f"- token-broker {importlib.metadata.version('token-broker')}",
        f"- {os.cpu_count()} {TIMES} {cpu}; Python {platform.python_version()};"
        f" {_version(['nginx', '-v'])}; {_version(['wrk', '-v'])}",
        f"- interpreters: {settings.builds.describe()}",
        f"- settings: {_describe(settings)}",
        f"- cells: median (min{DASH}max) over the repeats; ratios and Δ are taken per repeat"
        " against the same repeat's run (servers are measured interleaved)",
    ]


def _describe(settings: RunSettings) -> str:
    data = dataclasses.asdict(settings)
    skip = {"workdir", "results_dir", "py_spy", "builds"}
    return ", ".join(f"{key} {value}" for key, value in data.items() if key not in skip)


def main() -> None:
    ensure_interpreter()
    args = _parser().parse_args()
    _check_tools()

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    # Even when started in the background (where SIGINT arrives ignored), Ctrl-C and
    # kill -INT stop the run and every process it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="token-broker-bench-"))
    workdir.chmod(0o711)  # nginx workers (nobody) traverse it; files stay private
    built = builds.prepare(_progress, args.plain_python, args.image_python)
    settings = _settings(args, workdir, built)
    profiles: dict[str, ProfileResult] = {}
    expiry: list[ExpiryRun] = []
    memory: dict[str, object] | None = None
    try:
        for name in settings.profiles:
            profiles[name] = run_profile(name, settings, _progress)
        if settings.expiry_duration > 0:
            expiry = run_expiry(settings, _progress)
        if settings.memory:
            memory = run_memory(settings, _progress)
    finally:
        if args.keep_workdir:
            _progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    runtime = time.monotonic() - started
    header = [
        *_header(sys.argv[1:], settings, runtime),
        _codes(profiles, expiry, memory),
        _noise(profiles, expiry),
    ]
    pyspy = next((p.pyspy for p in profiles.values() if p.pyspy), None)
    markdown = render(header, profiles, expiry, memory, pyspy)
    document = {
        "argv": sys.argv[1:],
        "runtime_s": runtime,
        "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items()},
        "profiles": {
            name: {
                "samples": [s.as_dict() for s in result.samples],
                "mints": result.mints,
                "pyspy": result.pyspy,
                "broker_code": result.broker_code,
            }
            for name, result in profiles.items()
        },
        "expiry": [run.as_dict() for run in expiry],
        "memory": memory,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{'quick' if args.quick else 'full'}"
    for suffix, text in ((".json", json.dumps(document, indent=2, default=str)), (".md", markdown)):
        (RESULTS / (stem + suffix)).write_text(text)
        (RESULTS / ("latest" + suffix)).write_text(text)
    print(markdown)
    _progress(f"results: {RESULTS / stem}.md and .json ({runtime / 60:.1f} min)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench/run.py: interrupted; every process it started is stopped")

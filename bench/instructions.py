"""User-space instructions per proxied request, counted by valgrind's callgrind.

    python3 bench/instructions.py [--seconds 15] [--floor] [--log-level info] [--python PY]

Timings on this virtual machine swing by up to 2x within minutes; instruction counts
do not (the same build counts within ~0.5 % from run to run, whatever else the machine
does). So a change that saves a few per cent is read here first, then confirmed in
time by ``bench/run.py``. What this cannot see: the kernel (callgrind counts user space
only) and memory stalls (a lever that saves instructions but touches more memory shows
a win here that run.py may not confirm).

The broker (log level warning unless ``--log-level`` says otherwise: ``info``, the
default configuration's, adds one ``request_finished`` line per request; the transport
``BROKER_UPSTREAM_TRANSPORT`` names, else the default) runs under callgrind behind the
fast nginx upstream; wrk drives 1000 sessions over 16 connections (``--connections``)
for 30 s, and on until a run mints nothing (see ``warm``), then counting starts, and it
stops after the measured run: instructions / requests. ``--floor`` counts the two floors
(the lean client behind aiohttp's server, and behind a bare protocol of our own, nothing
else; see bare_proxy.py) the same way. A run takes ~2 minutes (more on a busy machine);
valgrind is a Debian package.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from load import Load, run_wrk
from procs import ALL_CPUS, BenchError, Procs
from profiles import LONG_TOKEN_TTL
from run import ensure_interpreter
from servers import BrokerOptions, Launcher, Server, issue_sessions, sandbox_stats

CONNECTIONS = 16  # the default: enough to keep a broker slowed ~50x by callgrind busy
SESSIONS = 1000
WARM_RUNS, WARM_SECONDS = 3, 10.0
MORE_WARM_RUNS = 10
# The lean client behind aiohttp's server, and behind a bare protocol of our own.
FLOORS = (
    ("lean", "floor: aiohttp server + lean client"),
    ("own", "floor: own server + lean client"),
)
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def main() -> None:
    ensure_interpreter(__file__)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured run")
    parser.add_argument("--floor", action="store_true", help="also the lean floor")
    parser.add_argument(
        "--log-level", default="warning", help="logging.level (info: a line per request)"
    )
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="wrk's connections (default 16)"
    )
    parser.add_argument(
        "--python",
        help="the broker's interpreter, for the floors too (e.g. run.py's image's build)",
    )
    parser.add_argument(
        "--keep", type=Path, help="copy the callgrind files here (for callgrind_annotate)"
    )
    args = parser.parse_args()
    python = os.path.abspath(args.python) if args.python else None  # servers start elsewhere
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        sys.exit("bench/instructions.py: needs valgrind (apt-get install valgrind)")
    with TemporaryDirectory(prefix="broker-instructions-") as tmp, Procs(Path(tmp)) as procs:
        workdir = Path(tmp)
        launcher = Launcher(procs, workdir)
        sandbox = launcher.sandbox("sandbox", LONG_TOKEN_TTL)
        upstream = launcher.upstream("upstream", sandbox)
        issuer = launcher.broker("issuer", upstream, BrokerOptions())
        tokens = issue_sessions(issuer, SESSIONS, workdir / "tokens")
        procs.stop(issuer.proc)
        out = workdir / "callgrind.out"
        wrapper = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
        options = BrokerOptions(log_level=args.log_level, python=python)
        broker = launcher.broker("broker", upstream, options, wrapper)
        warm(broker, tokens, sandbox, args.seconds, args.connections)
        label = f"broker ({python or sys.executable}), log level {args.log_level}"
        report(label, broker, tokens, control, out, args.seconds, args.connections)
        keep(out, args.keep)  # before the exit's own dump
        procs.stop(broker.proc)
        for mode, label in FLOORS if args.floor else ():
            out = workdir / f"callgrind-floor-{mode}.out"
            wrapper = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
            floor = launcher.bare_proxy(f"floor-{mode}", upstream, mode, wrapper, python)
            warm(floor, tokens, sandbox, args.seconds, args.connections)
            report(label, floor, tokens, control, out, args.seconds, args.connections)
            keep(out, args.keep)
            procs.stop(floor.proc)


def keep(out: Path, folder: Path | None) -> None:
    """The last dump of *out* (the measured run's) into *folder*, if one is given."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    dump = last_dump(out)
    if dump is not None:
        shutil.copy(dump, folder / out.name)
        print(f"  kept: {folder / out.name} (callgrind_annotate --inclusive=yes it)", flush=True)


def last_dump(out: Path) -> Path | None:
    """callgrind's newest file for *out* (each ``callgrind_control -d`` writes a new one)."""
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    return dumps[-1] if dumps else None


def warm(server: Server, tokens: Path, sandbox: Server, seconds: float, connections: int) -> None:
    """A few runs, then more until one as long as the measured run mints nothing.

    Each wrk run starts at the first session, so the measured run uses the keys a run
    of its length reaches: at callgrind's pace on a busy machine (~40 req/s rather than
    ~300) that is where warm-up must have minted, or mints are counted as requests."""
    for _ in range(WARM_RUNS):
        run_wrk(server.base_url, tokens, Load(connections, WARM_SECONDS, ALL_CPUS))
    before = sandbox_stats(sandbox)["tokens_issued"]
    for _ in range(MORE_WARM_RUNS):
        run_wrk(server.base_url, tokens, Load(connections, seconds * 1.5, ALL_CPUS))
        after = sandbox_stats(sandbox)["tokens_issued"]
        if after == before:
            return
        before = after
    raise BenchError(f"{server.name}: still minting after {MORE_WARM_RUNS} warm-up runs")


def report(
    label: str,
    server: Server,
    tokens: Path,
    control: str,
    out: Path,
    seconds: float,
    connections: int,
) -> None:
    """Count from zero over one measured wrk run, then print instructions per request."""
    pid = str(server.proc.popen.pid)  # valgrind runs the program in its own process
    subprocess.run([control, "-z", pid], capture_output=True, check=True, timeout=60)
    result = run_wrk(server.base_url, tokens, Load(connections, seconds, ALL_CPUS))
    subprocess.run([control, "-d", pid], capture_output=True, check=True, timeout=60)
    if result.non_2xx or result.socket_errors or not result.requests:
        raise BenchError(f"{label}: {result.non_2xx} non-2xx, {result.socket_errors} errors")
    dump = last_dump(out)
    found = _TOTALS.search(dump.read_text()) if dump is not None else None
    if found is None:
        raise BenchError(f"{label}: no callgrind totals in {out.parent}")
    print(
        f"{label}: {int(found.group(1)) / result.requests:,.0f} instructions per request"
        f" ({result.requests:,} requests)",
        flush=True,
    )


if __name__ == "__main__":
    main()

"""From samples to the markdown report: medians, ranges, ratios and the issue's targets.

Every ratio and difference is taken between runs of the same repeat (the servers are
measured interleaved), then summarised as "median (min-max)" over the repeats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from expiry import ExpiryRun
from load import Sample
from profiles import FLOOR_MODES, ROW_LABELS, ProfileResult

TOKEN_BYTES_TARGET = 1200
TIMES, DASH = "\u00d7", "\u2013"  # for the markdown


@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    def text(self, digits: int = 2, sign: bool = False) -> str:
        if not self.values:
            return DASH
        fmt = f"{{:{'+' if sign else ''},.{digits}f}}"
        middle = fmt.format(self.median)
        if len(self.values) == 1:
            return middle
        return f"{middle} ({fmt.format(min(self.values))}{DASH}{fmt.format(max(self.values))})"


def _index(samples: Iterable[Sample]) -> dict[tuple[int, str, int], Sample]:
    return {(s.connections, s.row, s.repeat): s for s in samples}


def paired(
    samples: Sequence[Sample],
    connections: int,
    row: str,
    value: Callable[[Sample], float],
    versus: str | None = None,
    combine: Callable[[float, float], float] = lambda a, b: a / b if b else math.nan,
) -> Stat:
    """*value* of *row* per repeat, or combined with the same repeat's *versus* row."""
    index = _index(samples)
    out = []
    for (conns, name, repeat), sample in sorted(index.items()):
        if conns != connections or name != row:
            continue
        if versus is None:
            out.append(value(sample))
        elif (other := index.get((conns, versus, repeat))) is not None:
            out.append(combine(value(sample), value(other)))
    return Stat(tuple(v for v in out if not math.isnan(v)))


def _rps(s: Sample) -> float:
    return s.rps


def _per_core(s: Sample) -> float:
    return 1e6 / s.cpu_us_per_request if s.cpu_us_per_request else math.nan


def _p50(s: Sample) -> float:
    return s.wrk.p50_ms


def _p99(s: Sample) -> float:
    return s.wrk.p99_ms


def _minus(a: float, b: float) -> float:
    return a - b


def profile_table(result: ProfileResult) -> list[str]:
    samples = result.samples
    rows = list(dict.fromkeys(s.row for s in samples))
    lines = [
        f"| conns | server | req/s | {TIMES} nginx | {TIMES} direct | p50 ms | p99 ms"
        " | Δp50 vs direct | Δp99 vs direct | CPU µs/req | req/s per CPU-s | cores used"
        " | RSS MB | errors | other load | probe ms |",
        "|" + "---|" * 16,
    ]
    layouts = {}
    splits = {}
    for conns in sorted({s.connections for s in samples}):
        for row in rows:
            mine = [s for s in samples if s.connections == conns and s.row == row]
            if not mine:
                continue
            layouts[ROW_LABELS[row]] = mine[0].layout
            if len(mine[0].process_cores) > 1:
                cores = " + ".join(f"{c:.2f}" for c in mine[0].process_cores)
                splits[f"{ROW_LABELS[row]}, {conns} conns"] = cores
            cells = [
                str(conns),
                ROW_LABELS[row],
                paired(samples, conns, row, _rps).text(0),
                paired(samples, conns, row, _rps, "nginx").text(3),
                paired(samples, conns, row, _rps, "direct").text(3),
                paired(samples, conns, row, _p50).text(2),
                paired(samples, conns, row, _p99).text(2),
                paired(samples, conns, row, _p50, "direct", _minus).text(2, sign=True),
                paired(samples, conns, row, _p99, "direct", _minus).text(2, sign=True),
                paired(samples, conns, row, lambda s: s.cpu_us_per_request).text(1),
                paired(samples, conns, row, _per_core).text(0),
                paired(samples, conns, row, lambda s: s.cores).text(2),
                paired(samples, conns, row, lambda s: s.rss_bytes / 2**20).text(1),
                str(sum(s.wrk.non_2xx + s.wrk.socket_errors for s in mine)),
                paired(samples, conns, row, lambda s: s.other_cores).text(2),
                paired(samples, conns, row, lambda s: s.probe_ms).text(1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- {label}: {layout}" for label, layout in layouts.items())
    if splits:
        lines += ["", "Cores used per process (first repeat):", ""]
        lines.extend(f"- {label}: {split}" for label, split in splits.items())
    return lines


@dataclass(frozen=True)
class Target:
    figure: str
    measured: str
    reference: str
    target: str
    met: bool | None  # None: not measured in this run

    def cells(self) -> str:
        verdict = "n/a (not run)" if self.met is None else ("**yes**" if self.met else "**no**")
        return f"| {self.figure} | {self.measured} | {self.reference} | {self.target} | {verdict} |"


def targets(
    profiles: dict[str, ProfileResult],
    expiry: list[ExpiryRun],
    memory: dict[str, object] | None,
) -> list[Target]:
    found: list[Target] = []
    fast, slow = profiles.get("fast"), profiles.get("slow")
    if fast is not None and any(s.connections == 64 for s in fast.samples):
        s = fast.samples
        ratio = paired(s, 64, "broker1", _rps, "nginx")
        per_cpu = paired(s, 64, "broker1", _per_core, "nginx")
        bare = paired(s, 64, "bare", _rps, "nginx")
        bare_cpu = paired(s, 64, "bare", _per_core, "nginx")
        floors = "".join(
            f"; {ROW_LABELS[row]} {paired(s, 64, row, _per_core, 'nginx').text(3)}"
            for row in FLOOR_MODES
            if any(x.row == row and x.connections == 64 for x in s)
        )
        found.append(
            Target(
                "req/s per core, fast upstream, 64 conns (broker 1 worker ÷ nginx, each"
                " pinned; requests per CPU-second of the measured processes)",
                f"{per_cpu.text(3)} {TIMES} nginx (raw req/s: {ratio.text(3)})",
                f"nginx 1.0; bare aiohttp {bare_cpu.text(3)} (raw req/s: {bare.text(3)})" + floors,
                "≥ 0.25",
                per_cpu.median >= 0.25,
            )
        )
    else:
        found.append(Target("req/s per core, fast upstream, 64 conns", DASH, DASH, "≥ 0.25", None))
    found.extend(_slow_targets(slow))
    found.append(_expiry_target(expiry))
    if memory is not None:
        per_token = float(str(memory["bytes per cached token"]))
        found.append(
            Target(
                "memory per cached checkout token",
                f"{per_token:,.0f} B ({memory['keys filled']} keys)",
                f"0.9{DASH}1.3 KB for plain layouts",
                f"≤ {TOKEN_BYTES_TARGET} B",
                per_token <= TOKEN_BYTES_TARGET,
            )
        )
    else:
        found.append(Target("memory per cached checkout token", DASH, DASH, "≤ 1.2 KB", None))
    return found


def _slow_targets(slow: ProfileResult | None) -> list[Target]:
    found = []
    for conns in (256, 64):
        if slow is None or not any(s.connections == conns for s in slow.samples):
            found.append(Target(f"{conns} conns, 20 ms upstream", DASH, DASH, DASH, None))
            continue
        s = slow.samples
        d50 = paired(s, conns, "broker2", _p50, "direct", _minus)
        d99 = paired(s, conns, "broker2", _p99, "direct", _minus)
        refs = "; ".join(
            f"{ROW_LABELS[row]} {paired(s, conns, row, _rps, 'direct').text(2)} {TIMES} direct,"
            f" Δp99 {paired(s, conns, row, _p99, 'direct', _minus).text(1, sign=True)} ms"
            for row in ("nginx", "bare")
        )
        one_50 = paired(s, conns, "broker1", _p50, "direct", _minus)
        one_99 = paired(s, conns, "broker1", _p99, "direct", _minus)
        if conns == 256:
            ratio = paired(s, conns, "broker2", _rps, "direct")
            one = paired(s, conns, "broker1", _rps, "direct")
            found.append(
                Target(
                    "256 conns, 20 ms upstream, both cores (broker 2 workers)",
                    f"{ratio.text(3)} {TIMES} direct, Δp99 {d99.text(1, sign=True)} ms"
                    f" (1 worker: {one.text(3)} {TIMES}, Δp99 {one_99.text(1, sign=True)} ms)",
                    refs,
                    f"≥ 0.9 {TIMES} direct, Δp99 ≤ +10 ms",
                    ratio.median >= 0.9 and d99.median <= 10,
                )
            )
        else:
            found.append(
                Target(
                    "64 conns, 20 ms upstream (broker 2 workers)",
                    f"Δp50 {d50.text(2, sign=True)} ms, Δp99 {d99.text(2, sign=True)} ms"
                    f" (1 worker: Δp50 {one_50.text(2, sign=True)} ms,"
                    f" Δp99 {one_99.text(2, sign=True)} ms)",
                    refs,
                    "Δp50 ≤ +0.5 ms, Δp99 ≤ +3 ms",
                    d50.median <= 0.5 and d99.median <= 3,
                )
            )
    return found


def _expiry_target(runs: list[ExpiryRun]) -> Target:
    figure = "requests crossing a token expiry (3 s tokens vs long-lived, paced load)"
    if not runs:
        return Target(figure, DASH, DASH, f"p99 ≤ 1.1 {TIMES} steady; 0 waits", None)
    ratio = expiry_ratio(runs)
    waited = sum(r.lookups.get("minted", 0) + r.lookups.get("coalesced", 0) for r in runs)
    expired = sum(int(str(r.sandbox.get("expired_tokens_seen", 0))) for r in runs)
    return Target(
        figure,
        f"p99 {ratio.text(3)} {TIMES} steady; {waited} requests waited on a mint;"
        f" {expired} expired tokens reached the sandbox",
        "a mint round-trip added by blocking designs",
        f"p99 ≤ 1.1 {TIMES} steady; 0 requests wait on a mint after a key's first",
        ratio.median <= 1.1 and waited == 0,
    )


def expiry_ratio(runs: list[ExpiryRun]) -> Stat:
    by_repeat: dict[int, dict[str, float]] = {}
    for run in runs:
        by_repeat.setdefault(run.sample.repeat, {})[run.label] = run.sample.wrk.p99_ms
    return Stat(
        tuple(
            pair["expiry"] / pair["steady"]
            for pair in by_repeat.values()
            if "expiry" in pair and pair.get("steady")
        )
    )

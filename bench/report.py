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

# Issue 19's targets (issue 7's, where they still apply, inline below).
PLAIN_PER_CORE = 0.22
IMAGE_PER_CORE = 0.30
ONE_WORKER_RATIO, ONE_WORKER_P99_MS = 0.95, 5.0
LINE_US = 8.0
TOKEN_BYTES_TARGET = 1000
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
    """Issue 19's targets (what ships), then issue 7's that still apply."""
    fast, slow = profiles.get("fast"), profiles.get("slow")
    found = [
        _per_core_target(fast, "plain", "plain install, default config", PLAIN_PER_CORE),
        _per_core_target(fast, "image", "the image's build, default config", IMAGE_PER_CORE),
        _one_worker_target(slow),
        _line_target(fast),
    ]
    if memory is not None:
        per_token = float(str(memory["bytes per cached token"]))
        found.append(
            Target(
                "memory per cached key, a session per key (the image's build)",
                f"{per_token:,.0f} B ({memory['keys filled']} keys)",
                "checkout JWT, its refresh entry, the verified session",
                f"≤ {TOKEN_BYTES_TARGET:,} B",
                per_token <= TOKEN_BYTES_TARGET,
            )
        )
    else:
        found.append(
            Target("memory per cached key", DASH, DASH, f"≤ {TOKEN_BYTES_TARGET:,} B", None)
        )
    found.extend(_slow_targets(slow))
    found.append(_expiry_target(expiry))
    return found


def _per_core_target(fast: ProfileResult | None, row: str, what: str, target: float) -> Target:
    figure = f"req/s per core ÷ nginx, fast upstream, 64 conns: {what}"
    if fast is None or not any(s.row == row and s.connections == 64 for s in fast.samples):
        return Target(figure, DASH, DASH, f"≥ {target}", None)
    s = fast.samples
    per_cpu = paired(s, 64, row, _per_core, "nginx")
    refs = "; ".join(
        f"{ROW_LABELS[other]} {paired(s, 64, other, _per_core, 'nginx').text(3)}"
        for other in ("bare", "image_warning", *FLOOR_MODES)
        if any(x.row == other and x.connections == 64 for x in s)
    )
    return Target(
        figure + " (each pinned to a core; requests per CPU-second of the measured processes)",
        f"{per_cpu.text(3)} {TIMES} nginx (raw req/s: {paired(s, 64, row, _rps, 'nginx').text(3)};"
        f" {paired(s, 64, row, lambda x: x.cpu_us_per_request).text(1)} µs a request)",
        refs,
        f"≥ {target}",
        per_cpu.median >= target,
    )


def _one_worker_target(slow: ProfileResult | None) -> Target:
    figure = "256 conns, 20 ms upstream, 1 worker (the image's build, default config)"
    goal = f"≥ {ONE_WORKER_RATIO} {TIMES} direct, Δp99 ≤ +{ONE_WORKER_P99_MS:g} ms"
    if slow is None or not any(s.row == "image" and s.connections == 256 for s in slow.samples):
        return Target(figure, DASH, DASH, goal, None)
    s = slow.samples
    ratio = paired(s, 256, "image", _rps, "direct")
    d99 = paired(s, 256, "image", _p99, "direct", _minus)
    plain = paired(s, 256, "plain", _rps, "direct")
    plain99 = paired(s, 256, "plain", _p99, "direct", _minus)
    return Target(
        figure,
        f"{ratio.text(3)} {TIMES} direct, Δp99 {d99.text(1, sign=True)} ms",
        f"plain install {plain.text(3)} {TIMES}, Δp99 {plain99.text(1, sign=True)} ms; "
        f"nginx {paired(s, 256, 'nginx', _rps, 'direct').text(3)} {TIMES}",
        goal,
        ratio.median >= ONE_WORKER_RATIO and d99.median <= ONE_WORKER_P99_MS,
    )


def _line_target(fast: ProfileResult | None) -> Target:
    figure = "the request_finished line: CPU per request, log level info minus warning"
    goal = f"≤ {LINE_US} µs"
    if fast is None or not any(s.row == "image_warning" for s in fast.samples):
        return Target(figure, DASH, DASH, goal, None)
    s = fast.samples
    conns = next(x.connections for x in s if x.row == "image_warning")
    cost = paired(s, conns, "image", lambda x: x.cpu_us_per_request, "image_warning", _minus)
    return Target(
        f"{figure} (the image's build, fast upstream, {conns} conns, JSON lines to a file)",
        f"{cost.text(1, sign=True)} µs",
        f"{paired(s, conns, 'image_warning', lambda x: x.cpu_us_per_request).text(1)} µs a"
        " request at warning",
        goal,
        cost.median <= LINE_US,
    )


def _slow_targets(slow: ProfileResult | None) -> list[Target]:
    found = []
    for conns in (256, 64):
        if slow is None or not any(s.connections == conns for s in slow.samples):
            found.append(Target(f"{conns} conns, 20 ms upstream", DASH, DASH, DASH, None))
            continue
        s = slow.samples
        d50 = paired(s, conns, "image2", _p50, "direct", _minus)
        d99 = paired(s, conns, "image2", _p99, "direct", _minus)
        refs = "; ".join(
            f"{ROW_LABELS[row]} {paired(s, conns, row, _rps, 'direct').text(2)} {TIMES} direct,"
            f" Δp99 {paired(s, conns, row, _p99, 'direct', _minus).text(1, sign=True)} ms"
            for row in ("nginx", "bare")
        )
        one_50 = paired(s, conns, "image", _p50, "direct", _minus)
        one_99 = paired(s, conns, "image", _p99, "direct", _minus)
        if conns == 256:
            ratio = paired(s, conns, "image2", _rps, "direct")
            found.append(
                Target(
                    "(issue 7) 256 conns, 20 ms upstream, both cores, 2 workers",
                    f"{ratio.text(3)} {TIMES} direct, Δp99 {d99.text(1, sign=True)} ms",
                    refs,
                    f"≥ 0.9 {TIMES} direct, Δp99 ≤ +10 ms",
                    ratio.median >= 0.9 and d99.median <= 10,
                )
            )
        else:
            found.append(
                Target(
                    "(issue 7) 64 conns, 20 ms upstream, 2 workers",
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
    figure = "(issue 7) requests crossing a token expiry (3 s tokens vs long-lived, paced load)"
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

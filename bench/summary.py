"""The whole markdown report: targets first, then each profile, expiry, memory, profile."""

from __future__ import annotations

from expiry import ExpiryRun
from profiles import ProfileResult
from report import DASH, TIMES, Stat, Target, paired, profile_table, targets

PROFILE_TITLES = {
    "fast": "Fast upstream (nginx fixed JSON)",
    "slow": "20 ms upstream (nginx front → delay server)",
}


def render(
    header: list[str],
    profiles: dict[str, ProfileResult],
    expiry: list[ExpiryRun],
    memory: dict[str, object] | None,
    pyspy: dict[str, object] | None,
) -> str:
    lines = [*header, "", "## Targets (issue 19; issue 7's that still apply)", ""]
    lines.append(
        f"| figure | measured (median (min{DASH}max)) | reference points, same run | target | met |"
    )
    lines.append("|---|---|---|---|---|")
    lines.extend(target.cells() for target in targets(profiles, expiry, memory))
    for name, result in profiles.items():
        lines += ["", f"## {PROFILE_TITLES.get(name, name)}", ""]
        lines += profile_table(result)
        lines += _logging_lines(result)
        if result.mints:
            lines += ["", "Mints (sandbox `/_sandbox/stats`):", ""]
            lines += [f"- {key}: {value}" for key, value in result.mints.items()]
    if expiry:
        lines += ["", "## Requests crossing a token expiry", ""]
        lines += _expiry_lines(expiry)
    if memory is not None:
        lines += ["", "## Memory per cached checkout token", ""]
        lines += [f"- {key}: {value}" for key, value in memory.items()]
    if pyspy:
        lines += ["", "## Where the broker's time goes (py-spy, fast upstream, 64 conns)", ""]
        lines += _pyspy_lines(pyspy)
    return "\n".join(lines) + "\n"


def _logging_lines(result: ProfileResult) -> list[str]:
    samples = result.samples
    warning = [s for s in samples if s.row == "image_warning"]
    if not warning:
        return []
    conns = warning[0].connections
    rps = paired(samples, conns, "image", lambda s: s.rps, "image_warning")
    cpu = paired(
        samples,
        conns,
        "image",
        lambda s: s.cpu_us_per_request,
        "image_warning",
        lambda a, b: a - b,
    )
    return [
        "",
        f"Log level info (the default) vs warning, the image's build ({conns} conns, JSON"
        f" lines to a file): {rps.text(3)} {TIMES} the req/s, {cpu.text(1, sign=True)} CPU µs"
        " per request.",
    ]


def _expiry_lines(runs: list[ExpiryRun]) -> list[str]:
    lines = [
        "| repeat | tokens | req/s | p50 ms | p99 ms | p99.9 ms | broker CPU µs/req"
        " | lookups during run | mints (per key min/med/max) | sandbox cores"
        " | checked by sandbox: requests, expired | upstream 401s |",
        "|" + "---|" * 12,
    ]
    for run in runs:
        sample, box = run.sample, run.sandbox
        lookups = ", ".join(f"{k} {v}" for k, v in sorted(run.lookups.items()) if v)
        unauthorized = sum(run.upstream_unauthorized.values())
        lines.append(
            f"| {sample.repeat + 1} | {run.label} ({run.token_ttl:g} s) | {sample.rps:,.0f}"
            f" | {sample.wrk.p50_ms:.2f} | {sample.wrk.p99_ms:.2f} | {sample.wrk.p999_ms:.2f}"
            f" | {sample.cpu_us_per_request:.0f} | {lookups}"
            f" | {box.get('tokens_issued')} ({box.get('mints_per_key_min_median_max')})"
            f" | {run.sandbox_cores:.2f} | {run.verified}, {box.get('expired_tokens_seen')}"
            f" | {unauthorized} |"
        )
    steady = Stat(tuple(r.sample.wrk.p99_ms for r in runs if r.label == "steady"))
    short = Stat(tuple(r.sample.wrk.p99_ms for r in runs if r.label == "expiry"))
    lines += [
        "",
        f"p99 steady {steady.text(2)} ms, crossing expiries {short.text(2)} ms."
        ' "minted"/"coalesced" count requests that waited on a mint (the target is 0);'
        ' "refreshed_ahead" is the first use of a token renewed in the background.',
    ]
    return lines


def _pyspy_lines(pyspy: dict[str, object]) -> list[str]:
    lines = [
        f"{pyspy.get('samples')} samples of the busy broker (idle waits not sampled);"
        f" collapsed stacks: `{pyspy.get('raw')}`",
        "",
    ]
    titles = (("own time", "self"), ("time including callees (outer frames left out)", "total"))
    for title, key in titles:
        entries = pyspy.get(key)
        if not isinstance(entries, list):
            continue
        lines += [f"Top functions by {title}:", "", "| % | function |", "|---|---|"]
        lines += [f"| {share:.1f} | `{name}` |" for share, name in entries]
        lines.append("")
    return lines


__all__ = ["Target", "render"]

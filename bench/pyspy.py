"""Where the broker's time goes: py-spy samples the 1-worker broker under load.

Optional (``--py-spy PATH``); py-spy is not a dependency (``pip install py-spy`` into
any venv). The run is extra: its numbers are not part of the table, since sampling
costs the broker some throughput.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from load import Load, run_wrk
from procs import BenchError

if TYPE_CHECKING:
    from profiles import RunSettings
    from servers import Server

TOP = 20
OUTER_SHARE = 0.75
_PREFIX = re.compile(r"^.*?(site-packages/|python3\.\d+/|/main/)")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def profile_broker(
    py_spy: str,
    broker: Server,
    tokens: Path,
    settings: RunSettings,
    cpus: frozenset[int],
) -> dict[str, object]:
    seconds = max(5, math.ceil(settings.duration))
    raw = settings.results_dir / "pyspy-image-raw.txt"
    raw.unlink(missing_ok=True)
    argv = [py_spy, "record", "--pid", str(broker.proc.pid), "--duration", str(seconds)]
    argv += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as spy:
        run_wrk(broker.base_url, tokens, Load(connections=64, duration=seconds, cpus=cpus))
        output, _ = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            raise BenchError(f"py-spy failed ({spy.returncode}): {output.decode()[-1000:]}")
    own, total, samples = _aggregate(raw.read_text())
    # Frames on (nearly) every stack (runpy, asyncio.run, the event loop) say nothing.
    inner = Counter({name: n for name, n in total.items() if n < OUTER_SHARE * samples})
    return {
        "samples": samples,
        "raw": str(raw),
        "self": [(100 * n / samples, name) for name, n in own.most_common(TOP)],
        "total": [(100 * n / samples, name) for name, n in inner.most_common(TOP)],
    }


def _aggregate(text: str) -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return own, total, samples


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = _PREFIX.sub("", match.group("file"))
    return f"{match.group('name')} ({path})"

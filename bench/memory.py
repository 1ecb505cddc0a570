"""RSS per cached checkout token: fill one broker with N distinct keys and weigh it.

A fresh broker (1 worker) first serves WARM_KEYS keys, so that buffers, pools and
allocator arenas that any traffic needs exist; its RSS then is the baseline. Then
N more keys (init + one proxied GET each, minted by the sandbox through the fast
upstream), and (RSS after - baseline) / (cache entries added) is the cost of a token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from procs import BenchError, Procs, rss_bytes
from profiles import LONG_TOKEN_TTL, RunSettings
from servers import BrokerOptions, Launcher, Server, broker_metrics

WARM_KEYS = 2000
CONCURRENCY = 64
FILL_SCRIPT = Path(__file__).resolve().parent / "fill_tokens.py"


def _fill(broker: Server, start: int, count: int) -> dict[str, object]:
    argv = [sys.executable, str(FILL_SCRIPT), "--port", str(broker.port)]
    argv += ["--start", str(start), "--count", str(count), "--concurrency", str(CONCURRENCY)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise BenchError(f"fill_tokens failed:\n{done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("failed"):
        raise BenchError(f"fill_tokens: {result['failed']} keys failed ({result['first_error']})")
    return result


def _entries(broker: Server) -> int:
    return round(
        broker_metrics(broker).get('broker_token_cache_entries{partner="default"}', float("nan"))
    )


def run_memory(settings: RunSettings, progress: Callable[[str], None]) -> dict[str, object]:
    workdir = settings.workdir / "memory"
    workdir.mkdir(exist_ok=True)
    keys = settings.memory_keys
    started = time.monotonic()
    with Procs(workdir) as procs:
        launcher = Launcher(procs, settings.workdir)
        sandbox = launcher.sandbox("memory-sandbox", LONG_TOKEN_TTL)
        upstream = launcher.upstream("memory-upstream", sandbox)
        options = BrokerOptions(
            max_entries=2 * (keys + WARM_KEYS), log_level=None, python=settings.builds.image
        )
        broker = launcher.broker("memory-broker", upstream, options)
        rss_idle = rss_bytes(broker.proc.tree())
        _fill(broker, 0, WARM_KEYS)
        time.sleep(1.0)
        rss_before, entries_before = rss_bytes(broker.proc.tree()), _entries(broker)
        progress(f"memory: baseline {rss_before / 2**20:.1f} MB with {entries_before} tokens")
        filled = _fill(broker, WARM_KEYS, keys)
        time.sleep(1.0)
        rss_after, entries_after = rss_bytes(broker.proc.tree()), _entries(broker)
    added = entries_after - entries_before
    per_token = (rss_after - rss_before) / added if added > 0 else float("nan")
    result: dict[str, object] = {
        "keys filled": keys,
        "cache entries before": entries_before,
        "cache entries after": entries_after,
        "rss idle MB": round(rss_idle / 2**20, 1),
        "rss before MB": round(rss_before / 2**20, 1),
        "rss after MB": round(rss_after / 2**20, 1),
        "bytes per cached token": round(per_token),
        "fill seconds": round(float(str(filled["seconds"])), 1),
        "fill keys per second": round(keys / float(str(filled["seconds"]))),
        "runtime seconds": round(time.monotonic() - started, 1),
        "broker code": broker.code,
    }
    progress(f"memory: {result}")
    return result

"""A bounded soak: real processes, mixed traffic, upstream faults toggled on a schedule.

    python3 bench/soak.py                      # 10 minutes, one fault phase a minute
    python3 bench/soak.py --minutes 2 --phase-seconds 20    # a short run while developing

A sandbox upstream (checkout JWTs living --token-ttl seconds, so they are renewed under
load) and a broker with one worker (sessions living --session-ttl seconds, so they
expire and are renewed as the SDK does: on the 401, once) run as their own processes.
An in-process client sends about --rate requests a second from --concurrency loops:
session inits, proxied GETs and POSTs, for a population of --population (customer,
invoice) keys of which a share is replaced by new ones every few seconds (new keys,
new mints). Each phase sets the sandbox's faults (``/_sandbox/faults``); between phases
the load pauses until nothing is in flight, so every answer belongs to one phase, and
the broker is sampled: RSS and open file descriptors (from /proc), asyncio tasks and
checkout JWTs cached (``broker_event_loop_tasks``, ``broker_token_cache_entries``).

It prints a table per phase and fails (exit 1) when the resources are not flat (each
has a stated tolerance, see FLAT) or when an answer does not match the faults of its
phase: errors where none was injected, 500s in another proportion than the injected
error rate or not one for one with the upstream 500s the broker counted, 502s that are
not the upstream refusing a freshly minted token, or a 401 to a session that had not
expired. Not part of CI (it takes minutes); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import ensure_interpreter

ensure_interpreter(__file__)

import aiohttp  # noqa: E402 - after the interpreter check
from procs import Procs, rss_bytes  # noqa: E402
from servers import API_KEY, METRICS_TOKEN, BrokerOptions, Launcher, Server  # noqa: E402

# Every fault the sandbox has, off: each phase patches the faults it wants onto this.
NO_FAULTS: dict[str, object] = {
    "latency_ms": 0,
    "mint_latency_ms": 0,
    "error_rate": 0.0,
    "rate_limit": False,
    "retry_after": 1,
    "token_endpoint_down": False,
    "reject_credentials": False,
    "unauthorized_next": 0,
    "unauthorized_always": False,
    "redirect": False,
}
ERROR_RATE = 0.1
UNAUTHORIZED_BURST = 40


@dataclass(frozen=True)
class Phase:
    name: str
    faults: dict[str, object]
    # The error answers (status, code) a proxied call may get in this phase.
    allowed: frozenset[tuple[int, str]] = frozenset()


UPSTREAM_ERROR = (500, "upstream_error")
REFUSED_FRESH = (502, "bad_gateway")
BUSY = frozenset({(503, "upstream_rate_limited"), (503, "rate_budget_exhausted")})
SCHEDULE = (
    Phase("clean", {}),
    Phase("errors", {"error_rate": ERROR_RATE}, frozenset({UPSTREAM_ERROR})),
    Phase("clean", {}),
    Phase("latency", {"latency_ms": 150}),
    Phase("unauthorized", {"unauthorized_next": UNAUTHORIZED_BURST}, frozenset({REFUSED_FRESH})),
    Phase("clean", {}),
    Phase("rate_limit", {"rate_limit": True}, BUSY),
    Phase("mint_latency", {"mint_latency_ms": 400}),
    Phase(
        "errors+latency", {"error_rate": ERROR_RATE, "latency_ms": 50}, frozenset({UPSTREAM_ERROR})
    ),
    Phase("clean", {}),
)


# What "flat" means (generous enough for allocator and pool noise, far below what a
# leak of one object per request, key or fault adds over minutes):
# - RSS at the end at most 10 % + 4 MB above the sample after the first two phases
#   (warm-up: caches, pools and allocator arenas filled);
# - open fds and asyncio tasks, once idle for --settle-seconds at the end (every
#   keep-alive connection timed out, every renewal done), at most 4 above what they were
#   idle before the load: what the load opened, it closed;
# - checkout JWTs cached, at every sample, at most 10 more than the keys used within
#   two token lifetimes (a token outlives its key's last use by at most one renewal).
RSS_GROWTH, RSS_SLACK_MB = 0.10, 4.0
IDLE_SLACK = 4
CACHE_SLACK = 10


@dataclass
class Key:
    customer_id: str
    invoice_id: str


@dataclass
class Session:
    token: str
    expires_at: float


@dataclass
class Tally:
    """What one phase's answers were."""

    statuses: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    early_401: int = 0
    renewed_sessions: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)

    def errors(self) -> Counter[tuple[int, str]]:
        found: Counter[tuple[int, str]] = Counter()
        for (kind, status, code), count in self.statuses.items():
            if kind == "proxy" and status >= 400:
                found[(status, code)] += count
        return found

    def proxied(self) -> int:
        return sum(n for (kind, _, _), n in self.statuses.items() if kind == "proxy")


@dataclass
class Sample:
    at: float
    rss_mb: float
    fds: int
    tasks: float
    cache: float
    working_set: int  # keys used within two checkout JWT lifetimes


class Population:
    """The (customer, invoice) keys in use; ``rotate`` swaps a share for new ones."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self._rng = rng
        self._serial = 0
        self.keys = [self._new() for _ in range(size)]
        self.sessions: dict[str, Session] = {}
        self.rotated = 0
        self.last_used: dict[str, float] = {}

    def working_set(self, within: float) -> int:
        since = time.monotonic() - within
        self.last_used = {k: t for k, t in self.last_used.items() if t >= since}
        return len(self.last_used)

    def _new(self) -> Key:
        self._serial += 1
        return Key(f"cus_soak_{self._serial}", f"inv_soak_{self._serial}")

    def pick(self) -> Key:
        return self._rng.choice(self.keys)

    def rotate(self, share: float) -> None:
        for _ in range(max(1, round(len(self.keys) * share))):
            index = self._rng.randrange(len(self.keys))
            self.sessions.pop(self.keys[index].customer_id, None)
            self.keys[index] = self._new()
            self.rotated += 1


class Load:
    def __init__(self, args: argparse.Namespace, broker: Server) -> None:
        self.args = args
        self.url = broker.base_url
        self.rng = random.Random(args.seed)
        self.population = Population(args.population, self.rng)
        self.tally = Tally()
        self.phase: Phase = SCHEDULE[0]
        self.running = asyncio.Event()
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._next_slot = 0.0
        self._stopping = False

    async def run(self, http: aiohttp.ClientSession) -> list[asyncio.Task[None]]:
        self._next_slot = time.monotonic()
        return [asyncio.create_task(self._loop(http)) for _ in range(self.args.concurrency)]

    async def pause(self) -> None:
        self.running.clear()
        await self.idle.wait()

    def stop(self) -> None:
        self._stopping = True
        self.running.set()

    async def _loop(self, http: aiohttp.ClientSession) -> None:
        while not self._stopping:
            await self.running.wait()
            # Pacing: one slot every 1/rate seconds, shared by every loop.
            slot = max(self._next_slot, time.monotonic())
            self._next_slot = slot + 1 / self.args.rate
            await asyncio.sleep(slot - time.monotonic())
            if not self.running.is_set() or self._stopping:
                continue
            self.inflight += 1
            self.idle.clear()
            try:
                await self._one(http)
            finally:
                self.inflight -= 1
                if self.inflight == 0:
                    self.idle.set()

    async def _one(self, http: aiohttp.ClientSession) -> None:
        key = self.population.pick()
        self.population.last_used[key.customer_id] = time.monotonic()
        tally = self.tally
        started = time.monotonic()
        try:
            if self.rng.random() < self.args.init_share:
                await self._init(http, key)
            else:
                await self._proxied(http, key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.transport_errors[type(exc).__name__] += 1
        tally.latencies.append(time.monotonic() - started)

    async def _init(self, http: aiohttp.ClientSession, key: Key) -> Session | None:
        body = {"customer_id": key.customer_id, "invoice_id": key.invoice_id}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with http.post(
            f"{self.url}/v1/checkout-auth/init", json=body, headers=headers
        ) as response:
            answer = await _json(response)
            self.tally.statuses[("init", response.status, _code(response.status, answer))] += 1
            if response.status != 200:
                return None
            session = Session(str(answer["token"]), float(answer["expires_at"]))
        self.population.sessions[key.customer_id] = session
        return session

    async def _proxied(self, http: aiohttp.ClientSession, key: Key) -> None:
        session = self.population.sessions.get(key.customer_id) or await self._init(http, key)
        if session is None:
            return
        status, answer = await self._call(http, session)
        if status == 401:
            # The SDK: onAccessTokenExpired once, then the same call again.
            if time.time() < session.expires_at - 1.0:
                self.tally.early_401 += 1
            renewed = await self._init(http, key)
            if renewed is None:
                return
            self.tally.renewed_sessions += 1
            status, answer = await self._call(http, renewed)
        self.tally.statuses[("proxy", status, _code(status, answer))] += 1

    async def _call(self, http: aiohttp.ClientSession, session: Session) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {session.token}"}
        draw = self.rng.random()
        if draw < 0.75:
            request = http.get(f"{self.url}/checkout/invoice", headers=headers)
        elif draw < 0.9:
            request = http.get(f"{self.url}/checkout/v1/payment-methods", headers=headers)
        else:
            body = {"q": "1 Main St", "country": "us", "sessiontoken": "soak"}
            request = http.post(
                f"{self.url}/checkout/address/autocomplete", json=body, headers=headers
            )
        async with request as response:
            return response.status, await _json(response)


async def _json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return None


def _code(status: int, answer: Any) -> str:
    if status < 400:
        return ""
    return str(answer.get("code", "?")) if isinstance(answer, dict) else "?"


class Broker:
    """The broker process as the soak watches it."""

    def __init__(self, server: Server, population: Population, token_ttl: float) -> None:
        self.server = server
        self._population = population
        self._token_ttl = token_ttl

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with http.get(f"{self.server.base_url}/metrics", headers=headers) as response:
            text = await response.text()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def sample(self, http: aiohttp.ClientSession) -> Sample:
        pid = self.server.proc.pid
        values = await self.metrics(http)
        return Sample(
            at=time.monotonic(),
            rss_mb=rss_bytes([pid]) / 2**20,
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            tasks=values.get("broker_event_loop_tasks", math.nan),
            cache=values.get("broker_token_cache_entries", math.nan),
            working_set=self._population.working_set(2 * self._token_ttl),
        )


def _counter(values: dict[str, float], name: str) -> float:
    return values.get(name, 0.0)


PROXY_500 = 'broker_upstream_requests_total{kind="proxy",status="500"}'
RECOVERED = 'broker_upstream_unauthorized_total{result="recovered"}'
FAILED = 'broker_upstream_unauthorized_total{result="failed"}'


@dataclass
class PhaseResult:
    phase: Phase
    seconds: float
    tally: Tally
    sample: Sample
    metrics_delta: dict[str, float]
    sandbox_delta: dict[str, float]
    problems: list[str]


def judge(
    phase: Phase, tally: Tally, delta: dict[str, float], sandbox: dict[str, float]
) -> list[str]:
    """Whether the answers of *phase* are those its faults explain."""
    problems = []
    errors = tally.errors()
    unexplained = {k: n for k, n in errors.items() if k not in phase.allowed}
    if unexplained:
        problems.append(f"errors no fault explains: {unexplained}")
    if tally.transport_errors:
        problems.append(f"transport errors: {dict(tally.transport_errors)}")
    if tally.early_401:
        problems.append(f"{tally.early_401} 401s to sessions that had not expired")
    inits = {k: n for k, n in tally.statuses.items() if k[0] == "init" and k[1] != 200}
    if inits:
        problems.append(f"session inits refused: {inits}")
    proxied = tally.proxied()
    if UPSTREAM_ERROR in phase.allowed:
        seen = errors[UPSTREAM_ERROR]
        counted = delta.get(PROXY_500, 0.0)
        if seen != counted:
            problems.append(f"{seen} 500s answered but the broker counted {counted:g} upstream")
        rate = float(phase.faults["error_rate"])  # type: ignore[arg-type]
        attempts = proxied  # each reached the upstream once (a refused session never did)
        spread = 5 * math.sqrt(rate * (1 - rate) / max(attempts, 1))
        if attempts and abs(seen / attempts - rate) > max(spread, 0.02):
            problems.append(f"500s were {seen / attempts:.3f} of calls; {rate} injected")
    if REFUSED_FRESH in phase.allowed:
        recovered, failed = delta.get(RECOVERED, 0.0), delta.get(FAILED, 0.0)
        injected = sandbox.get("unauthorized_served", 0.0)
        if recovered + 2 * failed != injected or injected != UNAUTHORIZED_BURST:
            problems.append(
                f"401s injected {injected:g} (of {UNAUTHORIZED_BURST}); the broker recovered"
                f" {recovered:g} and failed {failed:g} (each failure takes two)"
            )
        if errors[REFUSED_FRESH] != failed:
            problems.append(f"{errors[REFUSED_FRESH]} 502s answered, {failed:g} failed recoveries")
    if phase.allowed == BUSY and errors.total() and not sandbox.get("rate_limited_served"):
        problems.append("503s without a 429 from the upstream")
    return problems


def flatness(idle_start: Sample, samples: list[Sample], idle_end: Sample) -> list[str]:
    """The resources against the tolerances above (NaN, a gauge not exported, fails)."""
    problems = []
    warm = samples[min(1, len(samples) - 1)]
    limit = warm.rss_mb * (1 + RSS_GROWTH) + RSS_SLACK_MB
    if not idle_end.rss_mb <= limit:
        problems.append(f"RSS grew from {warm.rss_mb:.1f} to {idle_end.rss_mb:.1f} MB"
                        f" (limit {limit:.1f})")  # fmt: skip
    for name in ("fds", "tasks"):
        start, end = float(getattr(idle_start, name)), float(getattr(idle_end, name))
        if not end <= start + IDLE_SLACK:
            problems.append(f"{name} idle: {start:g} before the load, {end:g} after it")
    for sample in [*samples, idle_end]:
        if not sample.cache <= sample.working_set + CACHE_SLACK:
            problems.append(f"{sample.cache:g} tokens cached for {sample.working_set} keys in use")
    return problems


async def soak(args: argparse.Namespace, launcher: Launcher) -> int:
    sandbox = launcher.sandbox("sandbox", token_ttl=args.token_ttl)
    options = BrokerOptions(workers=1, log_level="warning", session_ttl=args.session_ttl)
    server = launcher.broker("broker", sandbox, options)
    phases = max(3, round(args.minutes * 60 / args.phase_seconds))
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    results: list[PhaseResult] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        load = Load(args, server)
        broker = Broker(server, load.population, args.token_ttl)
        idle_start = await broker.sample(http)
        _progress(f"idle before the load: {_resources(idle_start)}")
        workers = await load.run(http)
        samples = []
        for index in range(phases):
            phase = SCHEDULE[index % len(SCHEDULE)]
            await _set_faults(http, sandbox, phase.faults)
            before = await broker.metrics(http)
            sandbox_before = await _sandbox_stats(http, sandbox)
            load.phase, load.tally = phase, Tally()
            started = time.monotonic()
            load.running.set()
            await _run_phase(load, args, broker, http, started)
            await load.pause()
            seconds = time.monotonic() - started
            await asyncio.sleep(0.5)  # let the last answers' bookkeeping settle
            after = await broker.metrics(http)
            sandbox_after = await _sandbox_stats(http, sandbox)
            delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
            sandbox_delta = {k: v - sandbox_before.get(k, 0.0) for k, v in sandbox_after.items()}
            sample = await broker.sample(http)
            samples.append(sample)
            problems = judge(phase, load.tally, delta, sandbox_delta)
            result = PhaseResult(phase, seconds, load.tally, sample, delta, sandbox_delta, problems)
            results.append(result)
            _progress(_row(index, result))
        await _set_faults(http, sandbox, {})
        load.stop()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    # The client's connections are closed now; the broker's upstream ones time out.
    _progress(f"idle for {args.settle_seconds:g} s ...")
    await asyncio.sleep(args.settle_seconds)
    async with aiohttp.ClientSession() as probe:
        idle_end = await broker.sample(probe)
    return report(args, results, idle_start, samples, idle_end, load.population.rotated)


def _resources(sample: Sample) -> str:
    return (
        f"RSS {sample.rss_mb:.1f} MB, {sample.fds} fds, {sample.tasks:g} tasks,"
        f" {sample.cache:g} tokens cached ({sample.working_set} keys in use)"
    )


async def _run_phase(
    load: Load,
    args: argparse.Namespace,
    broker: Broker,
    http: aiohttp.ClientSession,
    started: float,
) -> None:
    """Rotate customers every --rotate-seconds until the phase is over."""
    end = started + args.phase_seconds
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(args.rotate_seconds, end - now))
        load.population.rotate(args.rotate_share)


async def _set_faults(
    http: aiohttp.ClientSession, sandbox: Server, faults: dict[str, object]
) -> None:
    async with http.post(f"{sandbox.base_url}/_sandbox/faults", json={**NO_FAULTS, **faults}) as r:
        if r.status != 200:
            raise RuntimeError(f"/_sandbox/faults answered {r.status}: {await r.text()}")


async def _sandbox_stats(http: aiohttp.ClientSession, sandbox: Server) -> dict[str, float]:
    async with http.get(f"{sandbox.base_url}/_sandbox/stats") as response:
        stats = await response.json()
    return {k: float(v) for k, v in stats.items() if isinstance(v, int | float)}


HEADER = (
    "| # | phase | s | req/s | p50 ms | p99 ms | proxied ok | errors | sessions renewed |"
    " RSS MB | fds | tasks | cache | verdict |"
)


def _row(index: int, result: PhaseResult) -> str:
    tally, sample = result.tally, result.sample
    latencies = sorted(tally.latencies) or [0.0]
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    ok = sum(n for (kind, s, _), n in tally.statuses.items() if kind == "proxy" and s < 400)
    errors = ", ".join(f"{s} {c}: {n}" for (s, c), n in sorted(tally.errors().items())) or "-"
    verdict = "ok" if not result.problems else "FAIL: " + "; ".join(result.problems)
    return (
        f"| {index + 1} | {result.phase.name} | {result.seconds:.0f} |"
        f" {len(tally.latencies) / result.seconds:.0f} | {p50:.1f} | {p99:.1f} | {ok} | {errors} |"
        f" {tally.renewed_sessions} | {sample.rss_mb:.1f} | {sample.fds} | {sample.tasks:g} |"
        f" {sample.cache:g} | {verdict} |"
    )


def report(
    args: argparse.Namespace,
    results: list[PhaseResult],
    idle_start: Sample,
    samples: list[Sample],
    idle_end: Sample,
    rotated: int,
) -> int:
    print(
        f"\nsoak: {len(results)} phases of {args.phase_seconds:g} s, ~{args.rate:g} req/s,"
        f" {args.concurrency} loops, population {args.population} ({rotated} keys rotated in),"
        f" checkout JWTs live {args.token_ttl:g} s, sessions {args.session_ttl} s\n"
    )
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for index, result in enumerate(results):
        print(_row(index, result))
    warm = samples[min(1, len(samples) - 1)]
    print(f"\nidle before the load: {_resources(idle_start)}")
    print(f"after phase {min(2, len(samples))} (warm):  {_resources(warm)}")
    print(f"idle {args.settle_seconds:g} s after it: {_resources(idle_end)}")
    print(
        f"flat means: RSS at the end at most {RSS_GROWTH:.0%} + {RSS_SLACK_MB:g} MB above warm;"
        f" idle fds and tasks at most {IDLE_SLACK} above idle before; tokens cached at most"
        f" {CACHE_SLACK} more than the keys used within two token lifetimes, at every sample"
    )
    problems = [p for r in results for p in r.problems]
    problems += flatness(idle_start, samples, idle_end)
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: ok" if not problems else f"soak: {len(problems)} problem(s)")
    return 1 if problems else 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    add("--phase-seconds", type=float, default=60.0, help="one fault phase (default 60)")
    add("--rate", type=float, default=200.0, help="requests a second, about (default 200)")
    add("--concurrency", type=int, default=32, help="client loops (default 32)")
    add("--population", type=int, default=300, help="keys in use at once (default 300)")
    add("--rotate-seconds", type=float, default=10.0, help="how often keys are replaced")
    add("--rotate-share", type=float, default=0.05, help="the share replaced each time")
    add("--init-share", type=float, default=0.04, help="share of calls that are session inits")
    add("--token-ttl", type=float, default=30.0, help="checkout JWT lifetime at the sandbox")
    add("--session-ttl", type=int, default=45, help="session token lifetime at the broker")
    add("--request-timeout", type=float, default=15.0, help="client timeout per request")
    add(
        "--settle-seconds",
        type=float,
        default=75.0,
        help="idle at the end before the last sample (past keep-alives, two token lives)",
    )
    add("--seed", type=int, default=20, help="the traffic's random seed")
    add("--keep-workdir", action="store_true", help="keep configs and logs")
    return parser


def main() -> None:
    args = _parser().parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="token-broker-soak-"))
    code = 1
    try:
        with Procs(workdir) as procs:
            code = asyncio.run(soak(args, Launcher(procs, workdir)))
    finally:
        if args.keep_workdir or code:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            for path in sorted(workdir.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            workdir.rmdir()
    sys.exit(code)


if __name__ == "__main__":
    main()

"""Processes the harness starts: launch, pin, account (CPU, RSS), wait for, and stop.

Every process is started in its own session (so its process group is its id) and
registered with ``Procs``; ``Procs.close`` stops them all, newest first, by group id.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ALL_CPUS = frozenset(os.sched_getaffinity(0))


class BenchError(RuntimeError):
    """Something the harness needs did not work; the message says what."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        """This process and every live descendant (workers, nginx's worker)."""
        return process_tree(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")


class Procs:
    """The registry of started processes; use as a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,  # None: this process's environment
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc in self._procs:
            self._procs.remove(proc)
        _stop_group(proc.popen, timeout)

    def close(self) -> None:
        while self._procs:
            self.stop(self._procs[-1])

    def all(self) -> list[Proc]:
        return list(self._procs)


def _stop_group(popen: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    pgid = popen.pid
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(wait)
        if popen.poll() is not None and not _group_alive(pgid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
            stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of *pids* (own threads included, reaped children not)."""
    return sum(cpu_by_process(pids).values())


def cpu_by_process(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each of *pids*, in seconds."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # Fields 14 and 15 of stat(5): utime and stime, in clock ticks.
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def system_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (steal included), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def harness_seconds() -> float:
    """CPU of this process and of its waited-for children (wrk, fill scripts)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rss_bytes(pids: Iterable[int]) -> int:
    """VmRSS summed over *pids*."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def pin(pids: Iterable[int], cpus: Iterable[int]) -> None:
    """Set the CPU affinity of every thread of *pids* (children inherit it)."""
    allowed = set(cpus) & ALL_CPUS or set(ALL_CPUS)
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), allowed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(
    port: int, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_ok(proc: Proc, port: int, path: str, timeout: float = 30.0) -> None:
    """Poll ``GET path`` until it answers 200; fail early if *proc* died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            status, body = http_get(port, path, timeout=2.0)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: GET {path} not 200 after {timeout} s ({last})")

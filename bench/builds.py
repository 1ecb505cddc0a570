"""The two builds users run, installed the way they install them, for the bench rows
that measure what ships.

- **plain install**: ``pip install .``, i.e. the py3-none-any wheel (plain Python),
  in a virtualenv of its own;
- **image's build**: the compiled wheel (the request path built with mypyc), installed
  as deploy/docker/Dockerfile installs it (``pip install "<wheel>[redis]"`` into a fresh
  virtualenv), on this machine's interpreter rather than Debian's.

Both wheels come from ``scripts/build-wheels.sh`` (a fresh sdist each, PEP 517), into a
cache under bench/results/builds/ keyed by a hash of what a wheel is built from
(broker/, config/, pyproject.toml, README.md), so a rerun on unchanged code reuses them
(a build takes ~2 minutes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from procs import BenchError

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / "results" / "builds"
# What scripts/build-wheels.sh puts in a wheel (the sdist's only-include, pyproject.toml).
SOURCES = ("broker", "config", "pyproject.toml", "README.md", "LICENSE")


@dataclass(frozen=True)
class Builds:
    plain: str  # the interpreter of the plain install
    image: str  # the interpreter of the image's build


def prepare(
    progress: Callable[[str], None], plain: str | None = None, image: str | None = None
) -> Builds:
    """The two interpreters: those given (checked), else built and installed here."""
    if plain is None or image is None:
        folder = CACHE / source_hash()
        if plain is None:
            plain = _installed(folder, "plain", "", progress)
        if image is None:
            image = _installed(folder, "compiled", "[redis]", progress)
    for python, compiled in ((plain, False), (image, True)):
        if is_compiled(python) != compiled:
            kind = "the compiled wheel" if compiled else "plain Python"
            raise BenchError(f"{python}: its broker is not {kind}")
    return Builds(plain=plain, image=image)


def source_hash() -> str:
    digest = hashlib.sha256()
    for top in SOURCES:
        path = REPO / top
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix in {".pyc", ".so"}:
                continue
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def _installed(folder: Path, kind: str, extras: str, progress: Callable[[str], None]) -> str:
    env_dir = folder / f"{kind}-venv"
    python = env_dir / "bin" / "python"
    if python.exists():
        return str(python)
    wheels = folder / f"{kind}-wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(env_dir, ignore_errors=True)
    progress(f"building the {kind} wheel (scripts/build-wheels.sh) into {wheels}")
    _run(
        ["bash", str(REPO / "scripts" / "build-wheels.sh"), str(wheels)],
        env={**os.environ, "PYTHON": _build_python(), "WHEELS": kind},
        timeout=900,
    )
    (wheel,) = wheels.glob("token_broker-*.whl")
    progress(f"installing {wheel.name}{extras} into {env_dir}")
    venv.create(env_dir, with_pip=True)
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}{extras}"], timeout=900)
    return str(python)


def _build_python() -> str:
    """An interpreter with the ``build`` frontend: the repository's venv (the [build]
    extra), else this one."""
    dev = REPO / ".venv" / "bin" / "python"
    return str(dev) if dev.exists() else sys.executable


def is_compiled(python: str) -> bool:
    """Whether *python*'s broker (as installed, not this tree) runs the request path compiled."""
    done = _run([python, "-P", "-c", "import broker; print(broker.compiled())"], cwd="/")
    return done.stdout.strip() == "True"


def _run(
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=cwd
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    return done

"""The two builds users run, installed the way they install them, for the bench rows
that measure what ships.

- **plain install**: ``pip install .``, i.e. the py3-none-any wheel (plain Python),
  in a virtualenv of its own;
- **image's build**: the compiled wheel (the request path built with mypyc), built and
  installed as deploy/docker/Dockerfile does it (``pip install "<wheel>[redis]"`` into a
  fresh virtualenv), on the image's interpreter, Debian 12's ``/usr/bin/python3``, where
  this machine has it (a Debian 12 host with python3-venv and python3-dev); elsewhere on
  this machine's interpreter, and the report says so. The interpreter matters: on this
  VM Debian's Python 3.11.2 runs the broker in ~9 % fewer instructions than a Python
  3.11.7 built from source with pyenv's defaults (no profile-guided optimisation).

Both wheels come from ``scripts/build-wheels.sh`` (a fresh sdist each, PEP 517), into a
cache under bench/results/builds/ keyed by a hash of what a wheel is built from
(broker/, config/, pyproject.toml, README.md), so a rerun on unchanged code reuses them
(a build takes ~2 minutes).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from procs import BenchError

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / "results" / "builds"
# What scripts/build-wheels.sh puts in a wheel (the sdist's only-include, pyproject.toml).
SOURCES = ("broker", "config", "pyproject.toml", "README.md", "LICENSE")


# The image's interpreter (deploy/docker/Dockerfile: debian:bookworm-slim's python3).
DEBIAN_PYTHON = Path("/usr/bin/python3")
IMAGE_DEBIAN = "12"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


@dataclass(frozen=True)
class Builds:
    plain: str  # the interpreter of the plain install
    image: str  # the interpreter of the image's build

    def describe(self) -> str:
        return f"plain install {_identify(self.plain)}; image's build {_identify(self.image)}"


def prepare(
    progress: Callable[[str], None], plain: str | None = None, image: str | None = None
) -> Builds:
    """The two interpreters: those given (checked), else built and installed here."""
    # Absolute (not resolved: a venv's python is a symlink out of its venv), since the
    # servers start in other directories.
    plain = os.path.abspath(plain) if plain else None
    image = os.path.abspath(image) if image else None
    if plain is None or image is None:
        folder = CACHE / source_hash()
        if plain is None:
            plain = _installed(folder, "plain", "", progress, sys.executable)
        if image is None:
            base = image_interpreter()
            if base is None:
                progress(
                    "the image's build runs on this machine's interpreter: no Debian"
                    f" {IMAGE_DEBIAN} {DEBIAN_PYTHON} with venv and headers here"
                )
            name = "compiled" if base is None else "compiled-debian"
            image = _installed(folder, name, "[redis]", progress, base or sys.executable)
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


def image_interpreter() -> str | None:
    """Debian 12's python3, the image's interpreter, if this is a Debian 12 machine that
    can build and install the compiled wheel with it (python3-venv, python3-dev)."""
    release = _os_release()
    if release.get("ID") != "debian" or release.get("VERSION_ID") != IMAGE_DEBIAN:
        return None
    if not DEBIAN_PYTHON.exists():
        return None
    can_build = (
        "import ensurepip, sysconfig, os; os.stat(sysconfig.get_path('include') + '/Python.h')"
    )
    probe = subprocess.run([DEBIAN_PYTHON, "-I", "-c", can_build], capture_output=True, check=False)
    return str(DEBIAN_PYTHON) if probe.returncode == 0 else None


def _os_release() -> dict[str, str]:
    release = Path("/etc/os-release")
    lines = release.read_text().splitlines() if release.exists() else []
    return {key: value.strip('"') for key, _, value in (line.partition("=") for line in lines)}


def _frontend() -> str:
    """The build frontend the image's build stage installs (its pin lives there)."""
    found = re.search(r"pip install [^\n]*?\b(build==[\w.]+)", DOCKERFILE.read_text())
    if found is None:
        raise BenchError(f"{DOCKERFILE}: no pinned build frontend (pip install build==...)")
    return found.group(1)


def _identify(python: str) -> str:
    which = "import platform, sys; print(platform.python_version(), sys.base_prefix)"
    version, prefix = _run([python, "-I", "-c", which]).stdout.split()
    return f"Python {version} ({prefix})"


def _installed(
    folder: Path, kind: str, extras: str, progress: Callable[[str], None], base: str
) -> str:
    """A virtualenv of *base*'s with the *kind* wheel built by *base* itself, as the
    Dockerfile builds and installs it (a compiled wheel is for the interpreter that
    built it)."""
    env_dir = folder / f"{kind}-venv"
    python = env_dir / "bin" / "python"
    if python.exists():
        return str(python)
    wheels = folder / f"{kind}-wheels"
    frontend = folder / f"{kind}-build-venv"
    for stale in (wheels, env_dir, frontend):
        shutil.rmtree(stale, ignore_errors=True)
    progress(f"building the {kind} wheel (scripts/build-wheels.sh, {base}) into {wheels}")
    _run([base, "-m", "venv", str(frontend)])
    _run([str(frontend / "bin" / "python"), "-m", "pip", "install", "-q", _frontend()], timeout=300)
    which = "plain" if kind == "plain" else "compiled"
    _run(
        ["bash", str(REPO / "scripts" / "build-wheels.sh"), str(wheels)],
        env={**os.environ, "PYTHON": str(frontend / "bin" / "python"), "WHEELS": which},
        timeout=900,
    )
    (wheel,) = wheels.glob("token_broker-*.whl")
    progress(f"installing {wheel.name}{extras} into {env_dir}")
    _run([base, "-m", "venv", str(env_dir)])
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}{extras}"], timeout=900)
    shutil.rmtree(frontend, ignore_errors=True)
    return str(python)


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

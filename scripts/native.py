"""Compile the broker's modules with mypyc, in place: the same code, about a fifth less
CPU per proxied request (see README, Performance). Optional: without it the broker runs
as plain Python.

    python scripts/native.py build    # broker/<module>.*.so next to each compiled .py
    python scripts/native.py clean    # remove them: plain Python again
    python scripts/native.py check    # exit 1 if the build is older than a source in broker/

Python imports ``broker/x.*.so`` before ``broker/x.py``, so a stale build would shadow an
edited source: ``scripts/test.sh`` runs ``check`` first. Needs mypy and setuptools (the
``native`` extra) and a C compiler. The modules are type-checked again on the way
(``mypy --strict`` already passes on them), and mypyc enforces their annotations at run
time, so the whole test suite runs against the compiled build too (``.ci/run``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "broker"
# The shared runtime of the compiled modules, inside the package: broker/_native__mypyc.*.so
GROUP = "broker._native"
# What every proxied request runs through (the profiles in bench/), and what those call
# per request. The rest (configuration, the CLI, the sandbox, admin, Redis) is plain
# Python: compiling it would win nothing a request can feel.
COMPILED = (
    "bounded",
    "checkout_tokens",
    "cors",
    "credentials",
    "errors",
    "exchange",
    "gateway",
    "handlers",
    "lean_connection",
    "lean_transport",
    "loop_metrics",
    "metrics",
    "middlewares",
    "paths",
    "refresh_schedule",
    "relay",
    "revocations",
    "routes",
    "sessions",
    "targets",
    "throttle",
    "token_store",
    "transport",
    "upstream",
)


def sources() -> list[Path]:
    return [PACKAGE / f"{name}.py" for name in COMPILED]


def builds() -> list[Path]:
    """Compiled modules present in the package (and the shared runtime)."""
    return sorted(p for p in PACKAGE.iterdir() if p.name.endswith(tuple(EXTENSION_SUFFIXES)))


def stale() -> list[str]:
    """Why the compiled build does not match the sources ([] when it does, or is absent)."""
    built = {p.name.split(".", 1)[0]: p for p in builds()}
    if not built:
        return []
    problems = [
        f"{source.name} has no compiled module" for source in sources() if source.stem not in built
    ]
    for name in sorted(built.keys() - {p.stem for p in sources()} - {"_native__mypyc"}):
        problems.append(f"{name} is compiled but is not to be")
    # Any module, compiled or not: compiled code calls the plain modules with the types
    # it was compiled against, and checks them at run time.
    built_at = min(binary.stat().st_mtime for binary in built.values())
    for source in sorted(PACKAGE.glob("*.py")):
        if source.stat().st_mtime > built_at:
            problems.append(f"{source.name} changed after the build")
    return problems


def build() -> None:
    # The native extra: only this command needs them.
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import setup  # type: ignore[import-untyped]  # noqa: PLC0415

    clean()
    paths = [str(p) for p in sources()]
    # setuptools would take the working directory's pyproject.toml (hatchling's) for its
    # own: build in a scratch directory, then copy the modules into the package.
    with tempfile.TemporaryDirectory(prefix="broker-native-") as scratch:
        os.chdir(scratch)
        extensions = mypycify(paths, group_name=GROUP)
        setup(
            name="token-broker-native",
            ext_modules=extensions,
            script_args=["--quiet", "build_ext", "--build-lib", "lib"],
        )
        for binary in Path(scratch, "lib", "broker").iterdir():
            shutil.copy2(binary, PACKAGE / binary.name)
    print(f"compiled {len(paths)} modules of broker/ with mypyc")


def clean() -> None:
    for binary in builds():
        binary.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=("build", "clean", "check"))
    command = parser.parse_args().command
    if command == "build":
        build()
    elif command == "clean":
        clean()
    else:
        problems = stale()
        for problem in problems:
            print(f"stale native build: {problem}", file=sys.stderr)
        if problems:
            print("run: python scripts/native.py build (or clean)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

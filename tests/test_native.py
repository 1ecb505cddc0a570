"""scripts/native.py check: a compiled build that no longer matches its sources is refused.

Python imports ``broker/x.*.so`` before ``broker/x.py``, so a stale build would run (and
be tested, and be benchmarked) instead of the edited source. The checks run on a copy of
the script next to a package of empty files: nothing is compiled here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "native.py"
SUFFIX = EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def compiled_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("native_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return list(script.COMPILED)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of scripts/native.py, and a broker/ with every compiled module's source and
    one plain module's."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "native.py")
    package = tmp_path / "broker"
    package.mkdir()
    for name in [*compiled_names(), "settings"]:  # settings: a module left plain
        (package / f"{name}.py").write_text("")
    return tmp_path


def build(tree: Path, names: list[str]) -> None:
    """Stand-ins for a build of *names*, newer than every source."""
    later = max(p.stat().st_mtime for p in (tree / "broker").glob("*.py")) + 10
    for name in [*names, "_native__mypyc"]:
        binary = tree / "broker" / f"{name}{SUFFIX}"
        binary.write_bytes(b"")
        os.utime(binary, (later, later))


def check(tree: Path) -> subprocess.CompletedProcess[str]:
    script = tree / "scripts" / "native.py"
    return subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(script), "check"], capture_output=True, text=True, check=False
    )


def test_no_build_is_plain_python_and_passes(tree: Path) -> None:
    assert check(tree).returncode == 0


def test_a_build_newer_than_its_sources_passes(tree: Path) -> None:
    build(tree, compiled_names())
    assert check(tree).returncode == 0


@pytest.mark.parametrize("module", ["relay", "settings"])  # compiled, and plain
def test_a_source_edited_after_the_build_is_refused(tree: Path, module: str) -> None:
    build(tree, compiled_names())
    source = tree / "broker" / f"{module}.py"
    later = (tree / "broker" / f"relay{SUFFIX}").stat().st_mtime + 10
    os.utime(source, (later, later))
    done = check(tree)
    assert done.returncode == 1
    assert f"{module}.py changed after the build" in done.stderr


def test_a_partial_build_is_refused(tree: Path) -> None:
    names = compiled_names()
    build(tree, [name for name in names if name != "handlers"])
    done = check(tree)
    assert done.returncode == 1
    assert "handlers.py has no compiled module" in done.stderr


def test_a_module_compiled_but_no_longer_listed_is_refused(tree: Path) -> None:
    build(tree, [*compiled_names(), "settings"])
    done = check(tree)
    assert done.returncode == 1
    assert "settings is compiled but is not to be" in done.stderr

"""The packages of broker/: each says what it owns, and names in ``__all__`` what other
packages use of it, without making the light commands heavy.

A name that a module outside a package imports from one of its modules (bench/ counts as
outside) is that package's public API: it must be in the package's ``__all__``, and every
name there must resolve. Read from the installed sources, so that the compiled wheel's
run checks what it has.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import broker

BROKER = Path(broker.__file__).resolve().parent
REPO = Path(__file__).resolve().parent.parent
PACKAGES = sorted(path.parent.name for path in BROKER.glob("*/__init__.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(BROKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Importing module -> file: broker's own modules, then bench's scripts."""
    found = {module_name(path): path for path in BROKER.rglob("*.py")}
    found |= {f"bench.{path.stem}": path for path in (REPO / "bench").glob("*.py")}
    return found


def imported_from_outside() -> dict[str, dict[str, set[str]]]:
    """package -> name -> the modules outside it that import the name from it."""
    imports: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for importer, path in sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module is None:
                continue
            parts = node.module.split(".")
            if parts[0] != "broker" or len(parts) < 2 or parts[1] not in PACKAGES:
                continue
            package = f"broker.{parts[1]}"
            if importer == package or importer.startswith(package + "."):
                continue
            for alias in node.names:
                if not is_module(f"{node.module}.{alias.name}"):  # a name, not a submodule
                    imports[package][alias.name].add(importer)
    return imports


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent is a module, not a package
        return False


@pytest.mark.parametrize("package", [module_name(p) for p in sorted(BROKER.rglob("__init__.py"))])
def test_every_package_says_what_it_owns(package: str) -> None:
    init = BROKER.parent.joinpath(*package.split("."), "__init__.py")
    assert ast.get_docstring(ast.parse(init.read_text())), f"{package} has no docstring"


def test_what_other_packages_import_is_in_the_all_of_its_package() -> None:
    missing = []
    for package, names in sorted(imported_from_outside().items()):
        exported = set(getattr(importlib.import_module(package), "__all__", ()))
        missing += [
            f"{package}.{name} (imported by {', '.join(sorted(importers))})"
            for name, importers in sorted(names.items())
            if name not in exported
        ]
    assert not missing, "add to the package's __all__ (and its imports): " + "; ".join(missing)


@pytest.mark.parametrize("package", [f"broker.{name}" for name in PACKAGES])
def test_every_name_in_all_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", ()):
        assert getattr(module, name, None) is not None, f"{package}.{name}"


def test_the_light_commands_import_no_application() -> None:
    """keygen, check-config and healthcheck start with the CLI's module and nothing of
    the server: the packages' exports of it are imported on first use."""
    code = "import json, sys, broker.cli.main; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    heavy = {"aiohttp", "prometheus_client", "redis", "broker.gateway", "broker.web.server"}
    assert not heavy & loaded, sorted(heavy & loaded)

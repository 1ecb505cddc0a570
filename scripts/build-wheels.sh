#!/usr/bin/env bash
# Builds the broker's wheels into dist/ (or the folder given):
#
#   bash scripts/build-wheels.sh [OUT]             # both
#   WHEELS=compiled bash scripts/build-wheels.sh   # only the compiled one (the image's)
#   WHEELS=plain bash scripts/build-wheels.sh      # only the plain one
#
#   token_broker-<v>-py3-none-any.whl              plain Python, any platform
#   token_broker-<v>-cp3XX-cp3XX-linux_x86_64.whl  the request path compiled with mypyc,
#                                                  for this interpreter and platform
#
# Each wheel is built from a fresh sdist in an isolated environment (PEP 517, `python -m
# build`), so nothing is compiled into this tree and no local state reaches a wheel. The
# compiled one runs the mypyc hook of pyproject.toml (hatch-mypyc, with the mypy pinned
# there) and needs a C compiler and the Python headers. The image builds its wheel with
# this script on the image's own Python; CI tests that very wheel (.ci/image).
#
# PYTHON picks the interpreter (default python3); it needs the `build` frontend
# (`pip install build`, or the [build] extra).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
python=${PYTHON:-python3}
which=${WHEELS:-both}
case $which in both | plain | compiled) ;; *)
  echo "WHEELS must be both, plain or compiled (got $which)" >&2
  exit 2
  ;;
esac
if ! "$python" -m build --version >/dev/null 2>&1; then
  echo "$python has no 'build' frontend: $python -m pip install build" >&2
  exit 1
fi
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

build() { # $1: plain or compiled
  local enable=0
  [ "$1" = compiled ] && enable=1
  # sdist first, then the wheel from it: the hook's extension build happens in the
  # unpacked sdist, in a temporary folder.
  HATCH_BUILD_HOOK_ENABLE_MYPYC=$enable "$python" -m build --outdir "$scratch/$1" . \
    >"$scratch/$1.log" 2>&1 || { cat "$scratch/$1.log" >&2; exit 1; }
  local wheel
  wheel=$(ls "$scratch/$1"/*.whl)
  case $1:$(basename "$wheel") in
    plain:*-py3-none-any.whl | compiled:*-cp3*-cp3*-*.whl) ;;
    *)
      echo "the $1 build made $(basename "$wheel"), which is not a $1 wheel" >&2
      exit 1
      ;;
  esac
  cp "$wheel" "$out/"
  echo "$out/$(basename "$wheel")"
}

if [ "$which" != compiled ]; then build plain; fi
if [ "$which" != plain ]; then build compiled; fi

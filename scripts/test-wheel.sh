#!/usr/bin/env bash
# Runs the whole test suite against an installed wheel, as a user gets it:
#
#   bash scripts/test-wheel.sh dist/token_broker-0.1.0-cp311-cp311-linux_x86_64.whl [pytest args]
#
# A fresh virtualenv gets the wheel with its [dev,redis] extras; the suite runs from a
# copy of the repository without broker/, so that nothing can be imported from the source
# tree. For a compiled wheel the run asserts that every module the mypyc hook lists is
# loaded compiled (tests/conftest.py, BROKER_TEST_COMPILED=1).
#
# PYTHON picks the interpreter for the virtualenv (default python3); for the image's
# wheel, use the image's Python (Debian 12's /usr/bin/python3, as .ci/image does).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash scripts/test-wheel.sh WHEEL [pytest args]" >&2
  exit 2
fi
wheel=$(realpath "$1")
shift
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel[dev,redis]" \
  >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }
mkdir "$work/tree"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' path; do
      case $path in broker/*) continue ;; esac
      [ -e "$path" ] && cp --parents -- "$path" "$work/tree/"
    done
case $(basename "$wheel") in
  *-py3-none-any.whl) compiled=0 ;;
  *) compiled=1 ;;
esac
cd "$work/tree"
echo "test-wheel: $(basename "$wheel") in $("$work/venv/bin/python" --version), from $work/tree"
BROKER_TEST_COMPILED=$compiled "$work/venv/bin/pytest" "$@"

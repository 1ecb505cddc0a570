#!/usr/bin/env bash
# The test command of the README: sets up .venv on first use, then lint, types, tests
# (with branch coverage and its floor when the whole suite runs).
# Tests run against the source tree, plain Python (an editable install); the compiled
# wheel is tested installed, by scripts/test-wheel.sh (CI: .ci/image). Tests start their
# own servers on 127.0.0.1 (sandbox, brokers, redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is needed by tests/redis: sudo apt-get install redis-server" >&2
    exit 1
  fi
fi
# tests/browser: Debian's Chromium (never a browser downloaded by playwright) and npm,
# which installs the vendor's SDK into tests/browser/.sdk. Without them those tests skip,
# or fail under CI=true.
browser_packages=()
[ -x /usr/bin/chromium ] || browser_packages+=(chromium)
command -v npm >/dev/null 2>&1 || browser_packages+=(npm)
if [ ${#browser_packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser_packages[@]}" >/dev/null
fi
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev,redis,build]'
  touch .venv/.installed
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy broker tests bench
.venv/bin/lint-imports --no-cache
# The whole suite runs under coverage: broker/'s branches, in this process and in every
# Python process the tests start ([tool.coverage] in pyproject.toml), a short report of the
# files not fully covered, and the floor (fail_under). A selection (a path, -k, -m, --co, ...)
# runs plain pytest: a part of the suite cannot be held to the whole suite's floor.
whole_suite=1
for arg in "$@"; do
  case $arg in
    -q | -qq | -v | -vv | -x | -ra | -rs | --tb=* | --durations=* | --color=*) ;;
    *) whole_suite=0 ;;
  esac
done
if [ $whole_suite = 0 ]; then
  exec .venv/bin/pytest "$@"
fi
rm -f .coverage .coverage.*
status=0
.venv/bin/coverage run -m pytest "$@" || status=$?
.venv/bin/coverage combine -q
[ $status = 0 ] || exit $status
report=$(.venv/bin/coverage report 2>&1) || status=$?
# Short: the ten files least covered, then the total (and the floor, when it is missed).
head -n 12 <<<"$report"
echo "..."
tail -n 4 <<<"$report"
exit $status

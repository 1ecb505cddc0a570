#!/usr/bin/env bash
# The test command of the README: sets up .venv on first use, then lint, types, tests.
# Tests run against what broker/ holds: plain Python, or the mypyc build of the request
# path if `python scripts/native.py build` made one (refused when older than its sources).
# Tests start their own servers on 127.0.0.1 (sandbox, brokers, redis-server).
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
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev,redis,native]'
  touch .venv/.installed
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy broker tests bench scripts
.venv/bin/python scripts/native.py check
.venv/bin/pytest "$@"

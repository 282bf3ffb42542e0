#!/usr/bin/env bash
# Install everything the tests need, then run every check: ruff, mypy, the
# benchmark smoke run and the whole pytest suite (Redis, Node interop and
# browser tests included; none is skipped for a missing dependency).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages from Debian: redis-server for the Redis tests, Chromium for the
# dashboard test, Node.js + npm for the interop tests.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]} (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> installing Python packages"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"

echo "==> installing npm packages for the interop tests"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

echo "==> ruff"
ruff check src tests benchmarks
ruff format --check src tests benchmarks

echo "==> mypy"
mypy

echo "==> benchmark smoke run"
python3 -m benchmarks --quick >/dev/null

echo "==> pytest"
python3 -m pytest "$@"

#!/usr/bin/env bash
# The benchmark suite in one command: sets up the Python bridge's venv (redis-py) under
# target/, then runs `cargo bench --bench suite` against a redis-server of its own.
# BENCH_SCALE scales message counts, BENCH_ONLY=<name part> runs some scenarios only.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/bench-py
if ! "$venv/bin/python" -c 'import redis' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'redis>=5'
fi
export BENCH_PYTHON="$PWD/$venv/bin/python"
cargo bench --bench suite 2>&1 | tee target/bench-suite.log

#!/usr/bin/env bash
# The budgets of issue 10 under attack, on the release binary (see bench/hostile.py): RSS after
# 100 x 1 MB flow inputs and with 1,000 stalled bodies, and /__healthz, dropped log lines and
# SIGTERM-to-exit with stderr stalled for 10 s under wrk load. About 40 s. Needs wrk, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/hostile.sh needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release -q --bin multi-server -p multi-server
exec python3 bench/hostile.py "$@"

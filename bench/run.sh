#!/usr/bin/env bash
# Benchmarks, side by side with baselines measured in the same run (see bench/bench.py):
# manager overhead vs bare servers per framework, startup, shutdown (idle and loaded),
# memory, scale to 512 servers, and the reflection API's runAction.
#
#   bench/run.sh [--seconds 5] [--rounds 3] [--runs 10]
#
# Needs wrk (apt-get install wrk) and python3. Prints a markdown table and writes JSON to
# target/bench/results.json. Takes about 4 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  echo "bench/run.sh needs wrk: apt-get install wrk" >&2
  exit 1
fi
cargo build --release -q --bin multi-server -p multi-server
cargo build --release -q -p multi-server-bench
exec python3 bench/bench.py "$@"

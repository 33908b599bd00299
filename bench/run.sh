#!/usr/bin/env bash
# Benchmarks, side by side with baselines measured in the same run (see bench/bench.py):
# manager overhead vs bare servers per framework (in turns on the shared cores, then as
# capacity: each server and bare on one CPU at the same moment), startup, shutdown (idle and
# loaded), memory, scale to 512 servers, and the reflection API's runAction.
#
#   bench/run.sh [--seconds 2] [--rounds 9] [--runs 10]
#
# Needs wrk (apt-get install wrk) and python3. Prints a markdown table and writes JSON to
# target/bench/results.json (CARGO_TARGET_DIR is honoured: binaries and JSON live under it).
# Takes about 13 minutes with the defaults (the overhead table about 5, capacity about 4).
# The servers log every request into a temporary directory (about 2 GB over a run), removed
# at the end; BENCH_KEEP_LOGS=1 keeps it.
#
# Then, when valgrind is installed, the figure that does not move with the machine's load:
# bench/callgrind.sh counts instructions per request (valgrind's callgrind, one sequential
# keep-alive client, one tokio worker) for the same servers, their bare baselines and peers:
# repeatable to 0.1-3% where req/s moves by 10%, so it shows small per-request costs (a
# middleware, a log line) that wrk's noise hides. About a minute more.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  echo "bench/run.sh needs wrk: apt-get install wrk" >&2
  exit 1
fi
cargo build --release -q --bin multi-server -p multi-server
cargo build --release -q -p multi-server-bench
python3 bench/bench.py "$@"
if command -v valgrind >/dev/null; then
  echo
  target_dir=${CARGO_TARGET_DIR:-target}
  bench/callgrind.sh --binary "$target_dir/release/multi-server" \
    --bench-bins "$target_dir/release" --tokio-workers 1 --n1 1000 --n2 5000
else
  echo "(no valgrind: the instruction counts of bench/callgrind.sh are left out)"
fi

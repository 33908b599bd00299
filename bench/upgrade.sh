#!/usr/bin/env bash
# In-place upgrade figures (issue 13; see bench/upgrade.py): five upgrades in a row under wrk
# -c50 with probes on every server, a slow request across each, and new binaries that fail.
# About 40 s. Needs wrk, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/upgrade.sh needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release -q --bin multi-server -p multi-server
exec python3 bench/upgrade.py "$@"

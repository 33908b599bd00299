#!/usr/bin/env bash
# runAction throughput of the reflection server, side by side with the same binary's cheapest
# reflection endpoint (GET /api/__health) measured in the same run: the ratio says what running
# a flow (trace, spans, JSON schema check, result) costs on top of serving a request.
#
#   bench/reflection.sh [seconds per run, default 5] [runs, default 3]
# Needs wrk (apt-get install wrk). Builds the release binary. Prints a markdown table of
# medians over the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}" runs="${2:-3}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build -q --release --bin multi-server
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
(cd "$work" && MULTI_SERVER_DEVUI_PORTS=0 exec "$OLDPWD/target/release/multi-server" --dev --flows-ports 0 --reflection-ports 0 \
  --reflection-delay 0s >"$work/out" 2>"$work/log") &
pid=$!
for _ in $(seq 1 100); do grep -q reflection "$work/out" 2>/dev/null && break; sleep 0.05; done
url="$(grep reflection "$work/out" | grep -o 'http://[0-9.:]*')"
cat >"$work/run.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"/flow/multi_server_flow","input":"Alice"}'
LUA
measure() { # prints "req/s p99_ms"
  wrk -t2 -c50 -d"${secs}s" --latency "$@" | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p99=v}
    END {printf "%.0f %.2f\n", rps, p99}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: >"$work/health" ; : >"$work/run"
for _ in $(seq 1 "$runs"); do
  measure "$url/api/__health" >>"$work/health"
  measure -s "$work/run.lua" "$url/api/runAction" >>"$work/run"
done
h_rps=$(cut -d' ' -f1 "$work/health" | median); h_p99=$(cut -d' ' -f2 "$work/health" | median)
r_rps=$(cut -d' ' -f1 "$work/run" | median); r_p99=$(cut -d' ' -f2 "$work/run" | median)
echo "| endpoint (wrk -t2 -c50, ${secs}s x ${runs}, medians) | req/s | p99 ms |"
echo "|---|---:|---:|"
echo "| GET /api/__health (baseline) | $h_rps | $h_p99 |"
echo "| POST /api/runAction multi_server_flow | $r_rps | $r_p99 |"
awk -v a="$r_rps" -v b="$h_rps" 'BEGIN {printf "runAction / health = %.2f\n", a/b}'
grep -c 'path="/api/runAction" status=200' "$work/log" | awk '{print "runAction requests logged with 200: " $1}'

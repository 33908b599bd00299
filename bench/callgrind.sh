#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a figure that barely moves with the load of
# the machine (wrk req/s on a shared 2-core box moves by 10% between runs; these counts repeat
# to 0.1% for actix and the bare servers, to 1-3% for poem and salvo inside multi-server, see
# --tokio-workers), so a change of a few hundred instructions per request shows.
# Complements bench/run.sh (throughput and latency under wrk).
#
#   bench/callgrind.sh [--binary PATH] [--bench-bins DIR] [--n1 N] [--n2 N]
#                      [--repeat K] [--tokio-workers N]
#
# Method: each server runs under `valgrind --tool=callgrind --fair-sched=yes`; seq-client
# (bench/src/bin/seq-client.rs, outside valgrind) drives it over one keep-alive HTTP/1.1
# connection, one request at a time, reading every response in full. The process total Ir
# (`totals:` of the callgrind out file, written after a graceful SIGTERM) is taken for runs
# of N1 and of N2 requests, and
#   Ir/request = (Ir(N2) - Ir(N1)) / (N2 - N1),
# so start-up, the connection and shutdown cancel out. With --repeat K, each run is done K
# times and the median total is used. Measured: multi-server's flows (actix-web, `GET /greet`,
# one worker), in dev mode reflection (poem, `GET /api/__health`) and devui (salvo,
# `GET /__healthz`), and admin (axum, `GET /__healthz`) when the binary's banner lists it; each
# with logging on (RUST_LOG=info, to a file) and off (RUST_LOG=warn), next to a bare server of
# the same framework (bench/src/bin/bare-*.rs: no manager, no middleware) and its peer (the
# bare server with `--log`: the framework's idiomatic request logging, to a file). Then the
# flow path: POST /flow/multi_server_flow (flows) and POST /api/runAction (reflection) with
# logging on, each next to that server's plain endpoint and to the framework's floor for the
# same exchange (the bare server's POST route: a JSON body read and parsed, JSON answered).
#
# --binary: the multi-server binary; --bench-bins: the directory with seq-client and bare-*
# (both default to ${CARGO_TARGET_DIR:-target}/release, built first with cargo; give both to
# skip the build). --n1/--n2: requests per run (default 2000 and 10000). --repeat: runs per
# request count (default 1). --tokio-workers: TOKIO_WORKER_THREADS for every server (default:
# tokio's own, one per CPU; the servers' tasks then hop between workers as timing decides,
# which moves the counts by up to 3% on poem and salvo; with 1, logging-off counts repeat to
# 0.1% and logging-on ones to 1%: the log writer's batches follow the clock).
#
# Needs valgrind (apt-get install valgrind). Loopback only; every wait is bounded; every
# process started is killed by pid on exit. Prints a markdown table and writes JSON to
# ${CARGO_TARGET_DIR:-target}/bench/callgrind.json. About 75 s on 2 cores with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bench/callgrind.sh [--binary PATH] [--bench-bins DIR] [--n1 N] [--n2 N] [--repeat K] [--tokio-workers N]"
target_dir=${CARGO_TARGET_DIR:-target}
binary="" bench_bins="" n1=2000 n2=10000 repeat=1 tokio_workers=""
while (($#)); do
  case $1 in
    --binary) binary=${2:?$usage}; shift 2 ;;
    --bench-bins) bench_bins=${2:?$usage}; shift 2 ;;
    --n1) n1=${2:?$usage}; shift 2 ;;
    --n2) n2=${2:?$usage}; shift 2 ;;
    --repeat) repeat=${2:?$usage}; shift 2 ;;
    --tokio-workers) tokio_workers=${2:?$usage}; shift 2 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
for v in "$n1" "$n2" "$repeat" ${tokio_workers:+"$tokio_workers"}; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "not a number: $v" >&2; exit 2; }
done
((n2 > n1 && repeat >= 1)) || { echo "need n1 < n2 and repeat >= 1" >&2; exit 2; }
if ! command -v valgrind >/dev/null; then
  echo "bench/callgrind.sh needs valgrind: apt-get install valgrind" >&2
  exit 1
fi
if [[ -z $binary ]]; then
  cargo build --release -q -p multi-server --bin multi-server
  binary=$target_dir/release/multi-server
fi
if [[ -z $bench_bins ]]; then
  cargo build --release -q -p multi-server-bench
  bench_bins=$target_dir/release
fi
for f in "$binary" "$bench_bins/seq-client"; do
  [[ -x $f ]] || { echo "not an executable: $f" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/callgrind-bench.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]+"${pids[@]}"}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "bench/callgrind.sh: $*" >&2
  local f
  for f in "$work"/last.*; do
    [[ -s $f ]] && { echo "--- tail of ${f##*/}" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

# forget PID: a process we started has been reaped; the trap must not signal its pid again.
forget() {
  local p kept=()
  for p in "${pids[@]+"${pids[@]}"}"; do
    [[ $p == "$1" ]] || kept+=("$p")
  done
  pids=("${kept[@]+"${kept[@]}"}")
}

# wait_exit PID SECONDS: bounded wait for a process we started to exit (killed past that).
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2)) status=0
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      status=1
      break
    fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  forget "$pid"
  return "$status"
}

# wait_stdout PID FILE PATTERN SECONDS: until FILE has a line matching PATTERN.
wait_stdout() {
  local pid=$1 file=$2 pattern=$3 deadline=$((SECONDS + $4))
  until grep -qE "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# server_env RUST_LOG: the environment of every server (through env(1), which execs).
server_env() {
  local e=(env -u TOKIO_WORKER_THREADS GENKIT_TELEMETRY_SERVER= "RUST_LOG=$1")
  [[ -n $tokio_workers ]] && e+=("TOKIO_WORKER_THREADS=$tokio_workers")
  echo "${e[@]}"
}

# Modes of multi-server: the flags of each (admin only when this binary has it).
has_admin=0
"$binary" --help 2>/dev/null | grep -q -- '--admin-ports' && has_admin=1
mode_args() {
  local args=(--flows-ports 0 --flows-workers 1)
  [[ $1 == dev ]] && args+=(--dev --reflection-ports 0 --reflection-delay 0s --devui-ports 0)
  ((has_admin)) && args+=(--admin-ports 0)
  echo "${args[@]}"
}

# banner_port NAME FILE: the port of server NAME in a multi-server banner.
banner_port() {
  awk -v name="$1" '$1 == name && $3 ~ /^http:\/\/127\.0\.0\.1:[0-9]+/ {
    sub(/^http:\/\/127\.0\.0\.1:/, "", $3); sub(/[^0-9].*/, "", $3); print $3; exit }' "$2"
}

# Which servers each mode starts, and their frameworks, from a native (not valgrind) start.
declare -A framework_of mode_of
for mode in normal dev; do
  out=$work/probe.$mode
  read -ra envs <<<"$(server_env warn)"
  read -ra args <<<"$(mode_args "$mode")"
  "${envs[@]}" "$binary" "${args[@]}" >"$out" 2>"$work/last.stderr" &
  pid=$!
  pids+=("$pid")
  wait_stdout "$pid" "$out" '^  [a-z]' 20 || fail "multi-server ($mode mode) printed no banner"
  sleep 0.2 # the banner is one write; let it land whole
  kill -TERM "$pid"
  wait_exit "$pid" 30 || fail "multi-server ($mode mode) did not exit on SIGTERM"
  while read -r name fw url; do
    [[ $url == http://127.0.0.1:* && -z ${mode_of[$name]:-} ]] || continue
    framework_of[$name]=$fw
    mode_of[$name]=$mode
  done < <(tail -n +2 "$out")
done

# count SERVER PATH RUST_LOG N -- CMD...: sets $total to the Ir of one run of N requests.
# SERVER is a banner name, or "bare" for a bare server (prints its URL on its first line).
# Each request is a GET, or a POST of $post_body when that is set.
# Runs in this shell (no subshell), so a failure exits the script and the trap sees the pid.
total="" runs=0 post_body=""
count() {
  local server=$1 path=$2 log=$3 n=$4 envs
  shift 5
  runs=$((runs + 1))
  local tag="$runs.$server.$log.$n"
  local out=$work/$tag.stdout cg=$work/$tag.callgrind
  rm -f "$work"/last.*
  read -ra envs <<<"$(server_env "$log")"
  "${envs[@]}" valgrind --tool=callgrind --fair-sched=yes \
    --callgrind-out-file="$cg" --log-file="$work/last.valgrind" "$@" \
    >"$out" 2>"$work/last.stderr" &
  local pid=$!
  pids+=("$pid")
  local port
  if [[ $server == bare ]]; then
    wait_stdout "$pid" "$out" '^http://' 120 || fail "$1 did not start under valgrind"
    port=$(sed -n '1s|^http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$out")
  else
    wait_stdout "$pid" "$out" "^  $server " 120 || fail "no banner line for $server under valgrind"
    port=$(banner_port "$server" "$out")
  fi
  [[ -n $port ]] || fail "no port for $server in: $(cat "$out")"
  local post=()
  [[ -n $post_body ]] && post=(--post "$post_body")
  "$bench_bins/seq-client" "127.0.0.1:$port" "$path" "$n" "${post[@]}" --timeout 30 --deadline 300 \
    2>"$work/last.client" || fail "seq-client failed on $server $path"
  kill -TERM "$pid"
  wait_exit "$pid" 60 || fail "$server did not exit within 60 s of SIGTERM"
  total=$(awk '$1 == "totals:" { print $2; exit }' "$cg" 2>/dev/null || true)
  [[ $total =~ ^[0-9]+$ ]] || fail "no totals: line in the callgrind out file of $server"
  rm -f "$cg"
}

# median N...: the median (lower middle for an even count).
median() {
  printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"
}

# per_request SERVER PATH RUST_LOG -- CMD...: sets $ir (Ir/request, from the median totals)
# and $totals (every total, as JSON).
ir="" totals=""
per_request() {
  local server=$1 path=$2 log=$3 i a=() b=()
  shift 4
  for ((i = 0; i < repeat; i++)); do
    count "$server" "$path" "$log" "$n1" -- "$@"
    a+=("$total")
    count "$server" "$path" "$log" "$n2" -- "$@"
    b+=("$total")
  done
  local ma mb
  ma=$(median "${a[@]}") mb=$(median "${b[@]}")
  ir=$(((mb - ma + (n2 - n1) / 2) / (n2 - n1)))
  totals="{\"n1\": [$(IFS=,; echo "${a[*]}")], \"n2\": [$(IFS=,; echo "${b[*]}")]}"
}

declare -A bare_bin=([actix-web]=bare-actix [poem]=bare-poem [salvo]=bare-salvo [axum]=bare-axum)
declare -A bare_args=([actix-web]="0 1" [poem]=0 [salvo]=0 [axum]=0)
declare -A bare_path=([actix-web]=/greet [poem]=/api/__health [salvo]=/__healthz [axum]=/__healthz)
declare -A path_of=([flows]=/greet [reflection]=/api/__health [devui]=/__healthz [admin]=/__healthz)
targets=()
for name in flows reflection devui admin; do
  [[ -n ${mode_of[$name]:-} ]] && targets+=("$name")
done

started=$SECONDS
declare -A on off bare peer raw
bare_order=()
for name in "${targets[@]}"; do
  read -ra args <<<"$(mode_args "${mode_of[$name]}")"
  per_request "$name" "${path_of[$name]}" info -- "$binary" "${args[@]}"
  on[$name]=$ir raw[$name.info]=$totals
  per_request "$name" "${path_of[$name]}" warn -- "$binary" "${args[@]}"
  off[$name]=$ir raw[$name.warn]=$totals
  fw=${framework_of[$name]}
  if [[ -z ${bare[$fw]:-} && -n ${bare_bin[$fw]:-} && -x $bench_bins/${bare_bin[$fw]:-} ]]; then
    read -ra args <<<"${bare_args[$fw]}"
    per_request bare "${bare_path[$fw]}" warn -- "$bench_bins/${bare_bin[$fw]}" "${args[@]}"
    bare[$fw]=$ir raw[bare.$fw]=$totals
    per_request bare "${bare_path[$fw]}" info -- "$bench_bins/${bare_bin[$fw]}" "${args[@]}" --log
    peer[$fw]=$ir raw[peer.$fw]=$totals
    bare_order+=("$fw")
  fi
done

# The flow path: a flow run through the flows API (actix) and the reflection API (poem), next
# to that server's plain endpoint above and the framework's floor for the same exchange (the
# bare server reading a JSON body and answering JSON: bench/src/bin/bare-*.rs).
declare -A flow_path=([flows]=/flow/multi_server_flow [reflection]=/api/runAction)
declare -A flow_body=([flows]='"Alice"' [reflection]='{"key":"/flow/multi_server_flow","input":"Alice"}')
declare -A bare_flow_path=([actix-web]=/flow/multi_server_flow [poem]=/api/runAction)
declare -A flow floor
flow_targets=()
for name in "${targets[@]}"; do
  [[ -n ${flow_path[$name]:-} ]] || continue
  flow_targets+=("$name")
  read -ra args <<<"$(mode_args "${mode_of[$name]}")"
  post_body=${flow_body[$name]}
  per_request "$name" "${flow_path[$name]}" info -- "$binary" "${args[@]}"
  flow[$name]=$ir raw[$name.flow]=$totals
  fw=${framework_of[$name]}
  if [[ -n ${bare_flow_path[$fw]:-} && -x $bench_bins/${bare_bin[$fw]:-} ]]; then
    read -ra args <<<"${bare_args[$fw]}"
    per_request bare "${bare_flow_path[$fw]}" warn -- "$bench_bins/${bare_bin[$fw]}" "${args[@]}"
    floor[$name]=$ir raw[$name.floor]=$totals
  fi
  post_body=""
done
elapsed=$((SECONDS - started))

ratio() { [[ -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }' || echo "-"; }
commas() { [[ -n $1 ]] && sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1" || echo "-"; }

vg_version=$(valgrind --version)
workers_note="tokio workers: ${tokio_workers:-default (one per CPU, $(nproc) here)}"
echo "## Instructions per request (callgrind Ir; ($n2 - $n1) requests difference, median of $repeat; $vg_version)"
echo
echo "One keep-alive connection, one request at a time; release build; actix with one worker; $workers_note."
echo "Logging on: RUST_LOG=info (every request logged, to a file); off: RUST_LOG=warn. Peer: the bare"
echo "server with its framework's own request logging (\`bare-* --log\`), RUST_LOG=info, to a file."
echo
echo "| target | framework | path | bare | peer with its logger | ours, logging on | ours, logging off | ratio to bare: peer / on / off (goal on <= 1.15) |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for name in "${targets[@]}"; do
  fw=${framework_of[$name]}
  b=${bare[$fw]:-} p=${peer[$fw]:-}
  echo "| $name | $fw | GET ${path_of[$name]} | $(commas "$b")${bare_bin[$fw]:+ (${bare_bin[$fw]})} | $(commas "$p") | $(commas "${on[$name]}") | $(commas "${off[$name]}") | $(ratio "$p" "$b") / $(ratio "${on[$name]}" "$b") / $(ratio "${off[$name]}" "$b") |"
done
if ((${#flow_targets[@]})); then
  echo
  echo "### The flow path (POST of a flow run, logging on, trace recorded; goal: <= 2x the same server's plain endpoint)"
  echo
  echo "| target | framework | flow path | framework floor: bare POST of JSON | ours, flow path | ours, plain endpoint (above) | flow / plain (goal <= 2) | flow / floor |"
  echo "|---|---|---|---:|---:|---:|---:|---:|"
  for name in "${flow_targets[@]}"; do
    fw=${framework_of[$name]}
    echo "| $name | $fw | POST ${flow_path[$name]} | $(commas "${floor[$name]:-}") | $(commas "${flow[$name]}") | $(commas "${on[$name]}") | $(ratio "${flow[$name]}" "${on[$name]}") | $(ratio "${flow[$name]}" "${floor[$name]:-}") |"
  done
fi
echo
echo "$runs valgrind runs in ${elapsed} s."

json=$target_dir/bench/callgrind.json
mkdir -p "$(dirname "$json")"
{
  echo "{"
  echo "  \"method\": \"callgrind Ir, (median total(n2) - median total(n1)) / (n2 - n1), sequential keep-alive client\","
  echo "  \"valgrind\": \"$vg_version\", \"cpus\": $(nproc), \"n1\": $n1, \"n2\": $n2, \"repeat\": $repeat,"
  echo "  \"tokio_workers\": ${tokio_workers:-null}, \"seconds\": $elapsed, \"binary\": \"$binary\","
  echo "  \"targets\": ["
  sep=""
  for name in "${targets[@]}"; do
    fw=${framework_of[$name]}
    printf '%s    {"target": "%s", "framework": "%s", "path": "%s", "mode": "%s",\n' \
      "$sep" "$name" "$fw" "${path_of[$name]}" "${mode_of[$name]}"
    printf '     "ir_per_request_logging_on": %s, "ir_per_request_logging_off": %s, "bare": %s,\n' \
      "${on[$name]}" "${off[$name]}" "${bare[$fw]:-null}"
    printf '     "totals": {"info": %s, "warn": %s}}' "${raw[$name.info]}" "${raw[$name.warn]}"
    sep=$',\n'
  done
  echo
  echo "  ],"
  echo "  \"flow_path\": ["
  sep=""
  for name in "${flow_targets[@]+"${flow_targets[@]}"}"; do
    printf '%s    {"target": "%s", "path": "%s", "body": %s, "ir_per_request": %s, "plain_endpoint": %s,\n' \
      "$sep" "$name" "${flow_path[$name]}" "\"${flow_body[$name]//\"/\\\"}\"" \
      "${flow[$name]}" "${on[$name]}"
    printf '     "floor": %s, "totals": %s, "floor_totals": %s}' \
      "${floor[$name]:-null}" "${raw[$name.flow]}" "${raw[$name.floor]:-null}"
    sep=$',\n'
  done
  echo
  echo "  ],"
  echo "  \"bare\": {"
  sep=""
  for fw in "${bare_order[@]+"${bare_order[@]}"}"; do
    printf '%s    "%s": {"binary": "%s", "path": "%s", "ir_per_request": %s, "totals": %s,\n' \
      "$sep" "$fw" "${bare_bin[$fw]}" "${bare_path[$fw]}" "${bare[$fw]}" "${raw[bare.$fw]}"
    printf '     "peer": {"args": "--log", "ir_per_request": %s, "totals": %s}}' \
      "${peer[$fw]}" "${raw[peer.$fw]}"
    sep=$',\n'
  done
  echo
  echo "  }"
  echo "}"
} >"$json"
echo
echo "JSON: $json"

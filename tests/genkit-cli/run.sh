#!/usr/bin/env bash
# Proof with the real client: Genkit's own CLI (genkit-cli 1.43.0 from npm) discovers the
# multi-server runtime, runs its flows (plain, streamed, bad input), finds the trace in its
# telemetry server, and after Ctrl+C no runtime file is left (Reflection API v1); then the
# commands that start the program themselves and speak v2 (flow:run -- <binary>, flow:batchRun,
# genkit start --experimental-reflection-v2 and its Dev UI backend). Offline: only loopback.
#
#   tests/genkit-cli/run.sh [path/to/multi-server]    (default: builds target/debug/multi-server)
#
# Prints one line per check and "N passed, N failed" at the end; exits non-zero on a failure.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
binary="${1:-}"
if [[ -z "$binary" ]]; then
  (cd "$repo" && cargo build -q --bin multi-server) || { echo "build failed"; exit 1; }
  binary="${CARGO_TARGET_DIR:-$repo/target}/debug/multi-server"
fi
command -v npm >/dev/null || { echo "npm is required (apt-get install nodejs npm)"; exit 1; }

work="$(mktemp -d /tmp/genkit-cli-e2e.XXXXXX)"
# The CLI lives outside the project root (its package.json would become the CLI's root), and
# HOME is private so the CLI's config and caches don't touch the machine's.
cli_dir="${GENKIT_CLI_DIR:-$work/cli}"
export HOME="$work/home" GENKIT_CLI_DISABLE_UPDATE_NOTIFICATIONS=true
export MULTI_SERVER_DEVUI_PORTS=0   # keep 4000.. free for the CLI's own servers
mkdir -p "$HOME" "$cli_dir" "$work/project"
passed=0 failed=0
check() { # check NAME CONDITION-EXIT-STATUS
  if [[ "$2" == 0 ]]; then echo "ok   $1"; passed=$((passed + 1)); else echo "FAIL $1"; failed=$((failed + 1)); fi
}
start_pid=""
cleanup() {
  if [[ -n "$start_pid" ]] && kill -0 "$start_pid" 2>/dev/null; then
    kill -INT -- "-$start_pid" 2>/dev/null; sleep 1; kill -KILL -- "-$start_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [[ ! -x "$cli_dir/node_modules/.bin/genkit" ]]; then
  echo "installing genkit-cli@1.43.0 into $cli_dir"
  (cd "$cli_dir" && timeout 600 npm install --no-audit --no-fund --loglevel=error genkit-cli@1.43.0 >/dev/null) \
    || { echo "npm install genkit-cli@1.43.0 failed"; exit 1; }
fi
genkit="$cli_dir/node_modules/.bin/genkit"

cd "$work/project"
# `genkit start` spawns our binary with GENKIT_ENV=dev and its telemetry server's URL. Its own
# process group, so Ctrl+C can be sent to the whole group, as a terminal would.
setsid "$genkit" start --noui --non-interactive -- "$binary" --flows-ports 0 >"$work/start.log" 2>&1 &
start_pid=$!

runtime_file() { ls .genkit/runtimes/*.json 2>/dev/null | head -n 1; }
for _ in $(seq 1 300); do
  [[ -n "$(runtime_file)" ]] && grep -q 'path="/api/notify"' "$work/start.log" && break
  sleep 0.1
done
file="$(runtime_file)"
[[ -n "$file" ]]; check "genkit start spawned the runtime and it wrote .genkit/runtimes/*.json" $?
grep -q 'path="/api/notify"' "$work/start.log"; check "the CLI discovered the runtime (health check, then /api/notify)" $?
telemetry="$(grep -o 'Telemetry API running on http://[0-9.:]*' "$work/start.log" | head -n 1 | awk '{print $5}')"
[[ -n "$telemetry" ]]; check "the CLI's telemetry server is up ($telemetry)" $?

run() { timeout 60 "$genkit" flow:run "$@" --non-interactive </dev/null 2>&1; }

out="$(run multi_server_flow '"Alice"')"
grep -q '^Hello from multi-server, Alice!$' <<<"$out"; check "flow:run multi_server_flow '\"Alice\"' prints the greeting" $?
trace_id="$(grep -o 'Trace ID: [0-9a-f]*' <<<"$out" | awk '{print $3}')"
[[ "$trace_id" =~ ^[0-9a-f]{32}$ ]]; check "the run has a 32-hex trace id ($trace_id)" $?

out="$(run streaming_greeting '{"name":"Bo","interval_ms":20}' -s)"
first=$(grep -n '"index": 0' <<<"$out" | head -n 1 | cut -d: -f1)
last=$(grep -n '"index": 7' <<<"$out" | head -n 1 | cut -d: -f1)
result=$(grep -n '^Result:' <<<"$out" | head -n 1 | cut -d: -f1)
[[ -n "$first" && -n "$last" && -n "$result" && "$first" -lt "$last" && "$last" -lt "$result" ]]
check "flow:run streaming_greeting -s prints the chunks in order, then the result" $?

out="$(run multi_server_flow '5')"
grep -q 'Code: 3' <<<"$out" && grep -q 'Schema validation failed' <<<"$out" && grep -q 'expected a string' <<<"$out"
check "a bad input shows the schema error (code 3, what was expected)" $?

trace=""
for _ in $(seq 1 50); do
  trace="$(curl -s "$telemetry/api/traces/$trace_id" || true)"
  grep -q '"genkit:state":"success"' <<<"$trace" && break
  sleep 0.1
done
grep -q "\"traceId\":\"$trace_id\"" <<<"$trace" && grep -q '"genkit:name":"multi_server_flow"' <<<"$trace" \
  && grep -q '"genkit:state":"success"' <<<"$trace"
check "the CLI's telemetry server holds our trace, finished with success" $?

echo '["Ann", "Bob"]' > batch.json
out="$(timeout 60 "$genkit" flow:batchRun multi_server_flow batch.json --non-interactive </dev/null 2>&1)"
grep -q '^Hello from multi-server, Ann!$' <<<"$out" && grep -q '^Hello from multi-server, Bob!$' <<<"$out"
check "flow:batchRun multi_server_flow batch.json runs each input" $?

# Ctrl+C: SIGINT to the whole group, as the terminal sends it.
kill -INT -- "-$start_pid"
for _ in $(seq 1 100); do kill -0 "$start_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$start_pid" 2>/dev/null; check "Ctrl+C stops genkit start and the runtime" $?
# The runtime may still be draining when the CLI is gone: its file goes at its very end.
for _ in $(seq 1 150); do [[ -z "$(runtime_file)" ]] && break; sleep 0.1; done
[[ -z "$(runtime_file)" ]]; check "no runtime file is left after Ctrl+C" $?
grep -q 'runtime file removed' "$work/start.log"; check "the runtime removed its own file on the way out" $?
start_pid=""

if (( failed > 0 )); then
  echo "--- genkit start log"; tail -n 40 "$work/start.log"
fi

# ---- Reflection API v2: the CLI listens on a WebSocket and the program it starts dials it.
# A link with its own name stands for the binary, so "is one of ours still running?" is a
# pgrep of that path and nothing else on the machine.
mkdir -p "$work/bin"
v2bin="$work/bin/multi-server-v2-e2e"
ln -s "$binary" "$v2bin"
ours_running() { pgrep -f "^$v2bin( |$)" >/dev/null; }
no_runtime_file() { [[ -z "$(runtime_file)" ]]; }
v2() { timeout -s KILL 60 "$genkit" "$@" </dev/null 2>&1; }
trace_file_ok() { # trace_file_ok TRACE_ID FLOW: the CLI's telemetry server stored it, finished with success
  local file=".genkit/traces/$1"
  for _ in $(seq 1 50); do [[ -s "$file" ]] && break; sleep 0.1; done
  grep -q "\"traceId\":\"$1\"" "$file" 2>/dev/null && grep -q "\"genkit:name\":\"$2\"" "$file" \
    && grep -q '"genkit:state":"success"' "$file"
}
runtime_args=(--flows-ports 0 --admin-ports 0)

started_ns=$(date +%s%N)
out="$(v2 flow:run multi_server_flow '"Eve"' --non-interactive -- "$v2bin" "${runtime_args[@]}")"; rc=$?
v2_ms=$(( ($(date +%s%N) - started_ns) / 1000000 ))
echo "     (flow:run -- <binary>: ${v2_ms} ms from the CLI's start to its exit)"
[[ $rc == 0 ]] && grep -A1 '^Result:$' <<<"$out" | grep -q '^Hello from multi-server, Eve!$'
check "v2: flow:run multi_server_flow '\"Eve\"' -- <binary> prints the greeting" $?
trace_id="$(grep -o 'Trace ID: [0-9a-f]*' <<<"$out" | awk '{print $3}')"
[[ "$trace_id" =~ ^[0-9a-f]{32}$ ]]; check "v2: the run has a 32-hex trace id from runActionState ($trace_id)" $?
trace_file_ok "$trace_id" multi_server_flow; check "v2: the CLI's telemetry server stored the finished trace" $?
! ours_running && no_runtime_file; check "v2: no runtime process or runtime file is left behind" $?
[[ $failed == 0 ]] || echo "$out" | tail -n 20

out="$(v2 flow:run streaming_greeting '{"name":"Bo","interval_ms":20}' -s --non-interactive -- "$v2bin" "${runtime_args[@]}")"
first=$(grep -n '"index": 0' <<<"$out" | head -n 1 | cut -d: -f1)
last=$(grep -n '"index": 7' <<<"$out" | head -n 1 | cut -d: -f1)
result=$(grep -n '^Result:' <<<"$out" | head -n 1 | cut -d: -f1)
[[ -n "$first" && -n "$last" && -n "$result" && "$first" -lt "$last" && "$last" -lt "$result" ]]
check "v2: flow:run streaming_greeting -s -- <binary> prints the chunks in order, then the result" $?
trace_id="$(grep -o 'Trace ID: [0-9a-f]*' <<<"$out" | awk '{print $3}')"
trace_file_ok "$trace_id" streaming_greeting && ! ours_running
check "v2: the streamed run's trace is stored and the runtime is gone" $?

out="$(v2 flow:run multi_server_flow '5' --non-interactive -- "$v2bin" "${runtime_args[@]}")"; rc=$?
[[ $rc == 0 ]] && grep -q 'Code: 3' <<<"$out" && grep -q 'Schema validation failed' <<<"$out" \
  && grep -q 'expected a string' <<<"$out" && grep -q 'Trace ID: [0-9a-f]\{32\}' <<<"$out"
check "v2: a bad input shows the schema error (code 3, what was expected, its trace)" $?

out="$(v2 flow:batchRun multi_server_flow batch.json --output batch-out.json --label nightly \
  --non-interactive -- "$v2bin" "${runtime_args[@]}")"; rc=$?
[[ $rc == 0 ]] && grep -q '^Hello from multi-server, Ann!$' <<<"$out" && grep -q '^Hello from multi-server, Bob!$' <<<"$out" \
  && [[ "$(grep -c 'Trace ID: [0-9a-f]\{32\}' <<<"$out")" == 2 ]] \
  && grep -q '"output": "Hello from multi-server, Bob!"' batch-out.json
check "v2: flow:batchRun multi_server_flow batch.json -- <binary> runs both inputs, writes --output" $?
batch_trace="$(grep -o 'Trace ID: [0-9a-f]*' <<<"$out" | tail -n 1 | awk '{print $3}')"
trace_file_ok "$batch_trace" multi_server_flow && grep -q '"batchRun":"nightly"' ".genkit/traces/$batch_trace" \
  && ! ours_running && no_runtime_file
check "v2: the batch's traces are stored with their --label, and nothing is left behind" $?

out="$(v2 eval:extractData multi_server_flow --output extracted.json --non-interactive -- "$v2bin" "${runtime_args[@]}")"; rc=$?
[[ $rc == 0 ]] && grep -q "$batch_trace" extracted.json && grep -q 'Hello from multi-server, Bob!' extracted.json && ! ours_running
check "v2: eval:extractData multi_server_flow -- <binary> extracts the flow's stored runs" $?

# genkit start --experimental-reflection-v2: the CLI's own Dev UI backend drives the runtime
# over v2 (its /api/runAction, /api/streamAction, tRPC listActions and cancelAction), while a
# second shell's flow:run finds the same process through v1, which runs beside it.
setsid "$genkit" start --experimental-reflection-v2 --non-interactive -- "$v2bin" "${runtime_args[@]}" \
  >"$work/start-v2.log" 2>&1 &
start_pid=$!
tools=""
for _ in $(seq 1 300); do
  tools="$(grep -o 'Genkit Developer UI: http://localhost:[0-9]*' "$work/start-v2.log" | head -n 1 | awk '{print $4}')"
  [[ -n "$tools" ]] && grep -q 'registered with the genkit CLI' "$work/start-v2.log" && break
  sleep 0.1
done
grep -q 'registered with the genkit CLI' "$work/start-v2.log"
check "v2: genkit start --experimental-reflection-v2 -- <binary>: the runtime registered" $?
listed="$(curl -s -m 10 "$tools/api/listActions")"
grep -q '"/flow/multi_server_flow"' <<<"$listed" && grep -q '"/flow/streaming_greeting"' <<<"$listed"
check "v2: the CLI lists the runtime's actions over v2" $?
ran="$(curl -s -m 10 -D "$work/run-headers" -X POST "$tools/api/runAction" -H 'content-type: application/json' \
  -d '{"key":"/flow/multi_server_flow","input":"Ann"}')"
run_trace="$(grep -i '^x-genkit-trace-id:' "$work/run-headers" | tr -d '\r' | awk '{print $2}')"
grep -q '"result":"Hello from multi-server, Ann!"' <<<"$ran" && grep -q "\"traceId\":\"$run_trace\"" <<<"$ran" \
  && [[ "$run_trace" =~ ^[0-9a-f]{32}$ ]]
check "v2: the CLI's /api/runAction runs a flow over v2, the trace id header sent first" $?
streamed="$(curl -s -m 20 -X POST "$tools/api/streamAction" -H 'content-type: application/json' \
  -d '{"key":"/flow/streaming_greeting","input":{"name":"Bo","interval_ms":10}}')"
[[ "$(grep -c '"index":' <<<"$streamed")" == 8 ]] && tail -n 1 <<<"$streamed" | grep -q '"result":"Hello from multi-server, Bo!'
check "v2: the CLI's /api/streamAction streams eight chunks over v2, then the result" $?
# A run of 16 s, cancelled by its trace id through the CLI.
curl -s -m 30 -D "$work/slow-headers" -X POST "$tools/api/streamAction" -H 'content-type: application/json' \
  -d '{"key":"/flow/streaming_greeting","input":{"name":"Cy","interval_ms":2000}}' >"$work/slow.out" &
slow_curl=$!
slow_trace=""
for _ in $(seq 1 100); do
  slow_trace="$(grep -i '^x-genkit-trace-id:' "$work/slow-headers" 2>/dev/null | tr -d '\r' | awk '{print $2}')"
  [[ -n "$slow_trace" ]] && break; sleep 0.1
done
cancelled="$(curl -s -m 10 -X POST "$tools/api/cancelAction" -H 'content-type: application/json' -d "{\"traceId\":\"$slow_trace\"}")"
wait "$slow_curl"
grep -q 'Action cancelled' <<<"$cancelled" && grep -q 'Action was cancelled' "$work/slow.out"
check "v2: the CLI's cancelAction cancels a run in flight; the run answers CANCELLED" $?
out="$(run multi_server_flow '"Zed"')"
grep -q '^Hello from multi-server, Zed!$' <<<"$out"
check "v2: flow:run from a second shell reaches the same process (through v1, beside v2)" $?
kill -INT -- "-$start_pid"
for _ in $(seq 1 100); do kill -0 "$start_pid" 2>/dev/null || break; sleep 0.1; done
# The CLI may be gone before the runtime has drained (it does not wait for it): up to 15 s.
for _ in $(seq 1 150); do ours_running || break; sleep 0.1; done
! kill -0 "$start_pid" 2>/dev/null && ! ours_running && no_runtime_file
check "v2: Ctrl+C stops genkit start and the runtime; no runtime file is left" $?
start_pid=""
if (( failed > 0 )); then
  echo "--- genkit start --experimental-reflection-v2 log"; tail -n 40 "$work/start-v2.log"
fi
echo "genkit-cli: $passed passed, $failed failed"
(( failed == 0 ))

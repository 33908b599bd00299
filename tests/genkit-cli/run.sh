#!/usr/bin/env bash
# Proof with the real client: Genkit's own CLI (genkit-cli 1.43.0 from npm) discovers the
# multi-server runtime, runs its flows (plain, streamed, bad input), finds the trace in its
# telemetry server, and after Ctrl+C no runtime file is left. Offline: only loopback.
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

# Ctrl+C: SIGINT to the whole group, as the terminal sends it.
kill -INT -- "-$start_pid"
for _ in $(seq 1 100); do kill -0 "$start_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$start_pid" 2>/dev/null; check "Ctrl+C stops genkit start and the runtime" $?
[[ -z "$(runtime_file)" ]]; check "no runtime file is left after Ctrl+C" $?
grep -q 'runtime file removed' "$work/start.log"; check "the runtime removed its own file on the way out" $?
start_pid=""

if (( failed > 0 )); then
  echo "--- genkit start log"; tail -n 40 "$work/start.log"
fi
echo "genkit-cli: $passed passed, $failed failed"
(( failed == 0 ))

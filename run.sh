#!/usr/bin/env bash
# Builds and runs multi-server with the sample's defaults: dev mode on (GENKIT_ENV=dev), flows
# API on the first free port of 3400..3409. Extra arguments go to the binary (try --help).
#
#   ./run.sh              build (release) and run
#   ./run.sh --watch      hot reload: rebuild on every source change, then swap the running
#                         process for the new build without closing the ports
#
# --watch in detail:
# - Needs watchexec (watchexec-cli) and perl (Debian's perl-base, always there); when watchexec
#   is missing, run.sh says so and installs it once with `cargo install --locked watchexec-cli`
#   (a few minutes).
# - Watches crates/, bins/, Cargo.toml and Cargo.lock. Builds the debug profile.
# - Build first, swap after: on a change, `cargo build` runs while the current process keeps
#   serving. A failed build prints the compiler's error and changes nothing: the previous build
#   keeps serving until the next change builds.
# - The listening sockets stay open across restarts: they are opened once, 127.0.0.1:3400
#   (flows), 127.0.0.1:3100 (reflection), 127.0.0.1:4000 (Dev UI), in that order and named, and
#   handed to every process started (LISTEN_FDS, LISTEN_FDNAMES). While one process drains and
#   the next one starts, connections wait in the sockets' backlog: none is refused.
#   MULTI_SERVER_WATCH_SOCKETS="flows=127.0.0.1:3401 reflection=127.0.0.1:3101
#   devui=127.0.0.1:4001" picks others (all three: dev mode is always on here).
# - A restart is one SIGTERM and the usual graceful shutdown, with a short drain deadline
#   (MULTI_SERVER_DRAIN_DEADLINE, 2s here) so a stuck request never holds up a reload; the
#   reflection server starts at once (MULTI_SERVER_REFLECTION_DELAY, 0s here).
# - Ctrl+C (or SIGTERM to run.sh) stops both watchers; the server drains and exits.
# - tests/reload/run.sh proves it: 0 failed, 0 refused requests across two swaps.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo not found; install Rust 1.95 or newer (https://rustup.rs)" >&2
  exit 1
fi

# How --watch works: a socket holder that becomes the runner, and a builder; no connection is
# ever refused.
# - The socket holder (a few lines of Perl: perl-base is part of every Debian system) opens the
#   listening sockets once, with a full backlog, places them at descriptors 3, 4, 5, 6 and execs the
#   runner with LISTEN_FDS=4 and LISTEN_FDNAMES=flows:reflection:devui:admin (systemd's protocol; the
#   binary matches them by name). watchexec's own --socket is not used: in watchexec 2.8 it
#   listens with a backlog of 1 (connections beyond it wait for a SYN retry, a second or more)
#   and does not place several sockets at consecutive descriptors (fd 9, 11, 12), which the
#   protocol requires; systemfd has the same backlog of 1.
# - The runner, `watchexec -r`, holds those descriptors for its whole life and passes them to
#   every process it starts: target/watch/bin/multi-server. When that file changes it sends
#   SIGTERM, waits for the graceful shutdown (short drain deadline), and starts the new file. In
#   between, connections wait in the sockets' backlog.
# - The builder, a second watchexec on the sources, runs `cargo build` on a change while the
#   current process keeps serving; on success it copies the binary to target/watch/stage and
#   renames it into target/watch/bin (atomic: the runner only ever sees a complete file, the
#   running process keeps its own unlinked one). A failed build renames nothing.
# The watchers run in sessions of their own, so a Ctrl+C reaches only this script, which stops
# each of them exactly once (a second signal would make the server exit without draining).
WATCH_HOLDER='
use strict;
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_REUSEADDR SOMAXCONN inet_aton pack_sockaddr_in);
use POSIX ();
my (@names, @socks);
for my $spec (split " ", shift @ARGV) {
  my ($name, $host, $port) = $spec =~ /^(\w+)=([\d.]+):(\d+)$/
    or die "run.sh: bad socket \"$spec\" (want name=host:port)\n";
  socket(my $sock, PF_INET, SOCK_STREAM, 0) or die "run.sh: socket: $!\n";
  setsockopt($sock, SOL_SOCKET, SO_REUSEADDR, 1) or die "run.sh: setsockopt: $!\n";
  bind($sock, pack_sockaddr_in($port, inet_aton($host)))
    or die "run.sh: cannot listen on $host:$port ($name): $!\n";
  listen($sock, SOMAXCONN) or die "run.sh: listen: $!\n";
  push @names, $name;
  push @socks, $sock;
}
# To descriptors 3, 4, 5... (via high ones, not to clobber a socket still to be moved);
# dup2 clears close-on-exec, so they survive the exec.
my @high = map { POSIX::dup2(fileno $socks[$_], 200 + $_) // die "run.sh: dup2: $!\n" } 0 .. $#socks;
close $_ for @socks;
for my $i (0 .. $#high) {
  POSIX::dup2($high[$i], 3 + $i) // die "run.sh: dup2: $!\n";
  POSIX::close($high[$i]);
}
$ENV{LISTEN_FDS} = scalar @high;
$ENV{LISTEN_FDNAMES} = join ":", @names;
delete @ENV{qw(LISTEN_PID LISTEN_FDS_FIRST_FD)};
exec { $ARGV[0] } @ARGV or die "run.sh: cannot run $ARGV[0]: $!\n";
'

watch() {
  if ! command -v watchexec >/dev/null; then
    echo "run.sh: --watch needs watchexec (watchexec-cli) and it is not installed;" \
      "installing it now with 'cargo install --locked watchexec-cli' (once; a few minutes)" >&2
    cargo install --locked watchexec-cli
  fi
  if ! command -v perl >/dev/null; then
    echo "run.sh: --watch needs perl (Debian: perl-base, always there)" >&2
    exit 1
  fi
  local sockets="${MULTI_SERVER_WATCH_SOCKETS:-flows=127.0.0.1:3400 reflection=127.0.0.1:3100 devui=127.0.0.1:4000 admin=127.0.0.1:9900}"

  local build='
    cargo build --bin multi-server &&
      mkdir -p target/watch/stage target/watch/bin &&
      cp target/debug/multi-server target/watch/stage/multi-server &&
      mv -f target/watch/stage/multi-server target/watch/bin/multi-server'
  echo "run.sh: building (debug) before the first start..." >&2
  bash -c "$build"

  local on_change="
    echo 'run.sh: sources changed: building; the running server keeps serving' >&2
    if ${build}; then
      echo 'run.sh: build done: restarting multi-server on the same sockets' >&2
    else
      echo 'run.sh: build failed (see above); the previous build keeps serving' >&2
    fi"

  local builder runner
  setsid watchexec --quiet --postpone --on-busy-update queue --debounce 200ms \
    --project-origin . -w crates -w bins -w Cargo.toml -w Cargo.lock \
    --shell bash -- "$on_change" &
  builder=$!
  # Dev mode must be on (one socket per server); your own variables win over these defaults.
  setsid env GENKIT_ENV=dev \
    MULTI_SERVER_DRAIN_DEADLINE="${MULTI_SERVER_DRAIN_DEADLINE:-2s}" \
    MULTI_SERVER_REFLECTION_DELAY="${MULTI_SERVER_REFLECTION_DELAY:-0s}" \
    perl -e "$WATCH_HOLDER" "$sockets" \
    watchexec --quiet --restart --stop-signal SIGTERM --stop-timeout 15s \
    --no-discover-ignore -W target/watch/bin \
    --shell none -- target/watch/bin/multi-server "$@" &
  runner=$!
  echo "run.sh: watching crates/ bins/ Cargo.toml Cargo.lock; sockets ${sockets};" \
    "Ctrl+C stops (builder pid ${builder}, runner pid ${runner})" >&2

  stop() {
    trap - INT TERM
    kill -TERM "$runner" "$builder" 2>/dev/null || true
    wait "$runner" "$builder" 2>/dev/null || true
  }
  trap 'stop; exit 130' INT
  trap 'stop; exit 143' TERM
  # Either watcher ending (e.g. a port already in use) ends the other one too.
  local status=0
  wait -n "$runner" "$builder" || status=$?
  stop
  exit "$status"
}

if [[ "${1:-}" == "--watch" ]]; then
  shift
  watch "$@"
fi

cargo build --release --bin multi-server
export GENKIT_ENV="${GENKIT_ENV:-dev}"
exec ./target/release/multi-server "$@"

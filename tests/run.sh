#!/usr/bin/env bash
# The test command of the README: installs what the end-to-end tests need when it is missing
# (Debian's chromium and chromium-driver for the Dev UI's browser test, systemd for
# systemd-socket-activate and systemd-analyze, prometheus for the metrics test, haproxy for the
# fleet test), then runs
# every test: `cargo test --workspace --all-features`.
# Extra arguments go to cargo test (e.g. `tests/run.sh -p multi-server --test e2e devui`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if ((${#missing[@]})); then
  echo "tests/run.sh: installing ${missing[*]} with apt-get (needed by the end-to-end tests)" >&2
  as_root=()
  ((EUID == 0)) || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq "${missing[@]}"
fi

exec cargo test --workspace --all-features "$@"

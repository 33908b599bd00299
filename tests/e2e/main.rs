//! End-to-end tests: the real `multi-server` binary (built with `test-faults`), ephemeral
//! ports, real HTTP, real signals. Each test owns its process and kills it on drop.

mod endpoints;
mod ports;
mod shutdown;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_multi-server");

/// Starts the binary with the flows API on an ephemeral port, plus `args`.
fn start(args: &[&str]) -> multi_server_e2e::Process {
    let mut all = vec!["--flows-ports", "0", "--flows-workers", "2"];
    all.extend_from_slice(args);
    multi_server_e2e::Process::start(BIN, &all)
}

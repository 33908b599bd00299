//! Bench-only programs for `bench/run.sh`: bare servers of each framework (no manager, no
//! middleware) as baselines, and `scale`, which starts N managed servers. Nothing here ships.
//!
//! Each bare server takes `--log` to become the peer a user would otherwise write: the same
//! server with its framework's idiomatic request logging, to stderr (the bench sends it to a
//! file), so that the manager's cost with every request logged is compared with what the
//! same logging costs without it.

/// Whether `--log` was given; if so, installs the `tracing` subscriber the peers of the
/// `tracing` frameworks (poem, salvo, axum) log through: `tracing_subscriber::fmt` to stderr,
/// filtered by `RUST_LOG` (default `info`).
pub fn peer_logging() -> bool {
    let log = log_flag();
    if log {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    log
}

/// Whether `--log` was given (the peer, not the bare server).
pub fn log_flag() -> bool {
    std::env::args().any(|a| a == "--log")
}

/// The port: the first argument that is not a flag (0, any free port, if none parses).
pub fn port_arg() -> u16 {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

//! The process's and each server's lifecycle states, and why a process stops.

use std::fmt;

use serde::Serialize;

/// The process's lifecycle: `starting → live → draining → stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Servers are being started.
    Starting,
    /// Every server due to start has started (or failed and was optional).
    Live,
    /// Shutdown was requested: readiness fails, servers drain.
    Draining,
    /// Everything has stopped.
    Stopped,
}

/// One server's lifecycle: `pending → starting → serving → draining → stopped | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Waiting for its start delay.
    Pending,
    /// Binding and running its startup hook.
    Starting,
    /// Accepting requests.
    Serving,
    /// Finishing in-flight requests; no longer accepting.
    Draining,
    /// Stopped cleanly (or never started because the process stopped first).
    Stopped,
    /// Failed to start, or died.
    Failed,
}

/// Why the process is shutting down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ShutdownReason {
    /// A signal (`SIGTERM`, `SIGINT`, `SIGHUP`).
    Signal {
        /// The signal's name.
        signal: &'static str,
    },
    /// A quit endpoint was called.
    Quit {
        /// The server whose endpoint it was.
        server: String,
    },
    /// A required server failed to start or died.
    ServerFailed {
        /// The server.
        server: String,
    },
    /// An in-place upgrade: the successor took over the sockets and is ready.
    Upgraded {
        /// The successor's process id.
        pid: u32,
    },
    /// Code asked for it through [`ManagerHandle::request_shutdown`](crate::ManagerHandle::request_shutdown).
    Requested {
        /// What the caller said.
        why: String,
    },
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownReason::Signal { signal } => write!(f, "{signal} received"),
            ShutdownReason::Quit { server } => write!(f, "quit requested on server '{server}'"),
            ShutdownReason::ServerFailed { server } => write!(f, "server '{server}' failed"),
            ShutdownReason::Upgraded { pid } => write!(f, "upgraded: pid {pid} took over"),
            ShutdownReason::Requested { why } => write!(f, "{why}"),
        }
    }
}

pub(crate) fn state_name(state: ProcessState) -> &'static str {
    match state {
        ProcessState::Starting => "starting",
        ProcessState::Live => "live",
        ProcessState::Draining => "draining",
        ProcessState::Stopped => "stopped",
    }
}

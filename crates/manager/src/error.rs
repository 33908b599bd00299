//! The manager's errors. Each message names the server and, where there is one, the address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::PortSpec;

/// A boxed error from a server or a hook.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every port of the spec was in use.
    #[error("server '{server}': no free port in {host}:{ports}")]
    NoFreePort {
        /// The server's name.
        server: String,
        /// The host it tried to bind.
        host: IpAddr,
        /// The ports it tried.
        ports: PortSpec,
    },
    /// Binding failed for a reason other than a busy port.
    #[error("server '{server}': cannot bind {addr}")]
    Bind {
        /// The server's name.
        server: String,
        /// The address it tried.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An inherited socket (`LISTEN_FDS`) could not be used.
    #[error("server '{server}': inherited socket #{index} is unusable")]
    Inherited {
        /// The server's name.
        server: String,
        /// Its position among the inherited sockets.
        index: usize,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The inherited sockets (`LISTEN_FDS`) do not fit the servers.
    #[error("inherited sockets (LISTEN_FDS) don't match the servers: {detail}")]
    InheritedMismatch {
        /// What does not fit.
        detail: String,
    },
    /// The startup hook returned an error.
    #[error("server '{server}': startup hook failed")]
    StartupHook {
        /// The server's name.
        server: String,
        /// The hook's error.
        #[source]
        source: BoxError,
    },
    /// The shutdown hook returned an error.
    #[error("server '{server}': shutdown hook failed")]
    ShutdownHook {
        /// The server's name.
        server: String,
        /// The hook's error.
        #[source]
        source: BoxError,
    },
    /// A hook did not finish in time.
    #[error("server '{server}': {hook} hook timed out after {timeout:?}")]
    HookTimeout {
        /// The server's name.
        server: String,
        /// `startup` or `shutdown`.
        hook: &'static str,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// The server's serve future returned an error.
    #[error("server '{server}' failed")]
    Serve {
        /// The server's name.
        server: String,
        /// The server's error.
        #[source]
        source: BoxError,
    },
    /// The server stopped on its own while the process was running.
    #[error("server '{server}' stopped unexpectedly")]
    Exited {
        /// The server's name.
        server: String,
    },
    /// The server ignored its shutdown token and was abandoned.
    #[error("server '{server}' did not stop within the drain deadline plus {grace:?}; abandoned")]
    Unresponsive {
        /// The server's name.
        server: String,
        /// The grace it was given after the deadline.
        grace: Duration,
    },
    /// The signal handlers (SIGTERM, SIGINT, SIGHUP) could not be installed: the process
    /// could not be stopped gracefully, so it does not start.
    #[error("cannot install the signal handlers (SIGTERM, SIGINT, SIGHUP)")]
    Signals {
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server's task panicked.
    #[error("server '{server}' panicked: {message}")]
    Panicked {
        /// The server's name.
        server: String,
        /// The panic payload, when it was a string.
        message: String,
    },
}

impl Error {
    /// The name of the server the error is about (empty for process-wide errors).
    pub fn server(&self) -> &str {
        match self {
            Error::InheritedMismatch { .. } | Error::Signals { .. } => "",
            Error::NoFreePort { server, .. }
            | Error::Bind { server, .. }
            | Error::Inherited { server, .. }
            | Error::StartupHook { server, .. }
            | Error::ShutdownHook { server, .. }
            | Error::HookTimeout { server, .. }
            | Error::Serve { server, .. }
            | Error::Exited { server }
            | Error::Unresponsive { server, .. }
            | Error::Panicked { server, .. } => server,
        }
    }

    /// The error and its causes, `error: cause: cause`, as anyhow's `{:#}` prints it: the one
    /// line to show a user.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

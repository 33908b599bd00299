//! Runs several HTTP servers in one process under one lifecycle.
//!
//! The manager binds each server's socket itself (one port, a range, a list, or 0; inherited
//! sockets first), runs its startup hook, hands it the bound listener, and waits for the first
//! reason to stop: a signal, a quit endpoint, or a required server failing. Then it fails
//! readiness at once, waits the optional drain delay, tells every server to stop accepting,
//! gives in-flight requests one drain deadline, runs shutdown hooks in reverse start order,
//! and returns a [`Report`] saying whether the stop was clean.
//!
//! It knows nothing about web frameworks: anything that can serve HTTP on a
//! `std::net::TcpListener` under tokio implements [`Server`] (see `examples/01_hyper.rs` for
//! plain hyper in a few dozen lines). The admin endpoints' data ([`ManagerHandle::health`],
//! [`ManagerHandle::readiness`], [`ManagerHandle::server_info`], [`ManagerHandle::quit`]) comes
//! from here; each framework crate mounts them in its own idiom.
//!
//! It is not a process supervisor: it does not restart a server that died. A required
//! server's failure stops the process, so the supervisor above (systemd, Kubernetes) can.
//!
//! ```
//! use std::sync::Arc;
//! use manager::{BoxFuture, ServeContext, Server, ServerConfig, ServerManager, ShutdownReason};
//!
//! /// A "server" that accepts nothing and stops when told to.
//! struct Idle;
//!
//! impl Server for Idle {
//!     fn framework(&self) -> &'static str { "none" }
//!     fn serve(self: Arc<Self>, _listener: std::net::TcpListener, ctx: ServeContext)
//!         -> BoxFuture<'static, anyhow::Result<()>> {
//!         Box::pin(async move { ctx.shutdown().cancelled().await; Ok(()) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut manager = ServerManager::new().handle_signals(false);
//! manager.add_server(ServerConfig::new("idle"), Idle);
//! let handle = manager.handle();
//! let run = tokio::spawn(manager.run());
//! handle.wait_live().await;
//! assert!(handle.readiness().ready);
//! handle.request_shutdown(ShutdownReason::Requested { why: "done".into() });
//! let report = run.await.unwrap();
//! assert_eq!(report.outcome(), manager::Outcome::Clean);
//! # }
//! ```

pub mod admin;
mod error;
mod inherited;
mod manager;
mod port;
mod requests;
mod server;
mod signals;

pub use error::{BoxError, Error};
pub use inherited::InheritedSockets;
pub use manager::{
    ManagerHandle, Outcome, ProcessState, Report, ServerManager, ServerState, ShutdownReason,
    error_chain,
};
pub use port::{ParsePortSpecError, PortSpec, bind};
pub use requests::{GuardCell, LatencyHistogram, RequestEvent, RequestGuard, RequestTracker};
pub use server::{BoxFuture, ServeContext, Server, ServerConfig};
#[cfg(test)]
mod tests;

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
//! plain hyper). The admin endpoints' data ([`ManagerHandle::health`],
//! [`ManagerHandle::readiness`], [`ManagerHandle::server_info`]) comes from here; the
//! `multi-server-edge` crate serves it, with every other HTTP behaviour the servers share.
//!
//! Besides servers it runs clients ([`Client`], [`ServerManager::add_client`]): something that
//! binds nothing but dials a peer (the Genkit tools' WebSocket), shown, counted and drained
//! like a server.
//!
//! Under systemd (`NOTIFY_SOCKET` set, a `Type=notify` unit) it reports readiness, each
//! server's state, the stop and a watchdog heartbeat (`sd_notify`); otherwise it sends nothing.
//!
//! It upgrades in place when the program allows it ([`ServerManager::upgrade_command`];
//! `SIGUSR2` or [`ManagerHandle::start_upgrade`]): the new binary starts with every listening
//! socket, and this process stops accepting and drains once the new one is ready (see
//! [`upgrade`]).
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
//!         Box::pin(async move { ctx.stop_accepting().cancelled().await; Ok(()) })
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
mod argv;
mod client;
pub mod clock;
mod error;
mod handle;
mod inherited;
mod manager;
pub mod metrics;
pub mod port;
mod report;
pub mod requests;
mod server;
mod shared;
mod signals;
mod state;
mod supervise;
mod systemd;
pub mod upgrade;

pub use client::{Client, ClientContext};
pub use error::Error;
pub use handle::ManagerHandle;
pub use inherited::InheritedSockets;
pub use manager::ServerManager;
pub use port::PortSpec;
pub use report::{Outcome, Report};
pub use server::{BoxFuture, ServeContext, Server, ServerConfig};
pub use state::{ProcessState, ServerState, ShutdownReason};
#[cfg(test)]
mod tests;

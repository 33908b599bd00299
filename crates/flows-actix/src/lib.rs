//! The public flows API of multi-server on actix-web: an implementation of the manager's
//! [`Server`](manager::Server) trait.
//!
//! Routes: `GET /greet`, `GET /flow/run` (the original sample's fixed answer), `POST
//! /flow/<name>` (runs a flow of the shared [`Registry`](::flows::Registry): JSON input in, `{"result":
//! ...}` out; `Accept: text/event-stream` streams Server-Sent Events, `?stream=true` NDJSON),
//! and the admin endpoints every managed server has
//! (`GET /__healthz`, `GET /__readyz`, `GET /__serverz`, `POST /__quitquitquitz`). Every
//! request goes through one middleware that counts it for the manager, logs one `tracing`
//! line (server, request id, method, path, status, latency), turns a handler panic into a JSON
//! 500, and asks keep-alive clients to close once the server drains. Errors are JSON:
//! `{"error": "...", "status": N}`.
//!
//! actix-web runs on its own worker threads, started from inside the manager's tokio runtime;
//! [`FlowsApi::workers`] sets how many.
//!
//! ```no_run
//! use flows_actix::FlowsApi;
//! use manager::{ServerConfig, ServerManager};
//!
//! # #[tokio::main] async fn main() {
//! let registry = flows::Registry::new();
//! let mut manager = ServerManager::new();
//! manager.add_server(
//!     ServerConfig::new("flows").ports("3400..3410".parse().unwrap()),
//!     FlowsApi::new(registry).workers(2),
//! );
//! let report = manager.run().await; // until SIGTERM
//! # let _ = report;
//! # }
//! ```
//!
//! # Features
//! - `test-routes`: `GET /__test/slow?ms=N`, `GET /__test/panic`, and `POST /__test/crash`
//!   (the server's serve future then returns an error, as a server that dies), for
//!   end-to-end tests.

mod flows;
mod middleware;
mod routes;
mod server;

pub use server::FlowsApi;

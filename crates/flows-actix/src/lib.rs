//! The public flows API of multi-server on actix-web: glue between actix-web and the shared
//! edge (`multi-server-edge`), plus the flows routes; an implementation of the manager's
//! [`Server`](manager::Server) trait.
//!
//! Routes: `GET /greet`, `GET /flow/run` (the original sample's fixed answer), and `POST
//! /flow/<name>` (runs a flow of the shared [`Registry`](::flows::Registry): JSON input in,
//! `{"result": ...}` out; `Accept: text/event-stream` streams Server-Sent Events,
//! `?stream=true` NDJSON).
//!
//! Everything the servers share is the edge's, reached through this crate's one middleware:
//! the admin endpoints (`GET /__healthz`, `GET /__readyz`, `GET /__serverz`,
//! `POST /__quitquitquitz`), the request scope (counted for the manager, one `tracing` line
//! per request, `x-request-id` on every answer, `Connection: close` once the server drains,
//! a streamed answer in flight until its last byte), handler panics answered with a JSON
//! 500, and JSON errors `{"error": "...", "status": N}`, also for the errors actix answers
//! itself. Request bodies are read within the [`Limits`](edge::Limits) given to
//! [`FlowsApi::limits`]; the request-head deadline is actix's client request timeout.
//! actix-web is still on `http` 0.2, so the middleware converts at the edge.
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
//! - `test-routes`: the module `test_routes`, for end-to-end tests: `GET /__test/slow?ms=N`,
//!   `GET /__test/panic` and `POST /__test/echo` (mounted with [`FlowsApi::routes`]), and
//!   `Crashing`, a server that dies on `POST /__test/crash`.

mod flows;
mod middleware;
mod routes;
mod server;
#[cfg(feature = "test-routes")]
pub mod test_routes;

pub use server::FlowsApi;

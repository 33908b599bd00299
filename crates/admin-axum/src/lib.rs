//! The operations listener of multi-server on axum, in the spirit of Envoy's admin port: an
//! implementation of the manager's [`Server`](manager::Server) trait that serves the admin
//! endpoints for the whole process on a port of its own (loopback by default), where the
//! public API's port need not be exposed to probes and operators. Later operations features
//! (metrics) live here.
//!
//! It is glue plus its own routes: the edge (`multi-server-edge`) answers `GET /__healthz`,
//! `GET /__readyz`, `GET /__serverz` and `POST /__quitquitquitz`, counts and logs every
//! request, and gives every error the same JSON shape; [`edge::hyper::serve`] runs the
//! connections. Its own route is `GET /`, an index of the endpoints.
//!
//! ```no_run
//! use admin_axum::AdminApi;
//! use manager::{ServerConfig, ServerManager};
//!
//! # #[tokio::main] async fn main() {
//! let mut manager = ServerManager::new();
//! manager.add_server(
//!     ServerConfig::new("admin").ports("9900..9910".parse().unwrap()),
//!     AdminApi::new(),
//! );
//! let _report = manager.run().await; // until SIGTERM
//! # }
//! ```
//!
//! # Features
//! - `test-routes`: [`test_routes`], the routes the end-to-end tests need.

mod server;
#[cfg(feature = "test-routes")]
pub mod test_routes;

pub use server::AdminApi;

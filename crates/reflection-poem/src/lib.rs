//! The Genkit Reflection API v1 on poem: an implementation of the manager's
//! [`Server`](manager::Server) trait that Genkit's own `genkit` CLI (1.43) discovers and drives.
//!
//! In dev mode the process runs this server on loopback. Once its socket listens it writes a
//! discovery file to `<root>/.genkit/runtimes/<pid>-<port>-<epoch_ms>.json`, where `<root>` is
//! the folder the CLI will look in (the nearest ancestor of the working directory holding a
//! `package.json`, `go.mod`, `pyproject.toml`... — `Cargo.toml` is not one of the CLI's
//! markers), and removes it on every orderly exit.
//!
//! Endpoints (all JSON, all with `x-genkit-version`, CORS open to any origin as Genkit's own
//! runtimes do): `GET /api/__health`, `GET /api/actions`, `POST /api/runAction` (with
//! `?stream=true`: NDJSON chunks, then the final object; trace headers are sent before the
//! result), `POST /api/cancelAction`, `POST /api/notify`, `GET /api/values`, `GET /api/envs`,
//! `GET|POST /api/__quitquitquit`, plus the admin endpoints every managed server has.
//!
//! ```no_run
//! use reflection_poem::ReflectionApi;
//! use manager::{ServerConfig, ServerManager};
//!
//! # #[tokio::main] async fn main() {
//! let registry = flows::Registry::new();
//! let mut manager = ServerManager::new();
//! manager.add_server(
//!     ServerConfig::new("reflection").ports("3100..3110".parse().unwrap()),
//!     ReflectionApi::new(registry),
//! );
//! let _report = manager.run().await; // until SIGTERM
//! # }
//! ```

mod api;
mod discovery;
mod server;

pub use discovery::{RuntimeFile, discovery_root};
pub use server::ReflectionApi;

/// The Reflection API version this runtime speaks (the CLI exits on a higher one).
pub const REFLECTION_API_SPEC_VERSION: u32 = 1;

/// What this runtime reports as its Genkit version (`x-genkit-version`, discovery file).
pub const GENKIT_VERSION: &str = concat!("rust/", env!("CARGO_PKG_VERSION"));

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
//! # Limits
//! - The `POST` endpoints that read JSON (`runAction`, `cancelAction`, `notify`) accept at
//!   most [`BODY_LIMIT`] (1 MiB): a larger body is a 413 with a JSON error, as is a declared
//!   `Content-Length` over it (answered before any of the body is read). A non-empty body
//!   whose `Content-Type` is given and is not `application/json` is a 415; malformed JSON,
//!   wrong types and an empty body are 400s; all with a JSON error.
//! - A client must send each request head within [`HEAD_TIMEOUT`] (10 s) of starting it (on a
//!   new connection: of connecting), or its connection is dropped: poem gives hyper no timer,
//!   so hyper's own header-read timeout never fires, and a client that never finishes its
//!   headers (slowloris) would otherwise hold a connection forever.
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
mod head_deadline;
mod server;

pub use api::BODY_LIMIT;
pub use discovery::{RuntimeFile, discovery_root};
pub use head_deadline::HEAD_TIMEOUT;
pub use server::ReflectionApi;

/// The Reflection API version this runtime speaks (the CLI exits on a higher one).
pub const REFLECTION_API_SPEC_VERSION: u32 = 1;

/// What this runtime reports as its Genkit version (`x-genkit-version`, discovery file).
pub const GENKIT_VERSION: &str = concat!("rust/", env!("CARGO_PKG_VERSION"));

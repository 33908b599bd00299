//! The Genkit Reflection API v1 on poem: an implementation of the manager's
//! [`Server`](manager::Server) trait that Genkit's own `genkit` CLI (1.43) discovers and drives.
//!
//! In dev mode the process runs this server on loopback. Once its socket listens it writes a
//! discovery file to `<root>/.genkit/runtimes/<pid>-<port>-<epoch_ms>.json`, where `<root>` is
//! the folder the CLI will look in (the nearest ancestor of the working directory holding a
//! `package.json`, `go.mod`, `pyproject.toml`... — `Cargo.toml` is not one of the CLI's
//! markers), and removes it on every orderly exit.
//!
//! It is glue plus its own routes: the edge (`multi-server-edge`) does what every managed
//! server shares. For each request, first thing, the crate's one middleware asks the edge,
//! which counts and logs it, stamps `x-request-id` (and `Connection: close` once the server
//! drains) on the answer, refuses a `Host` that is not a loopback name (403, on every path:
//! against DNS rebinding; the CLI sends `localhost:PORT` or `127.0.0.1:PORT`), and answers the
//! admin endpoints (`GET /__healthz`, `GET /__readyz`, `GET /__serverz`,
//! `POST /__quitquitquitz`). A handler panic is a 500 for that request only, and every error
//! has the edge's JSON shape.
//!
//! It answers only loopback `Host` names and refuses any request from a web page that is not
//! one of this process's own (`Origin`); there is no CORS: the genkit CLI is not a browser.
//! `POST /api/notify` points trace export at a loopback telemetry server only, unless the
//! operator allows any host with `MULTI_SERVER_TELEMETRY_ANY_HOST=1`.
//!
//! Its own routes (all JSON, all with `x-genkit-version`): `GET /api/__health`, `GET /api/actions`, `POST /api/runAction` (with
//! `?stream=true`: NDJSON chunks, then the final object; trace headers are sent before the
//! result, and the request stays in flight until the last byte), `POST /api/cancelAction`,
//! `POST /api/notify`, `GET /api/values`, `GET /api/envs`, `GET|POST /api/__quitquitquit`
//! (the same graceful shutdown as the edge's quit, under the same rule: a loopback peer, never
//! cross-site).
//!
//! # Limits
//! One [`edge::Limits`], set with [`ReflectionApi::limits`] (default [`Limits::default`]:
//! 1 MiB bodies, 10 s for a request head, 10 s for a body):
//! - The `POST` endpoints that read JSON (`runAction`, `cancelAction`, `notify`) read their
//!   body with [`edge::read_body`]: a body over the limit is a 413 (a declared
//!   `Content-Length` over it is answered before any of the body is read), one slower than
//!   the body deadline a 408. A non-empty body whose `Content-Type` is given and is not
//!   `application/json` is a 415; malformed JSON, wrong types and an empty body are 400s
//!   (`{"error": "..."}`, the shape the genkit CLI prints).
//! - A client must send each request head within the head deadline of starting it (on a new
//!   connection: of connecting), or its connection is dropped, and a keep-alive connection
//!   idle that long is closed: poem gives hyper no timer, so each accepted connection is
//!   wrapped in an [`edge::HeadDeadline`]. At most [`edge::Limits::connections`] are open.
//!
//! [`Limits::default`]: edge::Limits::default
//!
//! # Features
//! - `test-routes`: [`test_routes`], the routes the end-to-end tests need, mounted with
//!   [`ReflectionApi::with_test_routes`].
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
#[cfg(feature = "test-routes")]
pub mod test_routes;

pub use discovery::{RuntimeFile, discovery_root};
pub use server::ReflectionApi;

/// The Reflection API version this runtime speaks (the CLI exits on a higher one).
pub use flows::REFLECTION_API_SPEC_VERSION;

/// What this runtime reports as its Genkit version (`x-genkit-version`, discovery file).
pub use flows::GENKIT_VERSION;

//! The Developer UI of multi-server on salvo: an implementation of the manager's
//! [`Server`](manager::Server) trait that shows every server of the process, runs flows and
//! reads their traces, live.
//!
//! This crate is glue plus the Developer UI's own routes: everything every managed server
//! shares (admin endpoints, request ids and logging, `Connection: close` while draining, JSON
//! errors, panics, limits, the loopback-only `Host` and change rules) is the
//! `multi-server-edge` crate's, which its one middleware calls first for every request.
//!
//! One page, served from inside the binary: its HTML, CSS and script are embedded at compile
//! time (no CDN, no npm build, no network). The page is fed by a JSON API under `/api/` and one
//! Server-Sent Events stream; everything it shows is read in-process from the
//! [`ManagerHandle`](manager::ManagerHandle) and the [`flows::Registry`]. It shows:
//! - every server: name, framework, address (a link), state, uptime, requests served, errors,
//!   latency p50/p99, and the process's own state and readiness, with controls to fail or
//!   restore readiness (as Envoy's `/healthcheck/fail`) and to quit (after a confirmation);
//! - the flows, their input and output schemas, a run form prefilled with a valid example
//!   built from the input schema, streamed chunks as they arrive, the result or the error,
//!   and a cancel button;
//! - recent runs and their traces: spans on a timeline with durations, input, output, error;
//! - a live tail of the request log of every server.
//!
//! It is meant for a developer's machine: the binary adds it in dev mode only, on loopback.
//! It has no authentication; instead (the edge's `loopback_only` policy), changes (every
//! `POST`) are accepted from loopback peers only and never cross-site (an `Origin` that is not
//! the page itself, or `Sec-Fetch-Site: cross-site`), and every path, the admin endpoints
//! included, answers only under a loopback `Host` name (so another site cannot drive or read
//! them).
//!
//! # API
//!
//! Errors are JSON, `{"error": "...", "status": N}`; bad input is a 4xx, never a 5xx.
//!
//! | Method and path | Answer |
//! | --- | --- |
//! | `GET /` | The page (`/assets/app.js`, `/assets/app.css` next to it). |
//! | `GET /api/servers` | `{"process": <`/__serverz` data>, "readiness": <`/__readyz` data>, "self": "<this server's name>"}` |
//! | `GET /api/flows` | `{"flows": [{key, name, description, inputSchema, outputSchema, example}]}`; `example` is a valid input built from `inputSchema`. |
//! | `POST /api/flows/<name>/run` | Body `{"input": <JSON>}`. Streams NDJSON: `{"type":"start","traceId"}`, then `{"type":"chunk","chunk"}` per chunk, then `{"type":"result","result","traceId"}` or `{"type":"error","error":{message,code,status},"traceId"}`. Input that does not fit the schema: 400 `{"error": "Schema validation failed...", "code": "INVALID_ARGUMENT", "traceId"}`; unknown flow: 404; a body that is not `{"input": ...}`: 400. Closing the connection cancels the run. |
//! | `POST /api/runs/<traceId>/cancel` | `{"cancelled": true, "traceId"}`; 404 when no run with that id is going on. |
//! | `GET /api/traces` | `{"traces": [TraceData...]}`, newest first (Genkit's trace shape). |
//! | `GET /api/traces/<traceId>` | One `TraceData`; 404 when not among the recent ones. |
//! | `GET /api/history[?since=<ms>]` | `{"interval_ms": 1000, "capacity": 300, "samples": [{"at_ms", "servers": [{"name", "rps", "in_flight", "p50_ms", "p99_ms"}], "flows": [{"name", "runs_per_s", "errors_per_s", "runs", "errors"}]}]}`: the charts' last five minutes, one sample a second (p50/p99 over that second, from the manager's duration histograms), after `since`. |
//! | `GET /api/events` | Server-Sent Events: `servers` (as `GET /api/servers`, at once and every second), `request` (each finished request of every server: server, id, method, path, status or aborted, latency_ms, at_ms), `trace` (each update of a run: its `TraceData` now), `lagged`. Ends when this server drains. |
//! | `POST /api/readiness/fail` | Forces the process's readiness to fail (`/__readyz` answers 503 on every server); answers the readiness. |
//! | `POST /api/readiness/ok` | Lets readiness follow the servers again; answers the readiness. |
//! | `POST /api/quit` | Graceful shutdown of the whole process; `{"status": "OK"}`. |
//! | `GET /__healthz`, `GET /__readyz`, `GET /__serverz`, `POST /__quitquitquitz` | The admin endpoints every managed server has (answered by the edge). |
//!
//! # Limits
//! The [`edge::Limits`] given to [`DevUi::limits`] (default [`edge::Limits::default`]):
//! - `POST /api/flows/<name>/run` reads its body with the edge's `read_body`: larger than
//!   `body_bytes` (1 MiB) is a 413, slower than `body_timeout` a 408, both JSON errors. A
//!   non-empty body whose `Content-Type` is given and is not `application/json` is a 415. The
//!   other `POST` endpoints take no body and ignore one.
//! - A client must send each request head within `head_timeout` (salvo's fuse
//!   `http1_header_timeout`; salvo's own default is 30 s), or its connection is dropped
//!   (slowloris); the same limit closes a keep-alive connection idle that long.
//!
//! Every request goes through one middleware: the edge begins it (counted and logged once,
//! `x-request-id`, `Connection: close` once the server drains, refusals and admin endpoints
//! answered), a handler panic is a JSON 500, salvo's bodiless 404/405 get the JSON error body,
//! and a streamed answer (a flow run) stays in flight until its last byte; the event stream
//! counts as answered once its head goes out, so an open page never holds up a drain.
//!
//! # Features
//! - `test-routes`: the `test_routes` module (`GET /__test/slow?ms=N`, `GET /__test/panic`,
//!   `POST /__test/echo`), added with `DevUi::new(..).routes(devui_salvo::test_routes::mount)`.
//!
//! ```no_run
//! use devui_salvo::DevUi;
//! use manager::{ServerConfig, ServerManager};
//!
//! # #[tokio::main] async fn main() {
//! let registry = flows::Registry::new();
//! let mut manager = ServerManager::new();
//! manager.add_server(
//!     ServerConfig::new("devui").ports("4000..4010".parse().unwrap()),
//!     DevUi::new(registry),
//! );
//! let _report = manager.run().await; // until SIGTERM; open http://127.0.0.1:4000
//! # }
//! ```

mod api;
mod events;
mod example;
mod history;
mod server;
#[cfg(feature = "test-routes")]
pub mod test_routes;

pub use example::example_from_schema;
pub use server::DevUi;

//! The Genkit flows registry shared by every server in the process.
//!
//! A flow is an async Rust function with a typed input and output. [`Registry::define_flow`]
//! registers it under the action key `/flow/<name>`, with draft-07 JSON Schemas derived from
//! the types (`schemars`), which is what Genkit's tools show and check against. Any server
//! (the reflection API, the flows API, the Dev UI) then starts runs by key with
//! [`Registry::start`] and gets a [`FlowRun`]: the trace id at once, streamed chunks while the
//! flow runs, and finally the output or a [`FlowError`] shaped like Genkit's `Status`.
//!
//! - **Input checking**: input that does not deserialize into the flow's input type is
//!   `INVALID_ARGUMENT` (code 3), with a message naming where and what the problem is.
//! - **Streaming**: [`FlowContext::send_chunk`] over a bounded channel (backpressure).
//! - **Cancellation**: [`Registry::cancel`] by trace id, or dropping the [`FlowRun`], ends the
//!   run promptly with `CANCELLED`, even if the flow never checks: its future is dropped.
//! - **Panics** in a flow become `INTERNAL` (code 13) with the panic message.
//! - **Traces**: every run records Genkit's `TraceData` (a root span, one span per
//!   [`FlowContext::run`] step); the last [`TRACE_HISTORY`] stay in memory, every change is
//!   broadcast ([`Registry::subscribe_traces`]; a run's changes during its first poll as one,
//!   when that poll ends), and when a telemetry server is known
//!   (`GENKIT_TELEMETRY_SERVER`, or [`Registry::set_telemetry_server`] from `/api/notify`) each
//!   state is posted to `<url>/api/traces` by a background task. Export never slows a flow
//!   down: when the server is slow or gone, traces are dropped and counted.
//! - **Memory budgets**: each recorded value is cut to [`TRACE_VALUE_BYTES`] (with a
//!   `…[truncated N bytes]` marker), each run's record to [`TRACE_RUN_BYTES`] (later steps run
//!   but are only counted, in [`STEPS_NOT_RECORDED`]), the stored traces to
//!   [`TRACE_STORE_BYTES`] in all (oldest evicted), and the export queue to
//!   [`TELEMETRY_QUEUE_BYTES`] (a newer state of a trace replaces its queued older one; beyond
//!   the budget the oldest are dropped and counted).
//!
//! It serves no HTTP itself and knows no web framework; the servers wrap it.
//! A run's first poll happens inside [`Registry::start`], in the context of the tokio runtime
//! the registry was created in (else the caller's): a flow that finishes without waiting costs
//! no task and no thread hop. One that waits goes on as a task on that runtime. So a flow's
//! code up to its first wait runs on the caller's thread, as any code of the caller would:
//! blocking work belongs in `tokio::task::spawn_blocking` (`block_in_place` panics there when
//! the caller is a current-thread runtime, as actix's workers are).
//!
//! ```
//! use flows::{FlowContext, FlowError, Registry, RunOptions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! registry.define_flow("greet", "Says hello.", |name: String, ctx: FlowContext| async move {
//!     let greeting = ctx
//!         .run("compose", async { Ok::<_, FlowError>(format!("Hello, {name}!")) })
//!         .await?;
//!     Ok::<_, FlowError>(greeting)
//! });
//!
//! let run = registry
//!     .start("/flow/greet", serde_json::json!("Alice"), RunOptions::default())
//!     .unwrap();
//! let trace_id = run.trace_id.clone();
//! assert_eq!(run.result().await.unwrap(), "Hello, Alice!");
//!
//! let trace = registry.trace(&trace_id).unwrap();
//! assert_eq!(trace.spans.len(), 2); // the flow and its "compose" step
//!
//! // Input that does not fit the type is INVALID_ARGUMENT, and still has a trace.
//! let run = registry.start("/flow/greet", serde_json::json!(42), RunOptions::default()).unwrap();
//! let error = run.result().await.unwrap_err();
//! assert_eq!(error.code, flows::StatusCode::InvalidArgument);
//! assert!(error.trace_id.is_some());
//! # }
//! ```

mod error;
mod record;
mod registry;
mod run;
mod stats;
mod telemetry;
mod trace;

pub use error::{FlowError, StatusCode};
pub use record::STEPS_NOT_RECORDED;
pub use registry::{ActionDesc, Registry, RunOptions, TRACE_HISTORY};
pub use run::{FlowContext, FlowRun};
pub use stats::{FLOW_DURATION_BUCKETS, FlowStats};
pub use telemetry::TELEMETRY_QUEUE_BYTES;
pub use trace::{
    InstrumentationLibrary, SpanData, SpanStatus, TRACE_RUN_BYTES, TRACE_STORE_BYTES,
    TRACE_VALUE_BYTES, TraceData,
};

/// The Reflection API version the runtime reports (v1's `/api/notify` and discovery file, v2's
/// `register`): Genkit's tools exit on a higher one; the v2 CLI does not check it.
pub const REFLECTION_API_SPEC_VERSION: u32 = 1;

/// What this runtime reports to Genkit's tools as its Genkit version (`<language>/<version>`,
/// as Genkit's own runtimes do).
pub const GENKIT_VERSION: &str = concat!("rust/", env!("CARGO_PKG_VERSION"));

/// The `schemars` this crate derives schemas with, so flow input and output types can derive
/// `JsonSchema` from the same version.
pub use schemars;

#[cfg(test)]
mod tests;

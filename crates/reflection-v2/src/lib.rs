//! The Genkit Reflection API v2: the runtime's side, a WebSocket client the manager runs.
//!
//! In v2 the genkit CLI listens and the runtime dials out. Every genkit-cli 1.43 command that
//! starts the program itself (`genkit flow:run NAME DATA -- <cmd>`, `flow:batchRun`,
//! `eval:flow`, `genkit start --experimental-reflection-v2 -- <cmd>`) sets
//! `GENKIT_REFLECTION_V2_SERVER=ws://localhost:<port>` for the program and waits up to 30 s for
//! it to register. [`ReflectionV2`] is a [`manager::Client`]: it dials that URL, sends
//! `register`, answers the CLI's calls from the same [`flows::Registry`] the v1 server and the
//! Developer UI use, and, when the connection is lost, dials again with backoff and registers
//! again under the same id, until the process stops.
//!
//! JSON-RPC 2.0, one object per message, as the CLI's `manager-v2.ts` speaks it (see
//! `docs/genkit-reflection-v2.md`):
//! - `listActions` → `{"actions": {key: action}}`, each action as v1's `GET /api/actions`;
//! - `listValues {type}` → `{"values": {}}` (this runtime registers no values);
//! - `runAction {key, input, context, telemetryLabels, stream}`: first a `runActionState`
//!   notification with the trace id, then (with `stream`) each chunk as a `streamChunk`
//!   notification, then the answer `{"result", "telemetry": {"traceId"}}`. A run that fails
//!   answers a JSON-RPC error whose `data` is the Genkit `Status`
//!   (`{"code": 3, "message", "details": {"traceId"}}`), which the CLI prints;
//! - `cancelAction {traceId}` → `{"message": "Action cancelled"}`, and the run answers
//!   `CANCELLED`;
//! - notifications `configure {telemetryServerUrl}` (adopted under the same loopback rule as
//!   v1's `/api/notify`), `sendInputStreamChunk` and `endInputStream` (bidi input streams are
//!   not supported: a `runAction` with `streamInput` is refused with `UNIMPLEMENTED`).
//!
//! Bad input is answered, never fatal: invalid JSON (-32700), a batch or a non-request
//! (-32600), an unknown method (-32601), bad params (-32602, naming the field), an unknown
//! action (-32000 with `NOT_FOUND`), a message over [`ReflectionV2::max_message_bytes`]
//! (-32600, answered under its id; one over [`HARD_MESSAGE_BYTES`], the CLI's own limit,
//! closes the connection, which is then dialed again). At most [`MAX_RUNS_IN_FLIGHT`] runs go at once per connection
//! (`RESOURCE_EXHAUSTED` beyond). A CLI that stops reading for [`SEND_TIMEOUT`] is dropped; a
//! CLI that goes away cancels every run it started; one that never answers `register` is
//! still served, and it never holds up the other servers.
//!
//! A process left behind by the CLI that started it (its parent gone, and the CLI not
//! reachable) stops itself, cleanly. At the stop, new runs are refused (`UNAVAILABLE`), runs in flight finish within the drain
//! deadline (past it they answer `UNAVAILABLE` and count as cut), calls already on their way
//! are still answered, and the connection is closed.
//!
//! ```no_run
//! use manager::{ServerConfig, ServerManager};
//! use reflection_v2::ReflectionV2;
//!
//! # #[tokio::main] async fn main() {
//! let registry = flows::Registry::new();
//! let target = std::env::var("GENKIT_REFLECTION_V2_SERVER").unwrap().parse().unwrap();
//! let mut manager = ServerManager::new();
//! manager.add_client(
//!     ServerConfig::new("reflection-v2").optional(),
//!     ReflectionV2::new(registry, target),
//! );
//! let _report = manager.run().await; // until SIGTERM
//! # }
//! ```

mod connection;
mod rpc;
mod target;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use flows::Registry;
use manager::{BoxFuture, Client, ClientContext};

pub use target::Target;

/// Runs in flight at once on one connection; one more is refused with `RESOURCE_EXHAUSTED`.
pub const MAX_RUNS_IN_FLIGHT: usize = 64;

/// How long one message may take to leave; a CLI that reads nothing for that long is dropped
/// (and dialed again), so a stalled peer holds neither memory nor a run.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message read at all (the genkit CLI's own `maxPayload`, 100 MiB); one over
/// [`ReflectionV2::max_message_bytes`] but within this is refused under its id.
pub const HARD_MESSAGE_BYTES: usize = 100 << 20;

/// The v2 client. See the crate docs.
#[derive(Debug, Clone)]
#[must_use = "a client does nothing until it is added to a ServerManager"]
pub struct ReflectionV2 {
    pub(crate) registry: Arc<Registry>,
    pub(crate) target: Target,
    pub(crate) name: String,
    pub(crate) runtime_id: String,
    pub(crate) max_message_bytes: usize,
    /// Messages up to this size are read (and, over `max_message_bytes`, refused under their
    /// id); a bigger one closes the connection. The CLI's own limit for what it receives, so
    /// that nothing it may send goes unanswered (it waits for ever on a lost `runAction`).
    pub(crate) hard_message_bytes: usize,
    /// The process that started this one, as it was when the client was made. The genkit CLI
    /// that starts a runtime (`flow:run ... -- <cmd>`) does not always stop it: killed, or
    /// ended by a closed stdout, it leaves it behind, dialing for ever. Orphaned and unable to
    /// reach the CLI, the client stops the process.
    pub(crate) parent: u32,
}

impl ReflectionV2 {
    /// A client for the flows of `registry` that dials `target`; its runtime id is the
    /// process id (as Genkit's JS runtime does), and messages are limited to 1 MiB.
    pub fn new(registry: Arc<Registry>, target: Target) -> Self {
        ReflectionV2 {
            registry,
            target,
            name: String::from("multi-server"),
            runtime_id: std::process::id().to_string(),
            max_message_bytes: 1 << 20,
            hard_message_bytes: HARD_MESSAGE_BYTES,
            parent: std::os::unix::process::parent_id(),
        }
    }

    /// The runtime's name in `register` (the CLI shows it).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The largest message taken from the CLI, in bytes (a `runAction`'s input is inside
    /// one): the v1 server's body limit is the natural choice.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1024);
        self
    }
}

impl Client for ReflectionV2 {
    fn framework(&self) -> &'static str {
        "tokio-tungstenite"
    }

    fn dials(&self) -> String {
        self.target.to_string()
    }

    fn run(self: Arc<Self>, ctx: ClientContext) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(connection::run(self, ctx))
    }
}

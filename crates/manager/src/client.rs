//! The client trait: something the manager runs beside its servers that listens on nothing but
//! dials a peer (the Genkit tools' WebSocket, say), and the context it is handed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::requests::{RequestGuard, RequestTracker};
use crate::{BoxFuture, ManagerHandle};

/// One connection the manager keeps to a peer that listens elsewhere.
///
/// The manager binds nothing for it. It calls [`run`](Client::run) once, after the config's
/// start delay, and the client dials, serves what the peer asks, and dials again when the
/// connection is lost, for as long as the process lives. It shows in `/__serverz` beside the
/// servers, with the URL it dials and what it last said of itself
/// ([`ClientContext::set_status`]); its calls count as requests.
///
/// # Contract of `run`
/// 1. until [`ClientContext::stopping`] fires, keep (re)connecting; a peer that is gone or
///    never answers is not a failure of the process;
/// 2. when it fires, take no new calls, finish those in flight within
///    [`ClientContext::drain_deadline`], close the connection and return.
///
/// Returning before the stop, `Ok` or `Err`, means the client died: a required one then brings
/// the process down, like a server.
pub trait Client: Send + Sync + 'static {
    /// The library it speaks through, shown in `/__serverz` (e.g. `"tokio-tungstenite"`).
    fn framework(&self) -> &'static str;

    /// The URL it dials, shown in `/__serverz`.
    fn dials(&self) -> String;

    /// Runs until stopped; see the trait's contract.
    fn run(self: Arc<Self>, ctx: ClientContext) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// What a client gets from the manager: the stop signal, the drain budget, request accounting,
/// a place to say how it is doing, and a handle to the manager.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub(crate) name: Arc<str>,
    pub(crate) stopping: CancellationToken,
    pub(crate) drain_deadline: Duration,
    pub(crate) requests: Arc<RequestTracker>,
    pub(crate) status: Arc<Mutex<Option<String>>>,
    pub(crate) changed: Arc<watch::Sender<u64>>,
    pub(crate) manager: ManagerHandle,
}

impl ClientContext {
    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cancelled when the client must take no new calls and drain.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// How long calls in flight may take once stopping fired.
    pub fn drain_deadline(&self) -> Duration {
        self.drain_deadline
    }

    /// The moment the drain deadline falls, once stopping fired (`None` before): the one the
    /// manager enforces, whenever the client noticed the stop. Past it (and a short grace),
    /// the manager abandons a client that has not returned.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.manager.shared.deadline.get().copied()
    }

    /// Starts accounting (and logging) for one call, as a server does for a request.
    pub fn begin_request(&self, method: &str, path: &str) -> RequestGuard {
        self.requests.begin(method, path)
    }

    /// What the client is doing now (e.g. `"registered with ws://localhost:3200"`), shown in
    /// `/__serverz` as its `status`; replaces what it said before.
    pub fn set_status(&self, status: impl Into<String>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.into());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The manager that runs this client: admin data, shutdown requests.
    pub fn manager(&self) -> &ManagerHandle {
        &self.manager
    }
}

//! The state the manager, its handles and its supervisors share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::Error;
use crate::inherited::InheritedSockets;
use crate::requests::{RequestFeed, RequestTracker};
use crate::server::{ServeContext, Server, ServerConfig};
use crate::{ManagerHandle, ProcessState, ServerState, ShutdownReason};

/// The manager's settings; fixed once `run` starts.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) version: String,
    pub(crate) drain_delay: Duration,
    pub(crate) drain_deadline: Duration,
    pub(crate) hook_timeout: Duration,
    pub(crate) log_lines_dropped: Option<fn() -> u64>,
    pub(crate) admin_token: Option<crate::admin::AdminToken>,
    pub(crate) upgrade: Option<crate::upgrade::UpgradeCommand>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            version: String::from("0.0.0"),
            drain_delay: Duration::ZERO,
            drain_deadline: Duration::from_secs(10),
            hook_timeout: Duration::from_secs(5),
            log_lines_dropped: None,
            admin_token: None,
            upgrade: None,
        }
    }
}

pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) config: ServerConfig,
    pub(crate) framework: &'static str,
    /// For a client, the URL it dials; `None` for a server, which listens.
    pub(crate) dials: Option<String>,
    /// What a client last said of itself (`ClientContext::set_status`).
    pub(crate) status: Arc<Mutex<Option<String>>>,
    /// A server's listening socket, once bound (an upgrade hands it on).
    pub(crate) listening: OnceLock<Arc<crate::server::ListeningSocket>>,
    pub(crate) state: Mutex<ServerState>,
    pub(crate) addr: OnceLock<SocketAddr>,
    pub(crate) serving_since: OnceLock<Instant>,
    pub(crate) error: Mutex<Option<String>>,
    pub(crate) tracker: Arc<RequestTracker>,
    /// Registered before `run`: the process is live only once these have started.
    pub(crate) immediate: bool,
    /// Bumped on every state change of any server (the systemd notifier's `STATUS=`).
    pub(crate) changed: Arc<watch::Sender<u64>>,
}

impl Slot {
    pub(crate) fn state(&self) -> ServerState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }
}

pub(crate) struct Registration {
    pub(crate) slot: Arc<Slot>,
    pub(crate) role: Role,
}

/// What the manager runs in a slot.
pub(crate) enum Role {
    /// A server, on a socket the manager binds (or inherits).
    Listens(Arc<dyn Server>),
    /// A client, which dials out and needs no socket.
    Dials(Arc<dyn Client>),
}

impl Role {
    pub(crate) fn framework(&self) -> &'static str {
        match self {
            Role::Listens(server) => server.framework(),
            Role::Dials(client) => client.framework(),
        }
    }
}

pub(crate) struct Started {
    pub(crate) slot: Arc<Slot>,
    pub(crate) server: Arc<dyn Server>,
    pub(crate) ctx: ServeContext,
}

pub(crate) struct Shared {
    pub(crate) settings: Mutex<Settings>,
    pub(crate) started: crate::clock::Monotonic,
    pub(crate) started_wall: SystemTime,
    pub(crate) state: watch::Sender<ProcessState>,
    pub(crate) readiness_forced_fail: std::sync::atomic::AtomicBool,
    pub(crate) servers: RwLock<Vec<Arc<Slot>>>,
    /// Cancelled when shutdown is requested: readiness fails, delayed starts are cancelled.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled after the drain delay: servers stop accepting and drain.
    pub(crate) stop_accepting: CancellationToken,
    pub(crate) reason: OnceLock<ShutdownReason>,
    pub(crate) deadline: OnceLock<tokio::time::Instant>,
    /// How this stop goes, fixed when it starts (set before `stop_accepting`).
    pub(crate) stop_plan: OnceLock<StopPlan>,
    /// When servers were told to stop accepting.
    pub(crate) stopped_accepting_at: OnceLock<Instant>,
    pub(crate) add_tx: mpsc::UnboundedSender<Registration>,
    pub(crate) inherited: Mutex<InheritedSockets>,
    pub(crate) started_servers: Mutex<Vec<Started>>,
    pub(crate) failures: Mutex<Vec<Error>>,
    pub(crate) optional_failures: Mutex<Vec<Error>>,
    pub(crate) requests_feed: Arc<RequestFeed>,
    /// See [`Slot::changed`].
    pub(crate) servers_changed: Arc<watch::Sender<u64>>,
    /// An upgrade is under way (one at a time).
    pub(crate) upgrading: std::sync::atomic::AtomicBool,
    /// Sockets an upgrade's predecessor had bound, adopted once it is gone.
    pub(crate) adoption: Mutex<crate::upgrade::Adoption>,
    /// The last upgrade's state, for `/__serverz`.
    pub(crate) upgrade_state: Mutex<Option<crate::upgrade::UpgradeState>>,
    /// Values the program attached for its servers to find (see `ServerManager::extension`).
    pub(crate) extensions: RwLock<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

/// The shape of one stop, decided once from its reason: every step that depends on why the
/// process stops reads it here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopPlan {
    /// How long to keep serving, readiness failing, before servers stop accepting.
    pub(crate) drain_delay: Duration,
    /// How long after the stop servers close idle keep-alive connections.
    pub(crate) idle_settle: Duration,
}

/// After the stop, how long before idle connections close: a connection accepted just before
/// it gets its first request served.
const ACCEPTED_SETTLE: Duration = Duration::from_millis(20);

/// After an in-place upgrade, how long keep-alive connections stay open (at least; the drain
/// delay if longer), every answer saying `Connection: close`: a pooling client (a load
/// balancer) that reuses one gets its answer and moves to the new process, instead of racing a
/// close of the idle connection with a request it cannot retry (a POST).
const UPGRADE_IDLE_GRACE: Duration = Duration::from_secs(1);

impl StopPlan {
    pub(crate) fn for_reason(reason: &ShutdownReason, drain_delay: Duration) -> Self {
        match reason {
            // The sockets live on in the successor, which accepts already: no balancer needs
            // time to move away, but pooled connections do.
            ShutdownReason::Upgraded { .. } => StopPlan {
                drain_delay: Duration::ZERO,
                idle_settle: UPGRADE_IDLE_GRACE.max(drain_delay),
            },
            _ => StopPlan {
                drain_delay,
                idle_settle: ACCEPTED_SETTLE,
            },
        }
    }
}

pub(crate) fn fail(shared: &Arc<Shared>, slot: &Arc<Slot>, err: Error) {
    // The error first: whoever sees `failed` also sees why.
    record_failure(shared, slot, err);
    set_state(slot, ServerState::Failed);
    ManagerHandle {
        shared: Arc::clone(shared),
    }
    .update_liveness();
}

pub(crate) fn record_failure(shared: &Arc<Shared>, slot: &Slot, err: Error) {
    let message = err.chain();
    *lock(&slot.error) = Some(message.clone());
    if slot.config.required {
        tracing::error!(server = slot.name(), error = message, "server failed");
        lock(&shared.failures).push(err);
        ManagerHandle {
            shared: Arc::clone(shared),
        }
        .request_shutdown(ShutdownReason::ServerFailed {
            server: slot.name().to_owned(),
        });
    } else {
        tracing::warn!(
            server = slot.name(),
            error = message,
            "optional server failed; carrying on"
        );
        lock(&shared.optional_failures).push(err);
    }
}

pub(crate) fn set_state(slot: &Slot, state: ServerState) {
    *slot.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    slot.changed.send_modify(|n| *n = n.wrapping_add(1));
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

//! `ManagerHandle`: admin data and shutdown requests, from anywhere.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::admin::{Health, Readiness, RequestCounts, ServerEntry, ServerInfo, ServerReadiness};
use crate::requests::{RequestEvent, RequestTracker};
use crate::shared::{Registration, Role, Shared, Slot, epoch_seconds, lock, read, set_state};
use crate::state::state_name;
use crate::{ProcessState, Server, ServerConfig, ServerState, ShutdownReason};

/// A cheap, cloneable handle to a running manager: admin data and shutdown requests.
#[derive(Clone)]
pub struct ManagerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerHandle")
            .field("state", &self.process_state())
            .finish_non_exhaustive()
    }
}

impl ManagerHandle {
    pub(crate) fn register(
        &self,
        config: ServerConfig,
        role: Role,
        immediate: bool,
    ) -> Registration {
        let mut servers = self
            .shared
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let dials = match &role {
            Role::Listens(_) => None,
            Role::Dials(client) => Some(client.dials()),
        };
        let slot = Arc::new(Slot {
            // Among the servers only: the n-th server takes the n-th inherited socket.
            index: servers.iter().filter(|s| s.dials.is_none()).count(),
            framework: role.framework(),
            dials,
            status: Arc::default(),
            listening: OnceLock::new(),
            tracker: Arc::new(RequestTracker::new(
                Arc::clone(&config.name),
                Arc::clone(&self.shared.requests_feed),
            )),
            config,
            state: Mutex::new(ServerState::Pending),
            addr: OnceLock::new(),
            serving_since: OnceLock::new(),
            error: Mutex::new(None),
            immediate,
            changed: Arc::clone(&self.shared.servers_changed),
        });
        servers.push(Arc::clone(&slot));
        Registration { slot, role }
    }

    /// Adds a server to a running manager; it starts after `delay`. Ignored (with a warning)
    /// once shutdown has begun.
    pub fn add_server_after(&self, delay: Duration, config: ServerConfig, server: impl Server) {
        if self.is_shutting_down() {
            tracing::warn!(server = config.name(), "not added: shutting down");
            return;
        }
        let registration = self.register(
            config.start_delay(delay),
            Role::Listens(Arc::new(server)),
            false,
        );
        if let Err(mpsc::error::SendError(registration)) = self.shared.add_tx.send(registration) {
            set_state(&registration.slot, ServerState::Stopped);
        }
    }

    /// Starts the graceful shutdown (idempotent). Returns true for the call that started it.
    pub fn request_shutdown(&self, reason: ShutdownReason) -> bool {
        let first = self.shared.reason.set(reason).is_ok();
        if first {
            self.shared.state.send_replace(ProcessState::Draining);
            self.shared.shutdown.cancel();
        }
        first
    }

    /// True once shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Resolves when shutdown is requested.
    pub async fn shutdown_requested(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// Why the process is shutting down, once it is.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.shared.reason.get().cloned()
    }

    /// The process state now.
    pub fn process_state(&self) -> ProcessState {
        *self.shared.state.borrow()
    }

    /// Resolves once the process has left `starting` (live, or already shutting down).
    pub async fn wait_live(&self) -> ProcessState {
        let mut rx = self.shared.state.subscribe();
        rx.wait_for(|s| *s != ProcessState::Starting)
            .await
            .map(|s| *s)
            .unwrap_or(ProcessState::Stopped)
    }

    /// Every server's name, state and request counters, in the order they were added (what
    /// `/__metrics` reads).
    pub fn request_trackers(&self) -> Vec<(Arc<str>, ServerState, Arc<RequestTracker>)> {
        read(&self.shared.servers)
            .iter()
            .map(|slot| {
                (
                    Arc::clone(&slot.config.name),
                    slot.state(),
                    Arc::clone(&slot.tracker),
                )
            })
            .collect()
    }

    /// The value of type `T` the program attached with
    /// [`ServerManager::extension`](crate::ServerManager::extension), if any.
    pub fn extension<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        read(&self.shared.extensions)
            .iter()
            .find_map(|e| Arc::clone(e).downcast::<T>().ok())
    }

    /// Log lines the program dropped rather than block (see
    /// [`ServerManager::log_lines_dropped`](crate::ServerManager::log_lines_dropped)), if it
    /// counts them.
    pub fn log_lines_dropped(&self) -> Option<u64> {
        // The lock is released before the program's counter is called.
        let count = lock(&self.shared.settings).log_lines_dropped;
        count.map(|count| count())
    }

    /// When the process started, in seconds since the Unix epoch.
    pub fn started_at(&self) -> f64 {
        epoch_seconds(self.shared.started_wall)
    }

    /// The admin token changes must present, if one is configured.
    pub fn admin_token(&self) -> Option<crate::admin::AdminToken> {
        lock(&self.shared.settings).admin_token.clone()
    }

    /// Forces readiness to fail (true) or lets it follow the servers again (false), as
    /// Envoy's `/healthcheck/fail` and `/healthcheck/ok`.
    pub fn force_readiness_fail(&self, fail: bool) {
        self.shared
            .readiness_forced_fail
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn update_liveness(&self) {
        let all_started = read(&self.shared.servers)
            .iter()
            .filter(|s| s.immediate)
            .all(|s| !matches!(s.state(), ServerState::Pending | ServerState::Starting));
        if all_started {
            self.shared.state.send_if_modified(|state| {
                let change = *state == ProcessState::Starting;
                if change {
                    *state = ProcessState::Live;
                }
                change
            });
        }
    }

    /// Every request of every server from now on, as it finishes or is aborted (the Dev UI's
    /// live log tail). A slow subscriber misses events (`RecvError::Lagged`), never slows a
    /// request.
    pub fn subscribe_requests(&self) -> tokio::sync::broadcast::Receiver<RequestEvent> {
        self.shared.requests_feed.subscribe()
    }

    /// Resolves at every process state change; `borrow()` the receiver for the state.
    pub fn watch_state(&self) -> watch::Receiver<ProcessState> {
        self.shared.state.subscribe()
    }

    /// Liveness data for `/__healthz`.
    pub fn health(&self) -> Health {
        Health {
            status: "ok",
            timestamp: crate::clock::since_epoch().as_secs_f64(),
            uptime_seconds: self.shared.started.elapsed().as_secs_f64(),
        }
    }

    /// Readiness data for `/__readyz`. Ready means: live, not forced to fail, and every
    /// required server that is due (not waiting for its start delay) is serving.
    pub fn readiness(&self) -> Readiness {
        let state = self.process_state();
        let servers: Vec<ServerReadiness> = read(&self.shared.servers)
            .iter()
            .map(|s| ServerReadiness {
                name: s.name().to_owned(),
                state: s.state(),
                required: s.config.required,
            })
            .collect();
        let not_serving: Vec<&str> = servers
            .iter()
            .filter(|s| {
                s.required && !matches!(s.state, ServerState::Pending | ServerState::Serving)
            })
            .map(|s| s.name.as_str())
            .collect();
        let reason = if state != ProcessState::Live {
            Some(format!("process is {}", state_name(state)))
        } else if self
            .shared
            .readiness_forced_fail
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Some("readiness forced to fail by an operator".to_owned())
        } else if !not_serving.is_empty() {
            Some(format!("not serving: {}", not_serving.join(", ")))
        } else {
            None
        };
        Readiness {
            ready: reason.is_none(),
            state,
            reason,
            servers,
        }
    }

    /// Process and server data for `/__serverz`, computed now.
    pub fn server_info(&self) -> ServerInfo {
        let servers = read(&self.shared.servers)
            .iter()
            .map(|slot| {
                let tracker = &slot.tracker;
                let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
                ServerEntry {
                    name: slot.name().to_owned(),
                    framework: slot.framework.to_owned(),
                    version: slot.config.version.clone(),
                    address: slot.addr.get().map(|a| a.to_string()),
                    url: slot.addr.get().map(|a| format!("http://{a}")),
                    dials: slot.dials.clone(),
                    status: lock(&slot.status).clone(),
                    ports: match slot.dials {
                        None => slot.config.ports.to_string(),
                        Some(_) => String::new(),
                    },
                    state: slot.state(),
                    required: slot.config.required,
                    uptime_seconds: slot.serving_since.get().map(|t| t.elapsed().as_secs_f64()),
                    error: lock(&slot.error).clone(),
                    requests: {
                        // One merge of the shards: the figures are of one moment.
                        let totals = tracker.http_metrics().totals();
                        RequestCounts {
                            served: totals.served,
                            in_flight: tracker.in_flight(),
                            server_errors: totals.server_errors,
                            aborted: tracker.aborted(),
                            latency_p50_ms: totals.latency.quantile(0.5).map(ms),
                            latency_p99_ms: totals.latency.quantile(0.99).map(ms),
                        }
                    },
                }
            })
            .collect();
        // One lock, released before anything else is computed.
        let version = lock(&self.shared.settings).version.clone();
        ServerInfo {
            pid: std::process::id(),
            argv: crate::argv::shown(),
            version,
            log_lines_dropped: self.log_lines_dropped(),
            state: self.process_state(),
            readiness_forced_fail: self
                .shared
                .readiness_forced_fail
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_seconds: self.shared.started.elapsed().as_secs_f64(),
            started_at: epoch_seconds(self.shared.started_wall),
            servers,
            upgrade: lock(&self.shared.upgrade_state).clone(),
        }
    }
}

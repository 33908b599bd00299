//! `ServerManager`: start every server, wait for the first reason to stop, drain them all
//! within one deadline, run shutdown hooks in reverse start order, and report.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Server;
use crate::client::Client;
use crate::error::Error;
use crate::inherited::InheritedSockets;
use crate::shared::{Registration, Role, Shared, Started, lock, read, record_failure, set_state};
use crate::supervise::supervise;
use crate::systemd::Notice;
use crate::{ManagerHandle, ProcessState, Report, ServerConfig, ServerState, ShutdownReason};

/// Runs several servers in one process under one lifecycle.
///
/// See the crate docs for an example.
#[must_use = "a manager does nothing until run() is awaited"]
pub struct ServerManager {
    handle: ManagerHandle,
    registered: Vec<Registration>,
    add_rx: mpsc::UnboundedReceiver<Registration>,
    handle_signals: bool,
}

impl fmt::Debug for ServerManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerManager")
            .field("servers", &self.registered.len())
            .field("handle_signals", &self.handle_signals)
            .finish_non_exhaustive()
    }
}

impl Default for ServerManager {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerManager {
    /// A manager with no servers, a 10 s drain deadline, no drain delay, 5 s hook timeout,
    /// and signal handling on.
    pub fn new() -> Self {
        let (add_tx, add_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            settings: Mutex::default(),
            started: crate::clock::Monotonic::now(),
            started_wall: SystemTime::now(),
            state: watch::Sender::new(ProcessState::Starting),
            readiness_forced_fail: Default::default(),
            servers: RwLock::default(),
            shutdown: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            reason: OnceLock::new(),
            deadline: OnceLock::new(),
            stop_plan: OnceLock::new(),
            stopped_accepting_at: OnceLock::new(),
            add_tx,
            inherited: Mutex::new(InheritedSockets::none()),
            started_servers: Mutex::default(),
            failures: Mutex::default(),
            optional_failures: Mutex::default(),
            requests_feed: Arc::default(),
            servers_changed: Arc::new(watch::Sender::new(0)),
            extensions: RwLock::default(),
            upgrading: Default::default(),
            adoption: Mutex::default(),
            upgrade_state: Mutex::default(),
        };
        ServerManager {
            handle: ManagerHandle {
                shared: Arc::new(shared),
            },
            registered: Vec::new(),
            add_rx,
            handle_signals: true,
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, crate::shared::Settings> {
        lock(&self.handle.shared.settings)
    }

    /// The program's version, shown in `/__serverz`.
    pub fn version(self, version: impl Into<String>) -> Self {
        self.settings().version = version.into();
        self
    }

    /// How long to keep serving after shutdown is requested, with readiness already failing,
    /// before listeners close: the time a load balancer needs to stop sending traffic.
    pub fn drain_delay(self, delay: Duration) -> Self {
        self.settings().drain_delay = delay;
        self
    }

    /// How long in-flight requests may run once listeners close. Requests still running then
    /// are cut, and the report says how many.
    pub fn drain_deadline(self, deadline: Duration) -> Self {
        self.settings().drain_deadline = deadline;
        self
    }

    /// The time limit of each startup and shutdown hook.
    pub fn hook_timeout(self, timeout: Duration) -> Self {
        self.settings().hook_timeout = timeout;
        self
    }

    /// How the program counts the log lines it dropped rather than block on a stalled output,
    /// shown in `/__serverz` as `log_lines_dropped`.
    pub fn log_lines_dropped(self, count: fn() -> u64) -> Self {
        self.settings().log_lines_dropped = Some(count);
        self
    }

    /// The token every admin change (quit, readiness fail and restore) must present
    /// (`Authorization: Bearer <token>`); without one, changes need only pass the edge's
    /// origin and peer rules.
    pub fn admin_token(self, token: crate::admin::AdminToken) -> Self {
        self.settings().admin_token = Some(token);
        self
    }

    /// Enables in-place upgrade (`SIGUSR2`, [`ManagerHandle::start_upgrade`]): how the
    /// successor is started.
    pub fn upgrade_command(self, command: crate::upgrade::UpgradeCommand) -> Self {
        self.settings().upgrade = Some(command);
        self
    }

    /// Attaches `value` for every server to find with [`ManagerHandle::extension`]: how a
    /// program hands its servers something the manager knows nothing about (the edge's extra
    /// metrics, say). One value per type; a second replaces the first.
    pub fn extension<T: std::any::Any + Send + Sync>(self, value: Arc<T>) -> Self {
        {
            let mut extensions = self
                .handle
                .shared
                .extensions
                .write()
                .unwrap_or_else(|e| e.into_inner());
            extensions.retain(|e| !e.is::<T>());
            extensions.push(value);
        }
        self
    }

    /// Whether `run` handles SIGTERM, SIGINT and SIGHUP (default: yes). Tests and embedders
    /// that own signal handling turn it off and call [`ManagerHandle::request_shutdown`].
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Sockets inherited from the parent (systemd, `watchexec --socket`, `systemfd`): the
    /// n-th server added gets the n-th socket instead of binding its port spec.
    pub fn inherited_sockets(self, sockets: InheritedSockets) -> Self {
        *lock(&self.handle.shared.inherited) = sockets;
        self
    }

    /// Adds a server; it starts when `run` is called (after its config's start delay).
    pub fn add_server(&mut self, config: ServerConfig, server: impl Server) -> &mut Self {
        let immediate = config.start_delay.is_zero();
        let registration = self
            .handle
            .register(config, Role::Listens(Arc::new(server)), immediate);
        self.registered.push(registration);
        self
    }

    /// Adds a client, which dials out instead of listening (see [`Client`]); it starts when
    /// `run` is called (after its config's start delay; the config's host and ports are not
    /// used). The process is live once it has started, whether or not its peer answers.
    pub fn add_client(&mut self, config: ServerConfig, client: impl Client) -> &mut Self {
        let immediate = config.start_delay.is_zero();
        let registration = self
            .handle
            .register(config, Role::Dials(Arc::new(client)), immediate);
        self.registered.push(registration);
        self
    }

    /// Adds a server that starts `delay` after `run` is called; a shutdown during the delay
    /// cancels it.
    pub fn add_server_after(
        &mut self,
        delay: Duration,
        config: ServerConfig,
        server: impl Server,
    ) -> &mut Self {
        self.add_server(config.start_delay(delay), server)
    }

    /// A handle for admin data and shutdown requests, usable before and during `run`.
    pub fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    /// Runs every server until shutdown, then drains them and runs their shutdown hooks.
    ///
    /// Returns after every server has stopped and every hook has run. Shutdown starts at the
    /// first of: a signal, a quit endpoint, [`ManagerHandle::request_shutdown`], or a required
    /// server failing.
    pub async fn run(mut self) -> Report {
        let shared = Arc::clone(&self.handle.shared);
        let settings = lock(&shared.settings).clone();
        if self.handle_signals
            && let Err(source) = crate::signals::spawn(self.handle.clone())
        {
            // A process that cannot be stopped gracefully must not start serving.
            let err = Error::Signals { source };
            tracing::error!(error = err.chain(), "cannot start");
            let why = err.chain();
            lock(&shared.failures).push(err);
            self.handle
                .request_shutdown(ShutdownReason::Requested { why });
        }
        let names: Vec<&str> = self
            .registered
            .iter()
            .filter(|r| matches!(r.role, Role::Listens(_)))
            .map(|r| r.slot.name())
            .collect();
        if let Err(detail) = lock(&shared.inherited).assign(&names) {
            let err = Error::InheritedMismatch { detail };
            tracing::error!(error = %err, "cannot start");
            let why = err.to_string();
            lock(&shared.failures).push(err);
            self.handle
                .request_shutdown(ShutdownReason::Requested { why });
        }

        let mut tasks = JoinSet::new();
        for registration in self.registered.drain(..) {
            tasks.spawn(supervise(Arc::clone(&shared), registration));
        }
        self.handle.update_liveness();
        let notifier = crate::systemd::spawn(self.handle.clone());

        loop {
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                Some(registration) = self.add_rx.recv() => {
                    tasks.spawn(supervise(Arc::clone(&shared), registration));
                }
            }
        }
        let reason = shared.reason.get().cloned().expect("set before cancel");
        crate::systemd::send(
            vec![
                Notice::Stopping,
                Notice::Status(crate::systemd::status_line(&self.handle)),
            ],
            false,
        );
        let plan = crate::shared::StopPlan::for_reason(&reason, settings.drain_delay);
        let _ = shared.stop_plan.set(plan);
        tracing::info!(%reason, drain_delay = ?plan.drain_delay, drain_deadline = ?settings.drain_deadline, "shutting down");

        if !plan.drain_delay.is_zero() {
            // Through the drain delay answers ask keep-alive clients to close, so pooled
            // clients move away while the listener still accepts their reconnects, instead of
            // staying until it stops. (Without a delay, not before the socket stops listening:
            // a client sent away at that moment would reconnect into a backlog that is reset.)
            for slot in read(&shared.servers).iter() {
                slot.tracker.close_connections();
            }
            tokio::time::sleep(plan.drain_delay).await;
        }
        let deadline = tokio::time::Instant::now() + settings.drain_deadline;
        let _ = shared.deadline.set(deadline);
        for slot in read(&shared.servers).iter() {
            slot.tracker.start_draining_until(deadline);
        }
        // Each server's supervisor takes it from here: see `supervise`.
        let _ = shared.stopped_accepting_at.set(Instant::now());
        shared.stop_accepting.cancel();

        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "a server's supervisor panicked");
            }
        }
        // Late registrations that raced with shutdown never start.
        self.add_rx.close();
        while let Ok(registration) = self.add_rx.try_recv() {
            set_state(&registration.slot, ServerState::Stopped);
        }

        let started = std::mem::take(&mut *lock(&shared.started_servers));
        for Started { slot, server, ctx } in started.into_iter().rev() {
            let name = slot.name().to_owned();
            match tokio::time::timeout(settings.hook_timeout, server.on_shutdown(&ctx)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => record_failure(
                    &shared,
                    &slot,
                    Error::ShutdownHook {
                        server: name,
                        source: err.into(),
                    },
                ),
                Err(_) => record_failure(
                    &shared,
                    &slot,
                    Error::HookTimeout {
                        server: name,
                        hook: "shutdown",
                        timeout: settings.hook_timeout,
                    },
                ),
            }
        }

        shared.state.send_replace(ProcessState::Stopped);
        if let Some(notifier) = notifier {
            drop(notifier);
            let status = crate::systemd::status_line(&self.handle);
            crate::systemd::send(vec![Notice::Status(status)], true);
        }
        let servers = self.handle.server_info().servers;
        let requests_cut = read(&shared.servers)
            .iter()
            .map(|s| s.tracker.cut_by_deadline())
            .sum();
        let report = Report {
            reason,
            failures: std::mem::take(&mut *lock(&shared.failures)),
            optional_failures: std::mem::take(&mut *lock(&shared.optional_failures)),
            requests_cut,
            servers,
        };
        tracing::info!(
            outcome = ?report.outcome(),
            requests_cut = report.requests_cut,
            failures = report.failures.len(),
            uptime_s = shared.started.elapsed().as_secs_f64(),
            "stopped"
        );
        report
    }
}

//! `ServerManager`: start every server, wait for the first reason to stop, drain them all
//! within one deadline, run shutdown hooks in reverse start order, and report.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{
    Health, QuitRefused, Readiness, RequestCounts, ServerEntry, ServerInfo, ServerReadiness,
    is_loopback,
};
use crate::error::Error;
use crate::inherited::InheritedSockets;
use crate::requests::{RequestEvent, RequestFeed, RequestTracker};
use crate::server::{ListeningSocket, ServeContext, Server, ServerConfig};

/// How long after servers stop accepting they close idle connections (see `close_idle`).
const ACCEPTED_SETTLE: Duration = Duration::from_millis(20);

/// How long a framework may take to unwind after the drain deadline before it is abandoned.
const FRAMEWORK_GRACE: Duration = Duration::from_millis(500);

/// The process's lifecycle: `starting → live → draining → stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Servers are being started.
    Starting,
    /// Every server due to start has started (or failed and was optional).
    Live,
    /// Shutdown was requested: readiness fails, servers drain.
    Draining,
    /// Everything has stopped.
    Stopped,
}

/// One server's lifecycle: `pending → starting → serving → draining → stopped | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Waiting for its start delay.
    Pending,
    /// Binding and running its startup hook.
    Starting,
    /// Accepting requests.
    Serving,
    /// Finishing in-flight requests; no longer accepting.
    Draining,
    /// Stopped cleanly (or never started because the process stopped first).
    Stopped,
    /// Failed to start, or died.
    Failed,
}

/// Why the process is shutting down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ShutdownReason {
    /// A signal (`SIGTERM`, `SIGINT`, `SIGHUP`).
    Signal {
        /// The signal's name.
        signal: &'static str,
    },
    /// A quit endpoint was called.
    Quit {
        /// The server whose endpoint it was.
        server: String,
    },
    /// A required server failed to start or died.
    ServerFailed {
        /// The server.
        server: String,
    },
    /// Code asked for it through [`ManagerHandle::request_shutdown`].
    Requested {
        /// What the caller said.
        why: String,
    },
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownReason::Signal { signal } => write!(f, "{signal} received"),
            ShutdownReason::Quit { server } => write!(f, "quit requested on server '{server}'"),
            ShutdownReason::ServerFailed { server } => write!(f, "server '{server}' failed"),
            ShutdownReason::Requested { why } => write!(f, "{why}"),
        }
    }
}

/// What [`ServerManager::run`] returns: why it stopped and what went wrong.
#[derive(Debug)]
#[must_use = "the report says whether the stop was clean; turn it into an exit status"]
pub struct Report {
    /// Why the process stopped.
    pub reason: ShutdownReason,
    /// Failures that make the stop unclean: required servers, hooks.
    pub failures: Vec<Error>,
    /// Failures of optional servers: logged and shown, not fatal.
    pub optional_failures: Vec<Error>,
    /// Requests still in flight when the drain deadline passed, all servers together.
    pub requests_cut: u64,
    /// Every server as it ended.
    pub servers: Vec<ServerEntry>,
}

/// The verdict of a [`Report`], from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything stopped cleanly.
    Clean,
    /// The drain deadline cut requests.
    RequestsCut,
    /// A required server or a hook failed.
    Failed,
}

impl Report {
    /// The verdict: `Failed` wins over `RequestsCut`, which wins over `Clean`.
    pub fn outcome(&self) -> Outcome {
        if !self.failures.is_empty() {
            Outcome::Failed
        } else if self.requests_cut > 0 {
            Outcome::RequestsCut
        } else {
            Outcome::Clean
        }
    }
}

struct Slot {
    index: usize,
    config: ServerConfig,
    framework: &'static str,
    state: Mutex<ServerState>,
    addr: OnceLock<SocketAddr>,
    serving_since: OnceLock<Instant>,
    error: Mutex<Option<String>>,
    tracker: Arc<RequestTracker>,
    /// Registered before `run`: the process is live only once these have started.
    immediate: bool,
}

impl Slot {
    fn state(&self) -> ServerState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn name(&self) -> &str {
        &self.config.name
    }
}

struct Registration {
    slot: Arc<Slot>,
    server: Arc<dyn Server>,
}

struct Started {
    slot: Arc<Slot>,
    server: Arc<dyn Server>,
    ctx: ServeContext,
}

struct Shared {
    version: String,
    started: Instant,
    started_wall: SystemTime,
    state: watch::Sender<ProcessState>,
    readiness_forced_fail: std::sync::atomic::AtomicBool,
    servers: RwLock<Vec<Arc<Slot>>>,
    /// Cancelled when shutdown is requested: readiness fails, delayed starts are cancelled.
    shutdown: CancellationToken,
    /// Cancelled after the drain delay: servers stop accepting and drain.
    stop_accepting: CancellationToken,
    /// Cancelled `ACCEPTED_SETTLE` after `stop_accepting`: servers close idle connections.
    close_idle: CancellationToken,
    reason: OnceLock<ShutdownReason>,
    drain_delay: Duration,
    drain_deadline: Duration,
    hook_timeout: Duration,
    deadline: OnceLock<tokio::time::Instant>,
    add_tx: mpsc::UnboundedSender<Registration>,
    inherited: Mutex<InheritedSockets>,
    started_servers: Mutex<Vec<Started>>,
    failures: Mutex<Vec<Error>>,
    optional_failures: Mutex<Vec<Error>>,
    requests_feed: Arc<RequestFeed>,
}

/// A cheap, cloneable handle to a running manager: admin data and shutdown requests.
#[derive(Clone)]
pub struct ManagerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerHandle")
            .field("state", &self.process_state())
            .finish_non_exhaustive()
    }
}

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
            version: String::from("0.0.0"),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            state: watch::Sender::new(ProcessState::Starting),
            readiness_forced_fail: Default::default(),
            servers: RwLock::default(),
            shutdown: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            close_idle: CancellationToken::new(),
            reason: OnceLock::new(),
            drain_delay: Duration::ZERO,
            drain_deadline: Duration::from_secs(10),
            hook_timeout: Duration::from_secs(5),
            deadline: OnceLock::new(),
            add_tx,
            inherited: Mutex::new(InheritedSockets::none()),
            started_servers: Mutex::default(),
            failures: Mutex::default(),
            optional_failures: Mutex::default(),
            requests_feed: Arc::default(),
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

    fn settings(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.handle.shared)
            .expect("configure the manager before calling handle() or run()")
    }

    /// The program's version, shown in `/__serverz`.
    ///
    /// # Panics
    /// The settings methods panic once [`handle`](Self::handle) has been called.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings().version = version.into();
        self
    }

    /// How long to keep serving after shutdown is requested, with readiness already failing,
    /// before listeners close: the time a load balancer needs to stop sending traffic.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.settings().drain_delay = delay;
        self
    }

    /// How long in-flight requests may run once listeners close. Requests still running then
    /// are cut, and the report says how many.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.settings().drain_deadline = deadline;
        self
    }

    /// The time limit of each startup and shutdown hook.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.settings().hook_timeout = timeout;
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
    pub fn inherited_sockets(mut self, sockets: InheritedSockets) -> Self {
        *lock(&self.settings().inherited) = sockets;
        self
    }

    /// Adds a server; it starts when `run` is called (after its config's start delay).
    pub fn add_server(&mut self, config: ServerConfig, server: impl Server) -> &mut Self {
        let immediate = config.start_delay.is_zero();
        let registration = self.handle.register(config, Arc::new(server), immediate);
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
        if self.handle_signals
            && let Err(err) = crate::signals::spawn(self.handle.clone())
        {
            tracing::error!(error = %err, "cannot install signal handlers");
            self.handle.request_shutdown(ShutdownReason::Requested {
                why: format!("cannot install signal handlers: {err}"),
            });
        }
        let names: Vec<&str> = self.registered.iter().map(|r| r.slot.name()).collect();
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
        tracing::info!(%reason, drain_delay = ?shared.drain_delay, drain_deadline = ?shared.drain_deadline, "shutting down");

        if !shared.drain_delay.is_zero() {
            tokio::time::sleep(shared.drain_delay).await;
        }
        let deadline = tokio::time::Instant::now() + shared.drain_deadline;
        let _ = shared.deadline.set(deadline);
        for slot in read(&shared.servers).iter() {
            slot.tracker.start_draining_until(deadline);
        }
        shared.stop_accepting.cancel();
        // A connection accepted just before the stop has its first request on the wire:
        // give it a moment to arrive and be read, so it is served rather than closed idle.
        tokio::spawn({
            let close_idle = shared.close_idle.clone();
            async move {
                tokio::time::sleep(ACCEPTED_SETTLE).await;
                close_idle.cancel();
            }
        });

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
            match tokio::time::timeout(shared.hook_timeout, server.on_shutdown(&ctx)).await {
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
                        timeout: shared.hook_timeout,
                    },
                ),
            }
        }

        shared.state.send_replace(ProcessState::Stopped);
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

/// Starts one server, serves it until shutdown, and drains it within the deadline.
async fn supervise(shared: Arc<Shared>, Registration { slot, server }: Registration) {
    let name = slot.name().to_owned();
    if !slot.config.start_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(slot.config.start_delay) => {}
            () = shared.shutdown.cancelled() => {
                set_state(&slot, ServerState::Stopped);
                return;
            }
        }
    }
    if shared.shutdown.is_cancelled() {
        set_state(&slot, ServerState::Stopped);
        return;
    }
    set_state(&slot, ServerState::Starting);

    let inherited = lock(&shared.inherited).take(slot.index);
    let inherited_socket = inherited.is_some();
    let listener = match inherited {
        Some(Ok(listener)) => Ok(listener),
        Some(Err(source)) => Err(Error::Inherited {
            server: name.clone(),
            index: slot.index,
            source,
        }),
        None => crate::port::bind(&name, slot.config.host, &slot.config.ports),
    };
    let (listener, local_addr) = match listener.and_then(|l| {
        let addr = l.local_addr().map_err(|source| Error::Inherited {
            server: name.clone(),
            index: slot.index,
            source,
        })?;
        Ok((l, addr))
    }) {
        Ok(bound) => bound,
        Err(err) => return fail(&shared, &slot, err),
    };
    let _ = slot.addr.set(local_addr);
    let listening = if inherited_socket {
        ListeningSocket::default()
    } else {
        ListeningSocket::of(&listener)
    };

    let ctx = ServeContext {
        listening: Arc::new(listening),
        name: Arc::clone(&slot.config.name),
        local_addr,
        shutdown: shared.stop_accepting.clone(),
        close_idle: shared.close_idle.clone(),
        drain_deadline: shared.drain_deadline,
        requests: Arc::clone(&slot.tracker),
        manager: ManagerHandle {
            shared: Arc::clone(&shared),
        },
    };
    match tokio::time::timeout(shared.hook_timeout, server.on_startup(&ctx)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            let source = err.into();
            return fail(
                &shared,
                &slot,
                Error::StartupHook {
                    server: name,
                    source,
                },
            );
        }
        Err(_) => {
            let timeout = shared.hook_timeout;
            let err = Error::HookTimeout {
                server: name,
                hook: "startup",
                timeout,
            };
            return fail(&shared, &slot, err);
        }
    }
    lock(&shared.started_servers).push(Started {
        slot: Arc::clone(&slot),
        server: Arc::clone(&server),
        ctx: ctx.clone(),
    });

    let _ = slot.serving_since.set(Instant::now());
    set_state(&slot, ServerState::Serving);
    tracing::info!(server = name, framework = slot.framework, url = %format!("http://{local_addr}"), "serving");
    ManagerHandle {
        shared: Arc::clone(&shared),
    }
    .update_liveness();

    // Whichever way serve ends, our handle on the socket goes too, so the port is released.
    let _release_socket = ReleaseOnDrop(Arc::clone(&ctx.listening));
    let mut serve = tokio::spawn(Arc::clone(&server).serve(listener, ctx));
    let exited = tokio::select! {
        joined = &mut serve => Some(joined),
        () = shared.stop_accepting.cancelled() => None,
    };
    if let Some(joined) = exited {
        if let Some(err) = exit_error(&name, joined, shared.stop_accepting.is_cancelled()) {
            return fail(&shared, &slot, err);
        }
        set_state(&slot, ServerState::Stopped);
        return;
    }

    set_state(&slot, ServerState::Draining);
    let drain_started = Instant::now();
    let deadline = *shared.deadline.get().expect("set before stop_accepting");
    let joined = match tokio::time::timeout_at(deadline, &mut serve).await {
        Ok(joined) => {
            // A framework that returns with requests still running has cut them; one whose
            // own deadline timer fired a moment before ours has dropped them already.
            if slot.tracker.in_flight() > 0 || slot.tracker.cut_by_deadline() > 0 {
                report_cut(&slot);
            }
            Some(joined)
        }
        Err(_) => {
            report_cut(&slot);
            match tokio::time::timeout(FRAMEWORK_GRACE, &mut serve).await {
                Ok(joined) => Some(joined),
                Err(_) => {
                    serve.abort();
                    let grace = FRAMEWORK_GRACE;
                    return fail(
                        &shared,
                        &slot,
                        Error::Unresponsive {
                            server: name,
                            grace,
                        },
                    );
                }
            }
        }
    };
    if let Some(Err(err)) = joined.map(|j| exit_error(&name, j, true).map_or(Ok(()), Err)) {
        return fail(&shared, &slot, err);
    }
    set_state(&slot, ServerState::Stopped);
    tracing::info!(
        server = name,
        drain_ms = drain_started.elapsed().as_secs_f64() * 1e3,
        served = slot.tracker.served(),
        "stopped"
    );
}

struct ReleaseOnDrop(Arc<ListeningSocket>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn report_cut(slot: &Slot) {
    let cut = slot.tracker.deadline_passed();
    if cut > 0 {
        tracing::warn!(
            server = slot.name(),
            cut,
            "drain deadline passed: requests cut"
        );
    }
}

/// The error a finished serve task stands for, if any. An `Ok` return is only an error when
/// shutdown had not been requested.
fn exit_error(
    name: &str,
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
    shutting_down: bool,
) -> Option<Error> {
    match joined {
        Ok(Ok(())) if shutting_down => None,
        Ok(Ok(())) => Some(Error::Exited {
            server: name.to_owned(),
        }),
        Ok(Err(err)) => Some(Error::Serve {
            server: name.to_owned(),
            source: err.into(),
        }),
        Err(join) if join.is_panic() => {
            let payload = join.into_panic();
            let message = crate::admin::panic_message(&*payload).to_owned();
            Some(Error::Panicked {
                server: name.to_owned(),
                message,
            })
        }
        Err(_) => None,
    }
}

fn fail(shared: &Arc<Shared>, slot: &Arc<Slot>, err: Error) {
    set_state(slot, ServerState::Failed);
    record_failure(shared, slot, err);
    ManagerHandle {
        shared: Arc::clone(shared),
    }
    .update_liveness();
}

fn record_failure(shared: &Arc<Shared>, slot: &Slot, err: Error) {
    let message = error_chain(&err);
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

/// `error: cause: cause`, as anyhow's `{:#}` prints it.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn set_state(slot: &Slot, state: ServerState) {
    *slot.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl ManagerHandle {
    fn register(
        &self,
        config: ServerConfig,
        server: Arc<dyn Server>,
        immediate: bool,
    ) -> Registration {
        let mut servers = self
            .shared
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let slot = Arc::new(Slot {
            index: servers.len(),
            framework: server.framework(),
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
        });
        servers.push(Arc::clone(&slot));
        Registration { slot, server }
    }

    /// Adds a server to a running manager; it starts after `delay`. Ignored (with a warning)
    /// once shutdown has begun.
    pub fn add_server_after(&self, delay: Duration, config: ServerConfig, server: impl Server) {
        if self.is_shutting_down() {
            tracing::warn!(server = config.name(), "not added: shutting down");
            return;
        }
        let registration = self.register(config.start_delay(delay), Arc::new(server), false);
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

    /// The quit endpoint's logic: loopback peers only, then a graceful shutdown.
    ///
    /// # Errors
    /// [`QuitRefused`] when `peer` is not a loopback address.
    pub fn quit(&self, peer: IpAddr, server: &str) -> Result<(), QuitRefused> {
        if !is_loopback(peer) {
            tracing::warn!(server, %peer, "quit refused: peer is not loopback");
            return Err(QuitRefused { peer });
        }
        self.request_shutdown(ShutdownReason::Quit {
            server: server.to_owned(),
        });
        Ok(())
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

    /// Forces readiness to fail (true) or lets it follow the servers again (false), as
    /// Envoy's `/healthcheck/fail` and `/healthcheck/ok`.
    pub fn force_readiness_fail(&self, fail: bool) {
        self.shared
            .readiness_forced_fail
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_liveness(&self) {
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
            timestamp: epoch_seconds(SystemTime::now()),
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
                    ports: slot.config.ports.to_string(),
                    state: slot.state(),
                    required: slot.config.required,
                    uptime_seconds: slot.serving_since.get().map(|t| t.elapsed().as_secs_f64()),
                    error: lock(&slot.error).clone(),
                    requests: RequestCounts {
                        served: tracker.served(),
                        in_flight: tracker.in_flight(),
                        server_errors: tracker.server_errors(),
                        aborted: tracker.aborted(),
                        latency_p50_ms: tracker.latency().quantile(0.5).map(ms),
                        latency_p99_ms: tracker.latency().quantile(0.99).map(ms),
                    },
                }
            })
            .collect();
        ServerInfo {
            pid: std::process::id(),
            argv: std::env::args().collect(),
            version: self.shared.version.clone(),
            state: self.process_state(),
            readiness_forced_fail: self
                .shared
                .readiness_forced_fail
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_seconds: self.shared.started.elapsed().as_secs_f64(),
            started_at: epoch_seconds(self.shared.started_wall),
            servers,
        }
    }
}

fn state_name(state: ProcessState) -> &'static str {
    match state {
        ProcessState::Starting => "starting",
        ProcessState::Live => "live",
        ProcessState::Draining => "draining",
        ProcessState::Stopped => "stopped",
    }
}

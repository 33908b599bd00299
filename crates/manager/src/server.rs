//! The server trait every framework crate implements, its configuration, and the context it is
//! handed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::requests::{RequestGuard, RequestTracker};
use crate::{ManagerHandle, PortSpec};

/// A boxed, sendable future: what [`Server`]'s methods return so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One HTTP server the manager runs.
///
/// The manager binds the socket (or takes an inherited one) and calls, in order and exactly
/// once each: [`on_startup`](Server::on_startup), [`serve`](Server::serve), and, after the
/// server has drained, [`on_shutdown`](Server::on_shutdown).
///
/// # Contract of `serve`
/// Serve on `listener` (already bound, listening and non-blocking), then:
/// 1. when [`ServeContext::stop_accepting`] fires, stop calling `accept`;
/// 2. when [`ServeContext::close_idle`] fires, close idle keep-alive connections;
/// 3. return once in-flight requests have finished (or [`ServeContext::drain_deadline`] has
///    passed).
///
/// The manager does the rest of the stop sequence itself: it makes the listening socket refuse
/// new connections once the server has stopped accepting, marks the moment responses must
/// carry `Connection: close` ([`RequestTracker::closes_connections`]), times `close_idle`, and
/// enforces the deadline. Returning before `stop_accepting` fires, `Ok` or `Err`, means the
/// server died: a required server then brings the whole process down.
///
/// Count every request with [`ServeContext::begin_request`] (the edge crate does it for HTTP
/// servers): that is how the manager knows a server is idle and which requests a deadline cut.
///
/// [`RequestTracker::closes_connections`]: crate::requests::RequestTracker::closes_connections
pub trait Server: Send + Sync + 'static {
    /// The framework's name, shown in `/__serverz` (e.g. `"actix-web"`).
    fn framework(&self) -> &'static str;

    /// Serves until drained; see the trait's contract.
    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>>;

    /// How long after [`ServeContext::stop_accepting`] fires the framework may still call
    /// `accept` on the socket; the manager stops the socket listening only then, or as soon as
    /// the server calls [`ServeContext::done_accepting`] (an accept on a socket that no longer
    /// listens fails, and frameworks log that as an error; connections the kernel queued and
    /// nobody accepted are reset when it stops listening). Zero, the default, for a server
    /// whose accept loop watches the token itself and leaves the queue; more for one whose
    /// accept loop runs on another thread and takes a stop command later (actix), or one that
    /// accepts what was queued before it says it is done (the edge's acceptors).
    fn accept_stop_lag(&self) -> Duration {
        Duration::ZERO
    }

    /// Runs after the socket is bound and before serving. An error stops the server from
    /// starting (and, for a required server, the process).
    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        let _ = ctx;
        Box::pin(async { Ok(()) })
    }

    /// Runs after the server has drained, in reverse start order across servers.
    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        let _ = ctx;
        Box::pin(async { Ok(()) })
    }
}

/// What the manager needs to know to run a server.
///
/// ```
/// use manager::ServerConfig;
/// let config = ServerConfig::new("flows").ports("3400..3410".parse().unwrap()).optional();
/// assert_eq!(config.name(), "flows");
/// assert!(!config.is_required());
/// ```
#[derive(Debug, Clone)]
#[must_use = "a config does nothing until it is given to ServerManager::add_server"]
pub struct ServerConfig {
    pub(crate) name: Arc<str>,
    pub(crate) host: IpAddr,
    pub(crate) ports: PortSpec,
    pub(crate) version: String,
    pub(crate) start_delay: Duration,
    pub(crate) required: bool,
}

impl ServerConfig {
    /// A required server on `127.0.0.1`, ephemeral port, no delay.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        ServerConfig {
            name: name.into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: PortSpec::Ephemeral,
            version: String::from("0.0.0"),
            start_delay: Duration::ZERO,
            required: true,
        }
    }

    /// The address to bind (loopback unless told otherwise).
    pub fn host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// The ports to try.
    pub fn ports(mut self, ports: PortSpec) -> Self {
        self.ports = ports;
        self
    }

    /// The version shown in `/__serverz`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Start this long after the manager runs (or after it is added, while running).
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// A server whose failure is logged and shown, but does not stop the process.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a failure of this server stops the process.
    pub fn is_required(&self) -> bool {
        self.required
    }
}

/// What a server gets from the manager: the stop signals, the drain budget, request
/// accounting and a handle to the manager.
#[derive(Debug, Clone)]
pub struct ServeContext {
    pub(crate) name: Arc<str>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) stop_accepting: CancellationToken,
    pub(crate) close_idle: CancellationToken,
    pub(crate) done_accepting: CancellationToken,
    pub(crate) drain_deadline: Duration,
    pub(crate) requests: Arc<RequestTracker>,
    pub(crate) listening: Arc<ListeningSocket>,
    pub(crate) manager: ManagerHandle,
}

/// A second handle on a server's listening socket, kept so the socket can stop listening
/// while the framework still owns (and has not yet closed) it, and so an upgrade can hand it
/// to the next process.
#[derive(Debug, Default)]
pub(crate) struct ListeningSocket {
    dup: std::sync::Mutex<Option<socket2::Socket>>,
    /// Whether stopping makes it refuse connections: for a socket the manager bound, until it
    /// is handed to a successor. Inherited sockets belong to the parent (systemd,
    /// watchexec), which keeps them listening for the next process.
    refuses_at_stop: std::sync::atomic::AtomicBool,
}

impl ListeningSocket {
    /// For a server's socket; `bound_here` when the manager bound it (not inherited).
    pub(crate) fn of(listener: &TcpListener, bound_here: bool) -> Self {
        let dup = listener.try_clone().ok().map(socket2::Socket::from);
        ListeningSocket {
            dup: std::sync::Mutex::new(dup),
            refuses_at_stop: std::sync::atomic::AtomicBool::new(bound_here),
        }
    }

    /// Makes the socket refuse new connections (unless it lives on elsewhere), and lets go of
    /// it. Idempotent.
    pub(crate) fn stop(&self) {
        let dup = self.dup.lock().unwrap_or_else(|e| e.into_inner()).take();
        let refuse = self
            .refuses_at_stop
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(socket) = dup.filter(|_| refuse) {
            // On a listening socket, shutdown(SHUT_RD) leaves the LISTEN state: from now on a
            // connect is refused at once instead of waiting in the backlog to be reset.
            let _ = socket.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Another handle on the socket for a successor process, while this one still has it.
    pub(crate) fn for_successor(&self) -> Option<std::os::fd::OwnedFd> {
        let dup = self.dup.lock().unwrap_or_else(|e| e.into_inner());
        dup.as_ref()
            .and_then(|socket| socket.try_clone().ok())
            .map(std::os::fd::OwnedFd::from)
    }

    /// Whether stopping makes it refuse connections (see the field).
    pub(crate) fn refuses_at_stop(&self) -> bool {
        self.refuses_at_stop
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The socket is this process's alone now: stopping makes it refuse connections.
    pub(crate) fn adopt(&self) {
        self.refuses_at_stop
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The socket lives on in a successor: stopping must not make it refuse connections.
    pub(crate) fn handed_over(&self) {
        self.refuses_at_stop
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl ServeContext {
    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancelled when the server must stop accepting and drain.
    pub fn stop_accepting(&self) -> &CancellationToken {
        &self.stop_accepting
    }

    /// Cancelled a moment (20 ms) after `stop_accepting`, once the socket stopped listening: close idle connections
    /// now. The pause lets a connection accepted just before the stop deliver its first
    /// request, which is then served instead of the connection being closed unanswered.
    pub fn close_idle(&self) -> &CancellationToken {
        &self.close_idle
    }

    /// How long ago the server was told to stop accepting (`None` before).
    pub fn since_stop_accepting(&self) -> Option<Duration> {
        self.manager
            .shared
            .stopped_accepting_at
            .get()
            .map(std::time::Instant::elapsed)
    }

    /// Tells the manager that the server, told to stop accepting, has accepted every connection
    /// the kernel had queued and will accept no more: the socket stops listening now rather
    /// than [`Server::accept_stop_lag`] after the stop.
    pub fn done_accepting(&self) {
        self.done_accepting.cancel();
    }

    /// Whether the listening socket goes on listening after this server stops: it was handed
    /// to an upgrade's successor, or it belongs to a service manager (systemd, watchexec). Then
    /// what the kernel queued is the next process's to accept, and a server told to stop
    /// accepting should stop at once rather than take the queue (which keeps filling).
    pub fn socket_lives_on(&self) -> bool {
        !self.listening.refuses_at_stop()
    }

    /// How long in-flight requests may take once the server stopped accepting.
    pub fn drain_deadline(&self) -> Duration {
        self.drain_deadline
    }

    /// Starts accounting (and logging) for one request.
    pub fn begin_request(&self, method: &str, path: &str) -> RequestGuard {
        self.requests.begin(method, path)
    }

    /// This server's request counters.
    pub fn requests(&self) -> &Arc<RequestTracker> {
        &self.requests
    }

    /// The manager that runs this server: admin data, shutdown requests.
    pub fn manager(&self) -> &ManagerHandle {
        &self.manager
    }

    /// Resolves once the server stopped accepting and then either no request is in flight
    /// or the drain deadline has passed: the moment a server that cannot detect idleness
    /// itself (actix polls once a second) may force-close what is left.
    ///
    /// # Cancellation safety
    /// Cancel-safe.
    pub async fn drained(&self) {
        self.stop_accepting.cancelled().await;
        let deadline = tokio::time::Instant::now() + self.drain_deadline;
        let _ = tokio::time::timeout_at(deadline, async {
            self.close_idle.cancelled().await;
            self.requests.wait_idle().await;
        })
        .await;
    }
}

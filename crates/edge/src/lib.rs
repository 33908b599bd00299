//! The HTTP edge every multi-server server shares, on the `http` 1.x types and with no web
//! framework: each behaviour a managed server owes its users, written once.
//!
//! - [`admin`]: `GET /__healthz`, `GET /__readyz`, `GET /__serverz` and the changes
//!   (`POST /__quitquitquitz`, `/__readyz/fail`, `/__readyz/ok`, `/__upgradez`), answered from the manager's
//!   data, with their method, peer and token rules;
//! - [`scope`]: the request scope — begun on the request head, finished on the response head
//!   (`x-request-id`, `Connection: close` once the server drains, the status, the one log
//!   line), aborted when dropped — and [`Streamed`], which keeps it open until the last byte
//!   of a streamed body;
//! - [`errors`]: one JSON error shape for 400/403/404/405 (with `Allow`)/408/413/415/431/500
//!   and handler panics;
//! - [`limits`]: body size, request-head and body-read deadlines as one [`Limits`], with a
//!   bounded, timed [`read_body`] and a [`HeadDeadline`] for servers with no head timer;
//! - [`connections`]: the per-server connection limit (over it, `503` and close);
//! - [`accept_unless_stopped`]: the stop-aware accept of a framework's own acceptor;
//! - `hyper` (feature `hyper`): the serve loop of a server built on hyper (plain hyper,
//!   axum) that keeps the manager's stop contract, and `Edged`, the whole edge in front of a
//!   hyper service;
//! - `testing` (feature `testing`): one server under a manager, for the framework crates'
//!   own tests;
//! - [`policy`]: loopback-only `Host` names and the rule for changes (loopback peer, never
//!   cross-site).
//!
//! A framework crate calls [`Edge::begin`] first thing for every request, answers what the
//! edge answered, routes the rest, and puts the scope's headers on whatever it answers.
//! poem, salvo, axum and hyper use the `http` types directly; actix-web, still on `http`
//! 0.2, converts at its edge.
//!
//! ```
//! use edge::{Begun, Edge, EdgeConfig, RequestHead};
//! # use manager::{BoxFuture, ServeContext, Server, ServerConfig, ServerManager, ShutdownReason};
//! # struct Probe;
//! # impl Server for Probe {
//! #     fn framework(&self) -> &'static str { "none" }
//! #     fn serve(self: std::sync::Arc<Self>, _: std::net::TcpListener, ctx: ServeContext)
//! #         -> BoxFuture<'static, anyhow::Result<()>> {
//! #         Box::pin(async move { check(Edge::new(ctx.clone(), EdgeConfig::default()));
//! #             ctx.manager().request_shutdown(ShutdownReason::Requested { why: "done".into() });
//! #             ctx.stop_accepting().cancelled().await; Ok(()) })
//! #     }
//! # }
//! fn check(edge: Edge) {
//!     let head = RequestHead { method: "GET", path: "/__healthz", ..RequestHead::default() };
//!     match edge.begin(&head) {
//!         Begun::Answered(scope, reply) => {
//!             assert_eq!(reply.status(), 200);
//!             scope.finish(reply.status().as_u16());
//!         }
//!         Begun::Route(_) => unreachable!("the edge answers the admin endpoints"),
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let mut manager = ServerManager::new().handle_signals(false);
//! # manager.add_server(ServerConfig::new("probe"), Probe);
//! # let _ = manager.run().await;
//! # }
//! ```

pub mod admin;
pub mod connections;
pub mod errors;
#[cfg(feature = "hyper")]
pub mod hyper;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod scope;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use http::StatusCode;
use manager::ServeContext;

pub use connections::{Admitted, ConnectionLimit};
pub use errors::Reply;
pub use limits::{BodyError, HeadDeadline, Limits, content_length, read_body};
pub use policy::{ChangePolicy, HostPolicy, RequestHead};
pub use scope::{RequestScope, Streamed};

/// How long an acceptor of the edge may take, once told to stop, to accept what the kernel
/// had queued ([`accept_or_done`]; it gives up at four fifths of it): what a server whose
/// acceptor uses the edge's must return from [`Server::accept_stop_lag`](manager::Server), or
/// the manager stops the socket at once and the queue is reset instead of served. An upper
/// bound for a loaded machine: with nothing queued, the acceptor calls `done_accepting` after
/// one [`ACCEPT_DRAIN_LOOK`].
pub const ACCEPT_STOP_LAG: std::time::Duration = std::time::Duration::from_millis(250);

/// How long the drain waits for one more queued connection before it calls the queue empty:
/// a connection the kernel queued shows only once the runtime's I/O driver has seen the
/// socket's readiness, which a look without waiting can miss.
pub const ACCEPT_DRAIN_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs `accept` (an acceptor's next accept) until the server is told to stop accepting; then
/// takes only a connection the kernel already queued, so that it is served instead of reset
/// when the socket stops listening. `None` once nothing is left: the manager is told
/// ([`ServeContext::done_accepting`]) and no accept may run again.
pub async fn accept_or_done<T>(
    ctx: &ServeContext,
    accept: impl std::future::Future<Output = std::io::Result<T>>,
) -> Option<std::io::Result<T>> {
    let mut accept = std::pin::pin!(accept);
    tokio::select! {
        biased;
        () = ctx.stop_accepting().cancelled() => {}
        accepted = &mut accept => return Some(accepted),
    }
    // What was queued, within four fifths of the lag the manager allows (a flood must not
    // keep the drain going). Not from a socket that goes on listening (an upgrade's
    // successor, systemd): its queue keeps filling, is the next process's, and a connection
    // taken now would be closed as idle before its request arrives.
    let in_time = !ctx.socket_lives_on()
        && ctx
            .since_stop_accepting()
            .is_none_or(|since| since < ACCEPT_STOP_LAG * 4 / 5);
    if in_time {
        // An accept error now (the socket has stopped listening, out of descriptors) ends the
        // drain, as a timeout does (nothing is left): retrying would only delay the stop.
        if let Ok(Ok(accepted)) = tokio::time::timeout(ACCEPT_DRAIN_LOOK, accept.as_mut()).await {
            return Some(Ok(accepted));
        }
    }
    ctx.done_accepting();
    None
}

/// [`accept_or_done`] for a framework's acceptor, which has no way to say "no more": once
/// nothing is left it never resolves (the framework stops on its shutdown signal).
pub async fn accept_unless_stopped<T>(
    ctx: &ServeContext,
    accept: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match accept_or_done(ctx, accept).await {
        Some(accepted) => accepted,
        None => std::future::pending().await,
    }
}

/// What an acceptor does when `accept` fails (out of file descriptors, a connection reset
/// before it was accepted): logs it and waits a moment, instead of returning the error to a
/// framework loop that would retry at once and spin a core (poem's does).
pub async fn accept_failed(ctx: &ServeContext, err: std::io::Error) {
    tracing::warn!(server = ctx.name(), error = %err, "accept failed; retrying in 50 ms");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// How a server's edge behaves: its limits and who it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EdgeConfig {
    /// What a client may send, and how slowly.
    pub limits: Limits,
    /// Which `Host` names the server answers under.
    pub hosts: HostPolicy,
    /// Who may make changes.
    pub changes: ChangePolicy,
    /// Whether this server serves the admin changes ([`admin::CHANGES`]; off: 403 naming the
    /// listener that does), for public servers whose operators change the process through the
    /// loopback admin listener.
    pub admin_changes: bool,
    /// The server's route templates (`/flow/{name}`), the `http_route` label of its metrics
    /// ([`route::matched`]); the admin endpoints are added by the edge.
    pub routes: &'static [&'static str],
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            limits: Limits::default(),
            hosts: HostPolicy::default(),
            changes: ChangePolicy::default(),
            admin_changes: true,
            routes: &[],
        }
    }
}

impl EdgeConfig {
    /// The defaults: [`Limits::default`], any `Host`, changes left to the routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Without the admin changes (403): quit and readiness changes through another listener
    /// (the admin one).
    #[must_use]
    pub fn without_admin_changes(mut self) -> Self {
        self.admin_changes = false;
        self
    }

    /// With these route templates (see [`EdgeConfig::routes`]).
    #[must_use]
    pub fn routes(mut self, routes: &'static [&'static str]) -> Self {
        self.routes = routes;
        self
    }

    /// With these limits.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A server for this machine only: loopback `Host` names on every path, and changes from
    /// a loopback peer and never cross-site.
    #[must_use]
    pub fn loopback_only(mut self) -> Self {
        self.hosts = HostPolicy::Loopback;
        self.changes = ChangePolicy::SameOriginLoopback;
        self
    }

    /// Loopback `Host` names on every path; changes left to the routes.
    #[must_use]
    pub fn loopback_hosts(mut self) -> Self {
        self.hosts = HostPolicy::Loopback;
        self
    }
}

/// One server's edge: cheap to clone, shared by every connection of the server.
#[derive(Debug, Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: ServeContext,
    config: EdgeConfig,
}

/// What [`Edge::begin`] decided for a request.
#[derive(Debug)]
#[must_use = "the scope must be finished, and an answer sent"]
pub enum Begun {
    /// The framework routes it; finish the scope with the answer.
    Route(RequestScope),
    /// The edge answered it (an admin endpoint, or a refusal): send the reply, stamped with
    /// the scope's headers, and finish the scope with its status.
    Answered(RequestScope, Reply),
}

impl Edge {
    /// The edge of the server that `ctx` belongs to.
    pub fn new(ctx: ServeContext, config: EdgeConfig) -> Self {
        Edge {
            inner: Arc::new(Inner { ctx, config }),
        }
    }

    /// The server's context.
    pub fn ctx(&self) -> &ServeContext {
        &self.inner.ctx
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// The config.
    pub fn config(&self) -> &EdgeConfig {
        &self.inner.config
    }

    /// Whether `port` is one a server of this process listens on (a browser page of one of
    /// them may call the others: the Dev UI's page).
    fn is_own_port(&self, port: u16) -> bool {
        self.inner
            .ctx
            .manager()
            .server_info()
            .servers
            .iter()
            .filter_map(|server| server.address.as_deref())
            .any(|address| {
                address
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p == port.to_string())
            })
    }

    /// Whether [`Edge::begin`] looks at a request's headers, for its method and path: on a
    /// loopback-only server always (`Host`, `Origin`), elsewhere only for `/__metrics`
    /// (`Accept`) and for a change the edge guards (an admin change, or any change under
    /// [`ChangePolicy::SameOriginLoopback`]). A public API's plain request needs none, and
    /// reading them cost ~700 instructions a request on actix (callgrind).
    pub fn reads_headers(&self, method: &str, path: &str) -> bool {
        let config = &self.inner.config;
        config.hosts == HostPolicy::Loopback
            || path == admin::METRICS
            || (policy::is_change(method)
                && (config.changes == ChangePolicy::SameOriginLoopback
                    || path.starts_with(admin::PREFIX)))
    }

    /// The facts [`Edge::begin`] needs of a request: [`RequestHead::from_parts`], the headers
    /// read only when [`Edge::reads_headers`] says so (and their iterator made only then:
    /// actix's costs ~60 instructions to start, callgrind). A route that checks a change
    /// itself (a framework's own quit endpoint) builds its full head with [`RequestHead::of`].
    pub fn head<'a, V: policy::HeaderText<'a>, I: Iterator<Item = (&'a str, V)>>(
        &self,
        method: &'a str,
        path: &'a str,
        peer: Option<std::net::IpAddr>,
        headers: impl FnOnce() -> I,
        authority: impl FnOnce() -> Option<&'a str>,
    ) -> RequestHead<'a> {
        if self.reads_headers(method, path) {
            RequestHead::from_parts(method, path, peer, headers(), authority)
        } else {
            RequestHead::without_headers(method, path, peer)
        }
    }

    /// [`Edge::head`] of an `http` 1.x request.
    pub fn head_of<'a>(
        &self,
        method: &'a http::Method,
        uri: &'a http::Uri,
        headers: &'a http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> RequestHead<'a> {
        self.head(
            method.as_str(),
            uri.path(),
            peer,
            || policy::header_parts(headers),
            || uri.authority().map(|a| a.as_str()),
        )
    }

    /// Begins a request: its scope (counted and logged from now on) and, when the edge
    /// answers the request itself, the answer: a refused `Host` or change (403), or an admin
    /// endpoint.
    pub fn begin(&self, head: &RequestHead<'_>) -> Begun {
        let ctx = &self.inner.ctx;
        let config = &self.inner.config;
        let mut guard = ctx.begin_request(head.method, head.path);
        guard.set_route(route::matched(config.routes, head.path));
        let scope = RequestScope::new(guard);
        let refusal = policy::refuse_host(config.hosts, head)
            .or_else(|| {
                (config.hosts == HostPolicy::Loopback && head.origin.is_some())
                    .then(|| policy::refuse_origin(head, |port| self.is_own_port(port)))
                    .flatten()
            })
            .or_else(|| {
                (config.changes == ChangePolicy::SameOriginLoopback
                    && policy::is_change(head.method))
                .then(|| policy::refuse_change(head))
                .flatten()
            });
        if let Some(refusal) = refusal {
            return Begun::Answered(scope, errors::error(StatusCode::FORBIDDEN, &refusal));
        }
        if !head.path.starts_with(admin::PREFIX) {
            // Not an admin path (every one starts so): routed without looking them up.
            return Begun::Route(scope);
        }
        if !config.admin_changes && admin::CHANGES.contains(&head.path) {
            let refusal = "admin changes are not served on this listener; use the admin listener";
            return Begun::Answered(scope, errors::error(StatusCode::FORBIDDEN, refusal));
        }
        match admin::answer(ctx, head) {
            Some(reply) => Begun::Answered(scope, reply),
            None => Begun::Route(scope),
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use manager::{BoxFuture, Outcome, ServeContext, Server, ShutdownReason};
    use tokio::io::AsyncWriteExt;

    /// Accepts nothing until told to stop, then what the kernel queued: each is answered.
    struct QueueThenDrain(Arc<AtomicUsize>);

    impl Server for QueueThenDrain {
        fn framework(&self) -> &'static str {
            "test"
        }
        fn accept_stop_lag(&self) -> std::time::Duration {
            crate::ACCEPT_STOP_LAG
        }
        fn serve(
            self: Arc<Self>,
            listener: std::net::TcpListener,
            ctx: ServeContext,
        ) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                ctx.stop_accepting().cancelled().await;
                while let Some(accepted) = crate::accept_or_done(&ctx, listener.accept()).await {
                    let (mut stream, _) = accepted?;
                    self.0.fetch_add(1, Ordering::SeqCst);
                    stream.write_all(b"served").await?;
                }
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_queued_at_the_stop_are_served_not_reset() {
        let accepted = Arc::new(AtomicUsize::new(0));
        let started = crate::testing::start("queue", QueueThenDrain(Arc::clone(&accepted))).await;
        let addr = started.addr;
        // Completed by the kernel, waiting in the backlog: nobody has accepted them.
        let queued: Vec<std::net::TcpStream> = (0..5)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        started
            .handle
            .request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let answers = tokio::task::spawn_blocking(move || {
            queued
                .into_iter()
                .map(|mut stream| {
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    let mut text = String::new();
                    stream.read_to_string(&mut text).map(|_| text)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for answer in &answers {
            assert_eq!(answer.as_deref().ok(), Some("served"), "{answers:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
        let report = crate::testing::report_soon(started.run).await;
        // Once they were taken the socket stopped listening: a newcomer is refused.
        let late = std::net::TcpStream::connect(addr).map(|mut s| {
            let _ = s.write_all(b"x");
            let mut byte = [0u8; 1];
            s.read(&mut byte)
        });
        assert!(!matches!(late, Ok(Ok(n)) if n > 0), "{late:?}");
        assert_eq!(report.outcome(), Outcome::Clean);
    }
}

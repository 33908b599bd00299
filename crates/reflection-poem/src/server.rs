//! `ReflectionApi`: the poem server, its one middleware (the edge), its acceptor, and the
//! discovery file's lifecycle.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge::{Admitted, Begun, ConnectionLimit, Edge, EdgeConfig, HeadDeadline, Limits};
use flows::Registry;
use futures_util::FutureExt;
use manager::{BoxFuture, ServeContext, Server};
use poem::http::header::{HeaderName, HeaderValue};
use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Body, Endpoint, IntoResponse, Request, Response, Route};

use crate::api;
use crate::discovery::{RuntimeFile, discovery_root};

/// Mounts routes on the server's router; the routes may use the server's [`State`].
pub(crate) type Mount = Arc<dyn Fn(Route, &Arc<State>) -> Route + Send + Sync>;

/// The reflection server. See the crate docs.
#[derive(Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct ReflectionApi {
    registry: Arc<Registry>,
    name: Option<String>,
    root: Option<PathBuf>,
    limits: Limits,
    pub(crate) extra: Vec<Mount>,
    runtime_file: Arc<Mutex<Option<PathBuf>>>,
}

impl std::fmt::Debug for ReflectionApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectionApi")
            .field("registry", &self.registry)
            .field("name", &self.name)
            .field("root", &self.root)
            .field("limits", &self.limits)
            .field("extra_routes", &self.extra.len())
            .field("runtime_file", &self.runtime_file)
            .finish()
    }
}

impl ReflectionApi {
    /// A reflection server for the flows of `registry`, with the default limits.
    pub fn new(registry: Arc<Registry>) -> Self {
        ReflectionApi {
            registry,
            name: None,
            root: None,
            limits: Limits::default(),
            extra: Vec::new(),
            runtime_file: Arc::default(),
        }
    }

    /// The runtime's display name in the discovery file.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where `.genkit/runtimes/` goes, instead of the CLI's rule applied to the working
    /// directory.
    pub fn discovery_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// What a client may send, and how slowly.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Mounts more routes next to the Reflection API's (behind the same middleware). Each
    /// call adds to the previous ones.
    pub fn routes(mut self, mount: impl Fn(Route) -> Route + Send + Sync + 'static) -> Self {
        self.extra
            .push(Arc::new(move |route, _: &Arc<State>| mount(route)));
        self
    }

    /// The discovery file written at startup, until it is removed at shutdown.
    pub fn runtime_file(&self) -> Option<PathBuf> {
        self.runtime_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn app(&self, state: Arc<State>) -> impl Endpoint<Output = Response> + use<> {
        // No CORS: the genkit CLI is not a browser (its own Dev UI talks to the CLI, which
        // proxies), and a web page must not drive the runtime; the edge refuses foreign
        // origins outright.
        let routes = api::routes(Route::new(), &state);
        let routes = self
            .extra
            .iter()
            .fold(routes, |routes, mount| mount(routes, &state));
        Edged {
            edge: state.edge.clone(),
            inner: routes,
        }
    }
}

/// What every handler can reach: given to it by [`api::Stateful`].
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Arc<Registry>,
    pub(crate) edge: Edge,
    pub(crate) runtime_id: String,
}

static GENKIT_VERSION_HEADER: HeaderName = HeaderName::from_static("x-genkit-version");

/// The routes behind the edge: see [`around`].
struct Edged<E> {
    edge: Edge,
    inner: E,
}

impl<E: Endpoint> Endpoint for Edged<E> {
    type Output = Response;

    /// [`around`]'s future itself: an `async` wrapper here would move the request and the
    /// routes' future once more (memcpy).
    fn call(&self, req: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        around(&self.edge, &self.inner, req)
    }
}

/// The one middleware: the edge begins the request (and answers the admin endpoints and the
/// refusals itself); the rest goes to the routes, a panic answering 500 for that request only
/// and poem's own 404/405 the edge's JSON errors. Every answer carries `x-genkit-version` and
/// the scope's headers; a streamed body (`runAction`'s result follows its headers) keeps the
/// request in flight until its last byte.
async fn around<E: Endpoint>(edge: &Edge, inner: &E, req: Request) -> poem::Result<Response> {
    let peer = req.remote_addr().as_socket_addr().map(SocketAddr::ip);
    let begun = edge.begin(&edge.head_of(req.method(), req.uri(), req.headers(), peer));
    let (scope, mut res) = match begun {
        Begun::Answered(scope, reply) => (scope, api::reply(reply)),
        Begun::Route(scope) => {
            let res = match AssertUnwindSafe(inner.call(req)).catch_unwind().await {
                Ok(Ok(res)) => res.into_response(),
                // poem hands 404/405 (and extractor failures) to middleware as errors.
                Ok(Err(err)) => api::poem_error(&err, scope.path()),
                Err(panic) => api::reply(edge::errors::panicked(
                    edge.ctx().name(),
                    scope.id(),
                    &*panic,
                )),
            };
            (scope, res)
        }
    };
    let headers = res.headers_mut();
    headers.insert(
        GENKIT_VERSION_HEADER.clone(),
        HeaderValue::from_static(crate::GENKIT_VERSION),
    );
    scope.stamp(headers);
    let status = res.status().as_u16();
    let body: http_body_util::combinators::BoxBody<bytes::Bytes, io::Error> =
        res.take_body().into();
    if http_body::Body::size_hint(&body).exact().is_some() {
        res.set_body(Body::from(body));
        scope.finish(status);
    } else {
        let body = Body::from(body).into_bytes_stream();
        res.set_body(Body::from_bytes_stream(scope.finish_at_end(status, body)));
    }
    Ok(res)
}

/// Accepts like poem's [`TcpAcceptor`], within the connection limit, with an [`HeadDeadline`]
/// on every connection (poem gives hyper no timer, so neither hyper's header-read timeout nor
/// a keep-alive idle timeout ever fires), and stops accepting
/// the moment `stop` fires (the manager then stops the socket listening, and fires
/// `close_idle`, which poem is given as its shutdown signal).
struct StopAwareAcceptor {
    inner: TcpAcceptor,
    head_timeout: Duration,
    limit: ConnectionLimit,
    busy: edge::limits::Busy,
    ctx: ServeContext,
}

impl Acceptor for StopAwareAcceptor {
    type Io = HeadDeadline<Admitted<<TcpAcceptor as Acceptor>::Io>>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = loop {
            match edge::accept_unless_stopped(&self.ctx, self.inner.accept()).await {
                Ok((io, local, remote, scheme)) => {
                    if let Some(io) = self.limit.admit(self.ctx.name(), io) {
                        break (io, local, remote, scheme);
                    }
                }
                Err(err) => edge::accept_failed(&self.ctx, err).await,
            }
        };
        Ok((
            HeadDeadline::new(io, self.head_timeout).idle_unless(Arc::clone(&self.busy)),
            local,
            remote,
            scheme,
        ))
    }
}

impl Server for ReflectionApi {
    fn framework(&self) -> &'static str {
        "poem"
    }

    /// What the kernel queued before the stop is accepted and served, not reset.
    fn accept_stop_lag(&self) -> std::time::Duration {
        edge::ACCEPT_STOP_LAG
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            // Genkit's tools reach this server as localhost or 127.0.0.1: no other Host name.
            let edge = Edge::new(
                ctx.clone(),
                EdgeConfig::new()
                    .limits(self.limits)
                    .routes(crate::api::ROUTES)
                    .loopback_hosts(),
            );
            let state = Arc::new(State {
                registry: Arc::clone(&self.registry),
                runtime_id: runtime_id(&ctx),
                edge,
            });
            let acceptor = StopAwareAcceptor {
                inner: TcpAcceptor::from_std(listener)?,
                head_timeout: self.limits.head_timeout,
                limit: ConnectionLimit::new(self.limits.connections),
                busy: {
                    let ctx = ctx.clone();
                    Arc::new(move || ctx.requests().in_flight() > 0)
                },
                ctx: ctx.clone(),
            };
            let close_idle = ctx.close_idle().clone();
            poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    self.app(state),
                    async move { close_idle.cancelled().await },
                    Some(ctx.drain_deadline()),
                )
                .await?;
            Ok(())
        })
    }

    /// The socket already listens here, so the CLI's first health check finds it.
    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            // Without its discovery file the CLI does not find this runtime, but the API
            // still serves (a read-only working directory under systemd): one warning.
            let root = match &self.root {
                Some(root) => Ok(root.clone()),
                None => std::env::current_dir().map(|cwd| discovery_root(&cwd)),
            };
            let file = RuntimeFile::new(ctx.local_addr().port(), self.name.clone());
            match root.and_then(|root| file.write(&root).map(|path| (root, path))) {
                Ok((_, path)) => {
                    tracing::info!(server = ctx.name(), path = %path.display(), "runtime file written");
                    *self.runtime_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
                }
                Err(err) => tracing::warn!(
                    server = ctx.name(),
                    error = %err,
                    "cannot write the runtime file; the genkit CLI will not find this runtime"
                ),
            }
            Ok(())
        })
    }

    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let path = self
                .runtime_file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(path) = path {
                RuntimeFile::remove_if_ours(&path)?;
                tracing::info!(server = ctx.name(), path = %path.display(), "runtime file removed");
            }
            Ok(())
        })
    }
}

fn runtime_id(ctx: &ServeContext) -> String {
    format!("{}-{}", std::process::id(), ctx.local_addr().port())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;

    use flows::{FlowContext, FlowError};
    use manager::{ManagerHandle, Outcome, ShutdownReason};
    use poem::{get, handler};
    use serde_json::Value;
    use tokio::sync::Notify;

    use super::*;

    pub(crate) fn temp_root(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflection-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) async fn start(
        api: ReflectionApi,
    ) -> (ManagerHandle, tokio::task::JoinHandle<manager::Report>) {
        let edge::testing::Started { handle, run, .. } =
            edge::testing::start("reflection", api).await;
        (handle, run)
    }

    /// A discovery file that cannot be written (here its folder is a file) is one warning:
    /// the API still serves and the stop is clean.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unwritable_discovery_folder_does_not_stop_the_server() {
        let root = temp_root("unwritable");
        let blocked = root.join("not-a-folder");
        std::fs::write(&blocked, "").unwrap();
        let api = ReflectionApi::new(Registry::new()).discovery_root(&blocked);
        let (handle, run) = start(api.clone()).await;
        let url = handle.server_info().servers[0].url.clone().unwrap();
        let status = tokio::task::spawn_blocking(move || {
            ureq::get(format!("{url}/api/__health"))
                .call()
                .unwrap()
                .status()
                .as_u16()
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(api.runtime_file(), None);
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
        std::fs::remove_dir_all(&root).unwrap();
    }

    pub(crate) fn addr_of(handle: &ManagerHandle) -> String {
        let url = handle.server_info().servers[0].url.clone().unwrap();
        url.trim_start_matches("http://").to_owned()
    }

    /// One request on its own connection: status, lower-case headers, body.
    pub(crate) async fn raw(addr: &str, request: String) -> (u16, Vec<(String, String)>, String) {
        let addr = addr.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            conn.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            let mut lines = head.lines();
            let status = lines.next().unwrap()[9..12].parse().unwrap();
            let headers = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect();
            (status, headers, body.to_owned())
        })
        .await
        .unwrap()
    }

    pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `runAction` whose flow is still running when shutdown starts (its headers are out,
    /// its result is not) still completes with its result, and the server stops as soon as it
    /// has: the middleware keeps a streamed body's request in flight until its last byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_request_completes_during_shutdown() {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let registry = Registry::new();
        let (e, r) = (Arc::clone(&entered), Arc::clone(&release));
        registry.define_flow(
            "hold",
            "waits to be released",
            move |name: String, _: FlowContext| {
                let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                async move {
                    e.notify_one();
                    r.notified().await;
                    Ok::<_, FlowError>(format!("released {name}"))
                }
            },
        );
        let root = temp_root("inflight");
        let api = ReflectionApi::new(registry).discovery_root(&root);
        let (handle, run) = start(api).await;
        let url = handle.server_info().servers[0].url.clone().unwrap();

        let request = tokio::task::spawn_blocking(move || {
            let mut res = ureq::post(format!("{url}/api/runAction"))
                .content_type("application/json")
                .send(r#"{"key":"/flow/hold","input":"Al"}"#)
                .unwrap();
            (
                res.status().as_u16(),
                res.body_mut().read_to_string().unwrap(),
            )
        });
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .unwrap();
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!run.is_finished(), "must wait for the running flow");
        release.notify_one();

        let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["result"], "released Al", "{body}");
        let report = edge::testing::report_soon(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
        assert_eq!(report.servers[0].requests.aborted, 0);
        let runtimes = std::fs::read_dir(root.join(".genkit/runtimes"))
            .unwrap()
            .count();
        assert_eq!(runtimes, 0, "the discovery file is removed at shutdown");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[handler]
    fn boom() -> &'static str {
        panic!("boom")
    }

    /// The edge answers its endpoints and refusals, poem's 404/405 and a panic are the edge's
    /// JSON errors, and every answer carries `x-request-id` and `x-genkit-version`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_edge_answers_around_the_routes() {
        let root = temp_root("edge");
        let api = ReflectionApi::new(Registry::new())
            .discovery_root(&root)
            .routes(|route| route.at("/boom", get(boom)));
        let (handle, run) = start(api).await;
        let addr = addr_of(&handle);
        let ask = |method: &str, path: &str, extra: &str| {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n"
            )
        };
        let json = |body: &str| serde_json::from_str::<Value>(body).unwrap();

        let mut ids = Vec::new();
        for (method, path, extra, status) in [
            ("GET", "/api/__health", "", 200),
            ("GET", "/__healthz", "", 200),
            ("GET", "/nope", "", 404),
            ("GET", "/api/runAction", "", 405),
            ("GET", "/boom", "", 500),
            (
                "POST",
                "/api/__quitquitquit",
                "Origin: http://evil.example\r\n",
                403,
            ),
            (
                "POST",
                "/api/cancelAction",
                "Content-Type: text/plain\r\n",
                400,
            ),
            // A query string that does not parse, in a handler that answers at once and in
            // one that reads a body.
            ("GET", "/api/__health?id=a&id=b", "", 400),
            ("POST", "/api/runAction?stream=a&stream=b", "", 400),
        ] {
            let (got, headers, body) = raw(&addr, ask(method, path, extra)).await;
            assert_eq!(got, status, "{method} {path}: {body}");
            assert_eq!(
                header(&headers, "x-genkit-version"),
                Some(crate::GENKIT_VERSION),
                "{path}"
            );
            ids.push(header(&headers, "x-request-id").unwrap().to_owned());
            if status >= 400 {
                assert_eq!(header(&headers, "content-type"), Some("application/json"));
                assert!(json(&body)["error"].is_string(), "{path}: {body}");
            }
            match path {
                "/nope" => assert_eq!(json(&body)["path"], "/nope"),
                "/api/__health?id=a&id=b" | "/api/runAction?stream=a&stream=b" => {
                    assert_eq!(json(&body)["error"], "Bad Request");
                }
                "/api/runAction" => assert_eq!(header(&headers, "allow"), Some("POST")),
                "/boom" => assert_eq!(json(&body)["error"], "internal error"),
                "/api/cancelAction" => {
                    assert_eq!(
                        json(&body)["error"],
                        "request body is empty; expected a JSON object"
                    );
                }
                _ => {}
            }
        }
        ids.dedup();
        assert_eq!(ids.len(), 9, "one id per request: {ids:?}");

        let foreign = format!(
            "GET /api/actions HTTP/1.1\r\nHost: rebind.evil:{}\r\nConnection: close\r\n\r\n",
            addr.rsplit(':').next().unwrap()
        );
        let (status, headers, _) = raw(&addr, foreign).await;
        assert_eq!(status, 403);
        assert!(header(&headers, "x-request-id").is_some());

        let (status, _, body) = raw(&addr, ask("GET", "/api/__quitquitquit", "")).await;
        assert_eq!((status, json(&body)["status"].as_str()), (200, Some("OK")));
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(
            handle.shutdown_reason(),
            Some(ShutdownReason::Quit {
                server: "reflection".into()
            })
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

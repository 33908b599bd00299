//! `DevUi`: the salvo server, its one middleware, and how the manager's shutdown maps onto
//! salvo's server handle.

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use flows::Registry;
use futures_util::FutureExt;
use manager::{BoxFuture, GuardCell, ServeContext, Server};
use salvo::conn::tcp::TcpAcceptor;
use salvo::conn::{Accepted, Acceptor, Holding};
use salvo::fuse::ArcFusePolicy;
use salvo::http::header::{CONNECTION, HOST, HeaderName, HeaderValue, ORIGIN};
use salvo::http::{Method, StatusCode};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Service, async_trait};

use crate::api;

/// How long a client may take to send a request head (also how long a keep-alive connection
/// may sit idle between requests): salvo's fuse `http1_header_timeout`.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The Developer UI server. See the crate docs.
#[derive(Debug, Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct DevUi {
    registry: Arc<Registry>,
}

impl DevUi {
    /// A Developer UI for the flows of `registry` and the servers of whichever manager runs it.
    pub fn new(registry: Arc<Registry>) -> Self {
        DevUi { registry }
    }
}

/// What every handler reaches through the depot.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Arc<Registry>,
    pub(crate) ctx: ServeContext,
}

/// The service: routes behind the one middleware. The middleware sits on the `Service`, not
/// on the router, because router hoops never see requests that match no route (404/405).
pub(crate) fn service(state: Arc<State>) -> Service {
    Service::new(api::router()).hoop(Track { state })
}

impl Server for DevUi {
    fn framework(&self) -> &'static str {
        "salvo"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let state = Arc::new(State {
                registry: Arc::clone(&self.registry),
                ctx: ctx.clone(),
            });
            listener.set_nonblocking(true)?;
            let acceptor = StopAwareAcceptor {
                inner: TcpAcceptor::try_from(tokio::net::TcpListener::from_std(listener)?)?,
                ctx: ctx.clone(),
            };
            // salvo's default header-read timeout is 30 s; a client that has not sent its
            // request head after HEAD_TIMEOUT is dropped (slowloris).
            let fuse = salvo::fuse::FuseConfig::default().with_http1_header_timeout(HEAD_TIMEOUT);
            let server = salvo::Server::new(acceptor).fuse_config(fuse);
            let handle = server.handle();
            // salvo stops on a command, not on a future: send it when the manager says so.
            // The event streams end on the same token, so open pages do not hold the drain.
            let stopper = tokio::spawn({
                let ctx = ctx.clone();
                async move {
                    ctx.shutdown().cancelled().await;
                    // The acceptor has stopped accepting on the same token, so the socket
                    // (which salvo keeps open while it drains) can stop listening first:
                    // clients that salvo's graceful stop sends away are refused at once.
                    ctx.stop_listening();
                    ctx.close_idle().cancelled().await;
                    handle.stop_graceful(Some(ctx.drain_deadline()));
                }
            });
            // `try_serve`, not `serve`: `serve` panics on an I/O error instead of returning it.
            let result = server.try_serve(service(state)).await;
            stopper.abort();
            result.map_err(Into::into)
        })
    }

    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(server = ctx.name(), url = %format!("http://{}", ctx.local_addr()), "Developer UI");
            Ok(())
        })
    }
}

/// salvo's TCP acceptor, made to stop accepting the moment the manager says so instead of
/// when salvo's accept loop takes its stop command: no accept can then race the socket
/// ceasing to listen.
struct StopAwareAcceptor {
    inner: TcpAcceptor,
    ctx: ServeContext,
}

impl Acceptor for StopAwareAcceptor {
    type Coupler = <TcpAcceptor as Acceptor>::Coupler;
    type Stream = <TcpAcceptor as Acceptor>::Stream;

    fn holdings(&self) -> &[Holding] {
        self.inner.holdings()
    }

    async fn accept(
        &mut self,
        fuse_policy: Option<ArcFusePolicy>,
    ) -> std::io::Result<Accepted<Self::Coupler, Self::Stream>> {
        tokio::select! {
            biased;
            () = self.ctx.shutdown().cancelled() => std::future::pending().await,
            accepted = self.inner.accept(fuse_policy) => accepted,
        }
    }
}

/// The one middleware every request passes: accounting and logging through the manager's
/// request guard, the loopback-only rules, panic → JSON 500, JSON bodies for 404/405, and
/// `Connection: close` while draining.
struct Track {
    state: Arc<State>,
}

#[async_trait]
impl Handler for Track {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let ctx = &self.state.ctx;
        let path = req.uri().path().to_owned();
        let guard = ctx.begin_request(req.method().as_str(), &path);
        let id = guard.id();
        // Parked in the depot so a streaming handler can carry it into its body.
        let cell = Arc::new(GuardCell::new(guard));
        depot.insert_typed(Arc::clone(&cell));
        depot.insert_typed(Arc::clone(&self.state));

        if let Some(refusal) = refuse(req, &path) {
            api::json_error(res, StatusCode::FORBIDDEN, &refusal);
            ctrl.skip_rest();
        } else if let Err(panic) = AssertUnwindSafe(ctrl.call_next(req, depot, res))
            .catch_unwind()
            .await
        {
            let message = manager::admin::panic_message(&*panic);
            tracing::error!(server = ctx.name(), id, panic = message, "handler panicked");
            res.take_body();
            res.headers_mut().clear();
            api::json_error(res, StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }

        let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
        if (status.is_client_error() || status.is_server_error()) && res.body.is_none() {
            // 404 and 405 reach here without a body: answer them as JSON, like every route.
            match status {
                StatusCode::NOT_FOUND => api::json_body(
                    res,
                    status,
                    &serde_json::json!({ "error": "not found", "status": 404, "path": path }),
                ),
                StatusCode::METHOD_NOT_ALLOWED => {
                    api::json_error(res, status, "method not allowed");
                }
                _ => api::json_error(res, status, status.canonical_reason().unwrap_or("error")),
            }
        }
        let headers = res.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
            headers.insert(REQUEST_ID.clone(), value);
        }
        if ctx.requests().is_draining() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(guard) = cell.take() {
            guard.finish(status.as_u16());
        }
    }
}

/// Why a request is refused, if it is.
///
/// - Mutations (anything but GET/HEAD) only from a loopback peer, and, when a browser sends
///   an `Origin`, only from this server's own page: another site open in the same browser
///   must not be able to quit the process with a form post.
/// - The page and `/api/` only under a loopback `Host` name, so a DNS-rebinding site cannot
///   read them. The admin endpoints (`/__*`) stay reachable for probes under any name.
fn refuse(req: &Request, path: &str) -> Option<String> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !path.starts_with("/__") && !host.is_empty() && !is_loopback_host(host) {
        return Some(format!(
            "the Developer UI answers only under a loopback host name, not '{host}'"
        ));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let peer = req.remote_addr().clone().into_std().map(|a| a.ip());
    if !peer.is_some_and(manager::admin::is_loopback) {
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        return Some(format!(
            "changes are accepted from loopback peers only, not from {peer}"
        ));
    }
    if let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) {
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| !host.is_empty() && authority == host);
        if !same {
            return Some(format!(
                "cross-origin change refused: origin '{origin}' is not this page"
            ));
        }
    }
    None
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(manager::admin::is_loopback)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use flows::{FlowContext, FlowError};
    use manager::{Outcome, ProcessState, ServerConfig, ServerManager, ShutdownReason};
    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn loopback_host_names() {
        for host in [
            "localhost:4000",
            "127.0.0.1:4000",
            "127.0.0.1",
            "[::1]:4000",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:4000",
            "10.0.0.1:4000",
            "[2001:db8::1]:80",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    /// A flow run whose request is held open by a `Notify` when shutdown starts still
    /// streams to its end, and the server stops as soon as it has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_request_completes_during_shutdown() {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let registry = Registry::new();
        let (e, r) = (Arc::clone(&entered), Arc::clone(&release));
        registry.define_flow(
            "hold",
            "Waits to be released.",
            move |_: String, _: FlowContext| {
                let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                async move {
                    e.notify_one();
                    r.notified().await;
                    Ok::<_, FlowError>("released".to_owned())
                }
            },
        );
        let mut manager = ServerManager::new()
            .handle_signals(false)
            .drain_deadline(Duration::from_secs(5));
        manager.add_server(ServerConfig::new("devui"), DevUi::new(registry));
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), handle.wait_live())
                .await
                .unwrap(),
            ProcessState::Live
        );
        let addr = handle.server_info().servers[0].address.clone().unwrap();

        // A raw HTTP/1.1 client: the answer is a chunked NDJSON stream, read to its end.
        let request = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let body = r#"{"input":"x"}"#;
            write!(
                stream,
                "POST /api/flows/hold/run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut reader = BufReader::new(stream);
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            let mut rest = String::new();
            // The server closes the connection once it drains.
            reader.read_to_string(&mut rest).unwrap();
            (status, rest)
        });
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .unwrap();
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!run.is_finished(), "must wait for the held request");
        release.notify_one();

        let (status, rest) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap()
            .unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(
            rest.contains(r#""type":"result""#) && rest.contains("released"),
            "{rest}"
        );
        let started = std::time::Instant::now();
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "stopped {:?} after the request ended",
            started.elapsed()
        );
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
    }
}

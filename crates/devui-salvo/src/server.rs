//! `DevUi`: the salvo server, its one middleware (the glue to the edge), and how the
//! manager's stop sequence maps onto salvo's server handle.

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use edge::{Admitted, Begun, ConnectionLimit, Edge, EdgeConfig, Limits, Reply, RequestHead};
use flows::Registry;
use futures_util::FutureExt;
use http::StatusCode;
use http_body_util::BodyDataStream;
use manager::{BoxFuture, ServeContext, Server};
use salvo::conn::tcp::{TcpAcceptor, TcpCoupler};
use salvo::conn::{Accepted, Acceptor, Holding};
use salvo::fuse::ArcFusePolicy;
use salvo::http::ResBody;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Service, async_trait};

use crate::api;

/// What [`DevUi::routes`] adds to the router.
type ExtraRoutes = Arc<dyn Fn(Router) -> Router + Send + Sync>;

/// The Developer UI server. See the crate docs.
#[derive(Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct DevUi {
    registry: Arc<Registry>,
    limits: Limits,
    routes: ExtraRoutes,
}

impl std::fmt::Debug for DevUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevUi")
            .field("registry", &self.registry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl DevUi {
    /// A Developer UI for the flows of `registry` and the servers of whichever manager runs it,
    /// with [`Limits::default`].
    pub fn new(registry: Arc<Registry>) -> Self {
        DevUi {
            registry,
            limits: Limits::default(),
            routes: Arc::new(|router| router),
        }
    }

    /// With these limits (request body size, head and body deadlines).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds routes to the router (after the page's own; e.g. `test_routes::mount` with
    /// the `test-routes` feature). They pass through the same middleware as every route.
    /// Called more than once, each adds to what the previous ones added.
    pub fn routes(mut self, routes: impl Fn(Router) -> Router + Send + Sync + 'static) -> Self {
        let previous = Arc::clone(&self.routes);
        self.routes = Arc::new(move |router| routes(previous(router)));
        self
    }
}

/// What every handler reaches through the depot.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Arc<Registry>,
    pub(crate) edge: Edge,
    pub(crate) history: crate::history::History,
}

impl State {
    pub(crate) fn ctx(&self) -> &ServeContext {
        self.edge.ctx()
    }
}

/// Put in the depot by a handler whose streamed answer lasts as long as the client wants
/// (the event stream): the request then counts as answered once the head goes out, so an open
/// page neither holds the drain nor skews latency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LongLived;

/// The service: routes behind the one middleware. The middleware sits on the `Service`, not
/// on the router, because router hoops never see requests that match no route (404/405).
fn service(state: Arc<State>, routes: &ExtraRoutes) -> Service {
    Service::new(routes(api::router())).hoop(Track { state })
}

impl Server for DevUi {
    fn framework(&self) -> &'static str {
        "salvo"
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
            let config = EdgeConfig::new()
                .limits(self.limits)
                .routes(crate::api::ROUTES)
                .loopback_only();
            let state = Arc::new(State {
                registry: Arc::clone(&self.registry),
                edge: Edge::new(ctx.clone(), config),
                history: crate::history::History::default(),
            });
            // The charts' five minutes, sampled until the server stops accepting.
            tokio::spawn({
                let state = Arc::clone(&state);
                async move { crate::history::sample(&state.history, state.ctx(), &state.registry).await }
            });
            listener.set_nonblocking(true)?;
            let acceptor = StopAwareAcceptor {
                inner: TcpAcceptor::try_from(tokio::net::TcpListener::from_std(listener)?)?,
                limit: ConnectionLimit::new(self.limits.connections),
                ctx: ctx.clone(),
            };
            // A client that has not sent its request head within the head timeout (or a
            // keep-alive connection idle that long) is dropped: slowloris.
            let fuse = salvo::fuse::FuseConfig::default()
                .with_http1_header_timeout(self.limits.head_timeout);
            let server = salvo::Server::new(acceptor).fuse_config(fuse);
            let handle = server.handle();
            // salvo stops on a command, not on a future: send it when the manager says idle
            // connections must close (the acceptor stopped on `stop_accepting` already).
            let stopper = tokio::spawn({
                let ctx = ctx.clone();
                async move {
                    ctx.close_idle().cancelled().await;
                    handle.stop_graceful(Some(ctx.drain_deadline()));
                }
            });
            // `try_serve`, not `serve`: `serve` panics on an I/O error instead of returning it.
            let result = server.try_serve(service(state, &self.routes)).await;
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
/// when salvo's accept loop takes its stop command (no accept can then race the socket
/// ceasing to listen), and to keep the connection limit.
struct StopAwareAcceptor {
    inner: TcpAcceptor,
    limit: ConnectionLimit,
    ctx: ServeContext,
}

type Stream = Admitted<<TcpAcceptor as Acceptor>::Stream>;

impl Acceptor for StopAwareAcceptor {
    type Coupler = TcpCoupler<Stream>;
    type Stream = Stream;

    fn holdings(&self) -> &[Holding] {
        self.inner.holdings()
    }

    async fn accept(
        &mut self,
        fuse_policy: Option<ArcFusePolicy>,
    ) -> std::io::Result<Accepted<Self::Coupler, Self::Stream>> {
        loop {
            let accept = self.inner.accept(fuse_policy.clone());
            let accepted = match edge::accept_unless_stopped(&self.ctx, accept).await {
                Ok(accepted) => accepted,
                Err(err) => {
                    edge::accept_failed(&self.ctx, err).await;
                    continue;
                }
            };
            let Some(stream) = self.limit.admit(self.ctx.name(), accepted.stream) else {
                continue;
            };
            return Ok(Accepted {
                coupler: TcpCoupler::new(),
                stream,
                fuse_config: accepted.fuse_config,
                conn_ctrl: accepted.conn_ctrl,
                local_addr: accepted.local_addr,
                remote_addr: accepted.remote_addr,
                http_scheme: accepted.http_scheme,
            });
        }
    }
}

/// All the request facts the policy knows, for a route that checks a change itself.
pub(crate) fn head(req: &Request) -> RequestHead<'_> {
    RequestHead::of(req.method(), req.uri(), req.headers(), peer(req))
}

fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.remote_addr().clone().into_std().map(|a| a.ip())
}

/// Writes an answer the edge built (status, headers, whole body) into `res`.
pub(crate) fn reply(res: &mut Response, reply: Reply) {
    let (parts, body) = reply.into_parts();
    res.status_code(parts.status);
    if res.headers().is_empty() {
        // Moved, not copied: `extend` would size the map for these headers alone (one, for
        // most answers), and the scope's headers would grow it again (moving took 1,945
        // instructions off a `/__healthz`, callgrind).
        *res.headers_mut() = parts.headers;
    } else {
        res.headers_mut().extend(parts.headers);
    }
    res.replace_body(ResBody::Once(body));
}

/// The one middleware every request passes: the glue to the edge, which begins the request
/// (counted, logged, refused under a foreign `Host` or for a change from elsewhere, admin
/// endpoints answered), then routing with panics caught, JSON bodies for salvo's bodiless
/// errors, the scope's headers, and the scope finished at the head or, for a streamed
/// body, at its last byte.
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
        let edge = &self.state.edge;
        let head = edge.head_of(req.method(), req.uri(), req.headers(), peer(req));
        let scope = match edge.begin(&head) {
            Begun::Answered(scope, answer) => {
                ctrl.skip_rest();
                let status = answer.status();
                reply(res, answer);
                scope.stamp(res.headers_mut());
                scope.finish(status.as_u16());
                return;
            }
            Begun::Route(scope) => scope,
        };
        depot.insert_typed(Arc::clone(&self.state));

        if let Err(panic) = AssertUnwindSafe(ctrl.call_next(req, depot, res))
            .catch_unwind()
            .await
        {
            res.take_body();
            res.headers_mut().clear();
            reply(
                res,
                edge::errors::panicked(edge.ctx().name(), scope.id(), &*panic),
            );
        }

        let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
        if (status.is_client_error() || status.is_server_error())
            && (res.body.is_none() || res.body.is_error())
        {
            // salvo's router answers 404 and 405 without a body: the same JSON as every error.
            reply(
                res,
                edge::errors::for_status(status, req.uri().path(), None),
            );
        }
        scope.stamp(res.headers_mut());
        let status = status.as_u16();
        match res.take_body() {
            body @ (ResBody::Stream(_)
            | ResBody::Channel(_)
            | ResBody::Boxed(_)
            | ResBody::Hyper(_))
                if !depot.contains_typed::<LongLived>() =>
            {
                // In flight until the last byte; dropped before it, logged as aborted.
                res.stream(scope.finish_at_end(status, BodyDataStream::new(body)));
            }
            body => {
                res.body = body;
                scope.finish(status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use flows::{FlowContext, FlowError};
    use manager::{Outcome, ShutdownReason};
    use tokio::sync::Notify;

    use super::*;

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
        let edge::testing::Started { handle, run, .. } =
            edge::testing::start("devui", DevUi::new(registry)).await;
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
        let report = edge::testing::report_soon(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
    }
}

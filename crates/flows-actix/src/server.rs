//! `FlowsApi`: the actix-web server, its builder, and how the manager's stop sequence maps
//! onto actix.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use edge::{Edge, EdgeConfig, Limits};
use flows::Registry;
use manager::{BoxFuture, ServeContext, Server};

use crate::middleware::Track;
use crate::routes;

/// How much later than the manager's deadline actix's own whole-second timer may fire.
const ACTIX_TIMER_ROUNDING: Duration = Duration::from_millis(1100);

/// How long to wait for actix's worker threads to drop the requests a forced stop cut. Less
/// than the manager's grace after the deadline.
const WORKER_UNWIND: Duration = Duration::from_millis(400);

type Configure = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// The flows API server. See the crate docs.
#[derive(Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct FlowsApi {
    registry: Arc<Registry>,
    workers: usize,
    limits: Limits,
    admin_changes: bool,
    extra_routes: Vec<Configure>,
}

impl std::fmt::Debug for FlowsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowsApi")
            .field("workers", &self.workers)
            .field("limits", &self.limits)
            .field("extra_routes", &self.extra_routes.len())
            .finish()
    }
}

impl FlowsApi {
    /// One worker per CPU, [`Limits::default`], the standard routes, the flows of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        FlowsApi {
            registry,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits::default(),
            admin_changes: true,
            extra_routes: Vec::new(),
        }
    }

    /// How many actix worker threads serve requests (at least one).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// What a client may send and how slowly: the body limit and body deadline of
    /// `POST /flow/<name>`, and the request-head deadline (actix's client request timeout,
    /// which is also how long an idle keep-alive connection waits for its next request).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Without the admin changes (quit, readiness fail and restore: 403): for a public API
    /// whose operators change the process through the loopback admin listener.
    pub fn without_admin_changes(mut self) -> Self {
        self.admin_changes = false;
        self
    }

    /// Mounts more routes next to the standard ones (behind the same middleware). Each call
    /// adds to the routes of the calls before.
    pub fn routes(
        mut self,
        configure: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        self.extra_routes.push(Arc::new(configure));
        self
    }

    /// Builds the actix server. A plain function on purpose: actix's builder is not `Send`,
    /// so it must not live across an `.await` in the serve future.
    fn build(&self, listener: TcpListener, edge: Edge) -> std::io::Result<actix_web::dev::Server> {
        // actix counts whole seconds, and its timer (started at `close_idle`, after the
        // manager's deadline began) is what drops the requests a deadline cuts: rounded up,
        // so it never fires before the manager's deadline (requests it cut then would be
        // logged as "client gone" and the stop reported clean).
        let deadline = edge.ctx().drain_deadline();
        let deadline_secs = (deadline.as_secs() + u64::from(deadline.subsec_nanos() > 0)).max(1);
        let edge = web::Data::new(edge);
        let registry = web::Data::new(Arc::clone(&self.registry));
        let extra = self.extra_routes.clone();
        // Once, not in each worker's app factory (which would copy every flow's description).
        let flow_keys: Arc<[String]> = self
            .registry
            .actions()
            .into_iter()
            .map(|action| action.key)
            .collect();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(edge.clone())
                .app_data(registry.clone())
                .app_data(routes::query_config())
                .configure(|cfg| extra.iter().for_each(|configure| configure(cfg)))
                .configure(|cfg| routes::mount(cfg, &flow_keys))
                .default_service(web::to(routes::not_found))
                .wrap(Track(edge.clone()))
        })
        .workers(self.workers)
        // The manager owns signals; actix's own handler would turn Ctrl+C into a forced stop.
        .disable_signals()
        .shutdown_timeout(deadline_secs)
        .client_request_timeout(self.limits.head_timeout)
        .keep_alive(self.limits.head_timeout)
        // actix counts per worker, and at the limit leaves new connections in the backlog
        // (its accept thread pauses) rather than answering them.
        .max_connections(self.limits.connections.div_ceil(self.workers))
        .listen(listener)?
        .run();
        Ok(server)
    }
}

impl Server for FlowsApi {
    fn framework(&self) -> &'static str {
        "actix-web"
    }

    /// actix accepts on a thread of its own, which takes the pause command a moment after
    /// `pause` returned; an accept on a socket that has stopped listening fails, and actix
    /// logs that as an error. 10 ms is ample for the accept thread to take the command.
    fn accept_stop_lag(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let config = EdgeConfig::new()
                .limits(self.limits)
                .routes(crate::routes::ROUTES);
            let config = if self.admin_changes {
                config
            } else {
                config.without_admin_changes()
            };
            let edge = Edge::new(ctx.clone(), config);
            let server = self.build(listener, edge)?;
            let handle = server.handle();
            // The manager's stop sequence on actix's: pause the acceptor; at `close_idle`,
            // actix's graceful stop, whose signal makes every HTTP/1 connection close as soon
            // as it is idle (idle keep-alive connections at once; a busy one after its
            // current answer, which then says `Connection: close`); once drained, drop the
            // server when nothing is left (not actix's own graceful end: its workers look at
            // their connection count once a second). Requests the deadline cut are dropped
            // by actix's own timer a moment later (the deadline rounded up to whole seconds):
            // wait for it, so each is logged as cut. Polled next to the server, not spawned.
            let stopper = async {
                ctx.stop_accepting().cancelled().await;
                handle.pause().await;
                ctx.close_idle().cancelled().await;
                // Sent on the call; its future ends only with actix's graceful end.
                drop(handle.stop(true));
                ctx.drained().await;
            };
            let mut server = std::pin::pin!(server);
            let result = tokio::select! {
                result = &mut server => result,
                () = stopper => {
                    if ctx.requests().in_flight() == 0 {
                        Ok(())
                    } else {
                        tokio::time::timeout(ACTIX_TIMER_ROUNDING, &mut server)
                            .await
                            .unwrap_or(Ok(()))
                    }
                }
            };
            // A forced stop returns before the worker threads have dropped the requests they
            // cut; wait (briefly) for those drops, so each cut request is logged before exit.
            let _ = tokio::time::timeout(WORKER_UNWIND, ctx.requests().wait_idle()).await;
            result.map_err(Into::into)
        })
    }

    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(server = ctx.name(), addr = %ctx.local_addr(), workers = self.workers, "startup hook");
            Ok(())
        })
    }

    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(
                server = ctx.name(),
                served = ctx.requests().served(),
                "shutdown hook"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use manager::{ManagerHandle, Outcome, Report, ShutdownReason};
    use serde_json::Value;
    use tokio::sync::Notify;
    use tokio::task::JoinHandle;

    use super::*;

    /// Runs `server` under a manager (no signals, 5 s drain deadline) until it is live.
    pub(crate) async fn start(
        server: impl Server,
    ) -> (ManagerHandle, SocketAddr, JoinHandle<Report>) {
        let edge::testing::Started { handle, run, .. } =
            edge::testing::start("flows", server).await;
        let addr = handle.server_info().servers[0].address.clone().unwrap();
        (handle, addr.parse().unwrap(), run)
    }

    /// A request that closes its connection after the answer.
    pub(crate) fn ask(method: &str, path: &str, extra: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n{body}"
        )
    }

    /// Sends `request` and reads the answer to the end: status, headers, body.
    pub(crate) async fn raw(
        addr: SocketAddr,
        request: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let request = request.to_owned();
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).unwrap();
            String::from_utf8(answer).unwrap()
        })
        .await
        .unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The edge answers the admin endpoints; every error, actix's own included, is JSON; every
    /// answer has an `x-request-id`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_edge_answers_and_errors_are_json() {
        let limits = Limits {
            body_bytes: 16,
            ..Limits::default()
        };
        let (handle, addr, run) =
            start(FlowsApi::new(Registry::new()).workers(1).limits(limits)).await;
        for (request, status, needle) in [
            (ask("GET", "/__healthz", "", ""), 200, ""),
            (ask("POST", "/__healthz", "", ""), 405, "method not allowed"),
            (
                ask("GET", "/__quitquitquitz", "", ""),
                405,
                "method not allowed",
            ),
            (
                ask("GET", "/greet", "", ""),
                200,
                "Hello from greeting endpoints app!",
            ),
            (ask("POST", "/greet", "", ""), 405, "method not allowed"),
            (ask("GET", "/nowhere", "", ""), 404, r#""path":"/nowhere""#),
            (ask("GET", "/flow/x", "", ""), 405, "method not allowed"),
            (
                ask("POST", "/flow/x?stream=a&stream=b", "", ""),
                400,
                "duplicate field",
            ),
            (ask("POST", "/flow/x", "", ""), 404, "NOT_FOUND"),
            (
                ask("POST", "/flow/x", "Content-Length: 1\r\n", "{"),
                400,
                "invalid JSON body",
            ),
            (
                ask(
                    "POST",
                    "/flow/x",
                    "Content-Type: text/plain\r\nContent-Length: 2\r\n",
                    "hi",
                ),
                415,
                "content type must be application/json",
            ),
            (
                ask(
                    "POST",
                    "/flow/x",
                    "Content-Length: 17\r\n",
                    "\"0123456789abcde\"",
                ),
                413,
                "(16 bytes)",
            ),
        ] {
            let (got, headers, body) = raw(addr, &request).await;
            assert_eq!(got, status, "{request}: {body}");
            assert!(body.contains(needle), "{request}: {body}");
            assert!(header(&headers, "x-request-id").is_some(), "{request}");
            if status == 405 {
                assert!(header(&headers, "allow").is_some(), "{request}");
            }
            let json: Value = serde_json::from_str(&body).unwrap();
            assert!(json.is_object(), "{body}");
        }
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let report = run.await.unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 12);
    }

    /// A flow defined before the server started has a resource of its own path; one defined
    /// later, or with a name a pattern cannot hold as text, is found through `/flow/{name}`;
    /// either answers the same, percent-encoded names included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flows_are_found_by_their_own_resource_or_by_name() {
        let registry = Registry::new();
        let echo = |name: &str| {
            let name = name.to_owned();
            move |input: String, _ctx| {
                let name = name.clone();
                async move { Ok::<_, flows::FlowError>(format!("{name}:{input}")) }
            }
        };
        for (key, own) in [
            ("/flow/early", true),
            ("/flow/a-b_c.d~1", true),
            ("/flow/odd{name}", false),
            ("/flow/caf\u{e9}", false),
            ("/flow/", false),
            ("/model/early", false),
        ] {
            assert_eq!(crate::flows::resource_of(key).is_some(), own, "{key}");
        }
        registry.define_flow("early", "defined before the start", echo("early"));
        registry.define_flow(
            "odd{name}",
            "a name actix would take as a pattern",
            echo("odd"),
        );
        let (handle, addr, run) = start(FlowsApi::new(Arc::clone(&registry)).workers(1)).await;
        registry.define_flow("late", "defined after the start", echo("late"));
        for (path, expected) in [
            ("/flow/early", "early:x"),
            ("/flow/%65arly", "early:x"),
            ("/flow/late", "late:x"),
            ("/flow/odd%7Bname%7D", "odd:x"),
        ] {
            let request = ask("POST", path, "Content-Length: 3\r\n", "\"x\"");
            let (status, headers, body) = raw(addr, &request).await;
            assert_eq!(status, 200, "{path}: {body}");
            let json: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["result"], expected, "{path}: {body}");
            assert!(header(&headers, "x-genkit-trace-id").is_some(), "{path}");
        }
        let (status, _, body) = raw(
            addr,
            &ask("POST", "/flow/missing", "Content-Length: 3\r\n", "\"x\""),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        let (status, _, body) = raw(addr, &ask("GET", "/flow/early", "", "")).await;
        assert_eq!(status, 405, "{body}");
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        assert_eq!(run.await.unwrap().outcome(), Outcome::Clean);
    }

    /// A streamed flow run stays in flight until its last byte: the server drains only then,
    /// and the client gets the whole stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_answer_is_in_flight_until_its_last_byte() {
        let release = Arc::new(Notify::new());
        let registry = Registry::new();
        let r = Arc::clone(&release);
        registry.define_flow("ticks", "one chunk, then waits", move |_: String, ctx| {
            let r = Arc::clone(&r);
            async move {
                ctx.send_chunk("one").await;
                r.notified().await;
                Ok::<_, flows::FlowError>("done".to_owned())
            }
        });
        let (handle, addr, run) = start(FlowsApi::new(registry).workers(1)).await;
        let (first, got_first) = tokio::sync::oneshot::channel();
        let client = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let request = ask(
                "POST",
                "/flow/ticks?stream=true",
                "Content-Length: 3\r\n",
                "\"x\"",
            );
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut buf = [0; 1024];
            while !String::from_utf8_lossy(&answer).contains(r#"{"chunk":"one"}"#) {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            first.send(()).unwrap();
            stream.read_to_end(&mut answer).unwrap();
            String::from_utf8(answer).unwrap()
        });
        tokio::time::timeout(Duration::from_secs(10), got_first)
            .await
            .unwrap()
            .unwrap();
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!run.is_finished(), "must wait for the stream's end");
        release.notify_one();
        let answer = client.await.unwrap();
        assert!(answer.contains(r#"{"result":"done"}"#), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id:"),
            "{answer}"
        );
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
        assert_eq!(report.servers[0].requests.aborted, 0);
    }

    /// A server whose `GET /hold` waits for `release` after notifying `entered`.
    fn holding() -> (FlowsApi, Arc<Notify>, Arc<Notify>) {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (e, r) = (Arc::clone(&entered), Arc::clone(&release));
        let api = FlowsApi::new(Registry::new())
            .workers(1)
            .routes(move |cfg| {
                let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                cfg.route(
                    "/hold",
                    web::get().to(move || {
                        let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                        async move {
                            e.notify_one();
                            r.notified().await;
                            "released"
                        }
                    }),
                );
            });
        (api, entered, release)
    }

    /// Reads one answer with a `Content-Length` from a keep-alive connection: its head, its
    /// body.
    fn read_answer(stream: &mut std::net::TcpStream) -> (String, String) {
        let mut answer = Vec::new();
        let mut buf = [0; 1024];
        let (head, length) = loop {
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, _)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse::<usize>().unwrap())
                    .expect("a Content-Length");
                break (head.to_owned(), length);
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {text}");
            answer.extend_from_slice(&buf[..n]);
        };
        while answer.len() < head.len() + 4 + length {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed in the body");
            answer.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8(answer[head.len() + 4..].to_vec()).unwrap();
        (head, body)
    }

    /// When the manager says "close idle connections", an idle keep-alive connection closes
    /// at once, while a connection with a request in flight stays open until its answer
    /// (which says `Connection: close`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_keep_alive_connections_close_while_a_request_is_in_flight() {
        let (api, entered, release) = holding();
        let (handle, addr, run) = start(api).await;

        // One keep-alive connection, idle after its first answer.
        let mut idle = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
                .write_all(b"GET /greet HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let (head, _) = read_answer(&mut stream);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                !head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            stream
        })
        .await
        .unwrap();
        // One request in flight, on a keep-alive connection too.
        let held = tokio::spawn(raw(addr, "GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .unwrap();

        let started = std::time::Instant::now();
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let (read, idle_closed) = tokio::task::spawn_blocking(move || {
            idle.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let read = idle.read(&mut [0; 64]).map_err(|e| e.kind());
            (read, started.elapsed())
        })
        .await
        .unwrap();
        assert_eq!(
            read,
            Ok(0),
            "the idle connection must close (after {idle_closed:?})"
        );
        assert!(idle_closed < Duration::from_millis(500), "{idle_closed:?}");
        assert!(
            !held.is_finished(),
            "the held request must still be running"
        );
        assert!(!run.is_finished(), "must wait for the held request");

        release.notify_one();
        let (status, headers, body) = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "released"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 2);
        assert_eq!(report.servers[0].requests.aborted, 0);
    }

    /// A request held open by a `Notify` when shutdown starts still completes with 200, and
    /// the server stops as soon as it has (not a second later).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_request_completes_during_shutdown() {
        let (api, entered, release) = holding();
        let edge::testing::Started { handle, run, .. } = edge::testing::start("flows", api).await;
        let url = handle.server_info().servers[0].url.clone().unwrap();

        let request = tokio::task::spawn_blocking(move || {
            let mut res = ureq::get(format!("{url}/hold")).call().unwrap();
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
        assert!(!run.is_finished(), "must wait for the held request");
        release.notify_one();

        let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "released"));
        let report = edge::testing::report_soon(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
    }
}

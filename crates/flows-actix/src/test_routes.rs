//! Routes and a fault only the end-to-end tests need (feature `test-routes`). The binary uses
//! them as
//!
//! ```no_run
//! use flows_actix::FlowsApi;
//! # let registry = flows::Registry::new();
//! let api = FlowsApi::new(registry).routes(flows_actix::test_routes::mount);
//! // Where the server must also be able to die:
//! let server = flows_actix::test_routes::Crashing::new(api);
//! # let _ = server;
//! ```
//!
//! The routes pass through the same middleware as every route (`x-request-id`, logging,
//! JSON errors...):
//! - `GET /__test/slow?ms=N`: sleeps N ms, then 200 `{"slept_ms": N}`; a bad `ms` is a JSON
//!   400 saying why;
//! - `GET /__test/panic`: the handler panics (the middleware answers a JSON 500);
//! - `POST /__test/echo`: reads the body within the server's limits, 200 `{"bytes": N}` (413
//!   above the body limit, 408 slower than the body deadline).
//!
//! [`Crashing`] wraps a [`FlowsApi`] into a server that dies: `POST /__test/crash` answers 202,
//! and 50 ms later its serve future returns the error "injected crash (POST /__test/crash)".

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use edge::Edge;
use manager::{BoxFuture, ServeContext, Server};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::FlowsApi;
use crate::middleware::{content_length, reply};
use crate::routes::{get, post};

/// Adds the test routes; pass it to [`FlowsApi::routes`].
pub fn mount(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/__test/slow", slow))
        .service(get("/__test/panic", panic))
        .service(post("/__test/echo", echo));
}

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

/// A bad query is the server's JSON 400 (its `QueryConfig`).
async fn slow(query: web::Query<Slow>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(query.ms)).await;
    HttpResponse::Ok().json(json!({ "slept_ms": query.ms }))
}

async fn panic() -> HttpResponse {
    panic!("test route asked to panic")
}

/// Reads the whole body within the limits and says how long it was.
async fn echo(req: HttpRequest, body: web::Payload, edge: web::Data<Edge>) -> HttpResponse {
    match edge::read_body(body, content_length(&req), edge.limits()).await {
        Ok(body) => HttpResponse::Ok().json(json!({ "bytes": body.len() })),
        Err(err) => reply(err.reply()),
    }
}

/// A server that dies on request: `POST /__test/crash` answers 202 `{"crashing": true}`, then,
/// 50 ms later (the answer's time to go out), the serve future stops the server and returns
/// an error, as a server that dies while running would.
#[derive(Debug)]
pub struct Crashing<S = FlowsApi> {
    inner: Arc<S>,
    crash: Arc<Notify>,
}

impl Crashing<FlowsApi> {
    /// `api`, with `POST /__test/crash` mounted.
    pub fn new(api: FlowsApi) -> Self {
        let crash = Arc::new(Notify::new());
        let hit = Arc::clone(&crash);
        let api = api.routes(move |cfg| {
            let hit = Arc::clone(&hit);
            cfg.service(post("/__test/crash", move || {
                // A stored permit: the serve future sees it even if it polls later.
                hit.notify_one();
                async { HttpResponse::Accepted().json(json!({ "crashing": true })) }
            }));
        });
        Crashing {
            inner: Arc::new(api),
            crash,
        }
    }
}

impl<S: Server> Server for Crashing<S> {
    fn framework(&self) -> &'static str {
        self.inner.framework()
    }

    fn accept_stop_lag(&self) -> Duration {
        self.inner.accept_stop_lag()
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let mut serving = Arc::clone(&self.inner).serve(listener, ctx);
        Box::pin(async move {
            tokio::select! {
                result = &mut serving => result,
                () = self.crash.notified() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // A dropped actix server stops at once: listeners closed, workers told to
                    // stop, what was in flight cut.
                    drop(serving);
                    anyhow::bail!("injected crash (POST /__test/crash)")
                }
            }
        })
    }

    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        self.inner.on_startup(ctx)
    }

    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        self.inner.on_shutdown(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edge::Limits;
    use flows::Registry;
    use manager::{Outcome, ShutdownReason};
    use serde_json::Value;

    use super::Crashing;
    use crate::FlowsApi;
    use crate::server::tests::{ask, header, raw, start};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_panic_and_echo_behave_behind_the_middleware() {
        let limits = Limits {
            body_bytes: 8,
            body_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let api = FlowsApi::new(Registry::new())
            .workers(1)
            .limits(limits)
            .routes(super::mount);
        let (handle, addr, run) = start(api).await;
        for (request, status, needle) in [
            (
                ask("GET", "/__test/slow?ms=20", "", ""),
                200,
                r#""slept_ms":20"#,
            ),
            (
                ask("GET", "/__test/slow?ms=soon", "", ""),
                400,
                "invalid digit",
            ),
            (
                ask("POST", "/__test/slow?ms=1", "", ""),
                405,
                "method not allowed",
            ),
            (
                ask("GET", "/__test/panic", "", ""),
                500,
                r#""error":"internal error""#,
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 4\r\n", "abcd"),
                200,
                r#""bytes":4"#,
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 9\r\n", "abcdefghi"),
                413,
                "(8 bytes)",
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 4\r\n", "ab"),
                408,
                "not received",
            ),
        ] {
            let (got, headers, body) = raw(addr, &request).await;
            assert_eq!(got, status, "{request}: {body}");
            assert!(body.contains(needle), "{request}: {body}");
            assert!(header(&headers, "x-request-id").is_some(), "{request}");
            let json: Value = serde_json::from_str(&body).unwrap();
            assert!(json.is_object(), "{body}");
        }
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let report = run.await.unwrap();
        assert_eq!(report.outcome(), Outcome::Clean);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_request_makes_serve_fail() {
        let api = Crashing::new(FlowsApi::new(Registry::new()).workers(1));
        let (_handle, addr, run) = start(api).await;
        let (status, headers, body) = raw(addr, &ask("POST", "/__test/crash", "", "")).await;
        assert_eq!((status, body.as_str()), (202, r#"{"crashing":true}"#));
        assert!(header(&headers, "x-request-id").is_some());
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.outcome(), Outcome::Failed);
        let error = report.servers[0].error.clone().unwrap_or_default();
        assert!(
            error.contains("injected crash (POST /__test/crash)"),
            "{error}"
        );
    }
}

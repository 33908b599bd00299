//! Plain hyper 1 under the manager: the `Server` trait needs no framework, only a loop that
//! accepts until `ctx.shutdown()` fires, then lets its connections finish (here with
//! hyper-util's `GracefulShutdown`) within the drain deadline. Every request is wrapped in
//! `ctx.begin_request`, and `/__healthz`, `/__readyz` come from the manager.
//!
//! Run with `cargo run -p multi-server-manager --example 01_hyper`, then
//! `curl http://127.0.0.1:3400/` and `curl http://127.0.0.1:3400/__healthz` (the first free
//! port of 3400..3410; the URL is printed), and press Ctrl+C: it drains and exits 0.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use manager::{BoxFuture, Outcome, ServeContext, Server, ServerConfig, ServerManager};

/// A hello-world server on plain hyper.
struct Hello;

impl Server for Hello {
    fn framework(&self) -> &'static str {
        "hyper"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let graceful = GracefulShutdown::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _peer)) => stream,
                        // Out of file descriptors and the like: wait, don't spin.
                        Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                    },
                    () = ctx.shutdown().cancelled() => break,
                };
                let conn_ctx = ctx.clone();
                let service = service_fn(move |req| respond(conn_ctx.clone(), req));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await; // a client hanging up is not the server's error
                });
            }
            // Stop accepting, close idle keep-alive connections, finish in-flight requests.
            drop(listener);
            let _ = tokio::time::timeout(ctx.drain_deadline(), graceful.shutdown()).await;
            Ok(())
        })
    }
}

async fn respond(
    ctx: ServeContext,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let request = ctx.begin_request(req.method().as_str(), req.uri().path());
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => (StatusCode::OK, format!("hello from {}\n", ctx.name())),
        (&Method::GET, "/__healthz") => (StatusCode::OK, json(&ctx.manager().health())),
        (&Method::GET, "/__readyz") => {
            let readiness = ctx.manager().readiness();
            let status = StatusCode::from_u16(readiness.http_status()).expect("200 or 503");
            (status, json(&readiness))
        }
        _ => (
            StatusCode::NOT_FOUND,
            json(&manager::admin::error_body(404, "not found")),
        ),
    };
    request.finish(status.as_u16());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if ctx.requests().is_draining() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("admin data serializes")
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut manager = ServerManager::new().drain_deadline(Duration::from_secs(5));
    let ports = "3400..3410".parse().expect("a valid port spec");
    manager.add_server(ServerConfig::new("hello").ports(ports), Hello);
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    handle.wait_live().await;
    for server in handle.server_info().servers {
        println!(
            "{} ({:?}) on {}",
            server.name,
            server.state,
            server.url.unwrap_or_default()
        );
    }
    let report = run.await.expect("the manager does not panic");
    println!("stopped: {} ({:?})", report.reason, report.outcome());
    match report.outcome() {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::RequestsCut | Outcome::Failed => ExitCode::FAILURE,
    }
}

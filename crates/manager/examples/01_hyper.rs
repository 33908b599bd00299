//! Plain hyper 1 under the manager, through the edge: the `Server` trait needs no framework.
//! `edge::hyper::serve` runs the connections the way the manager's contract asks (stop
//! accepting when told, close idle connections when told, return when drained) and
//! `edge::hyper::Edged` puts the shared HTTP edge in front of the service: the admin
//! endpoints, request ids, one log line per request, JSON errors, panics as 500s,
//! `Connection: close` while draining. What is left to write is the routes.
//!
//! Run with `cargo run -p multi-server-manager --example 01_hyper`, then
//! `curl http://127.0.0.1:3400/` and `curl http://127.0.0.1:3400/__healthz` (the first free
//! port of 3400..3410; the URL is printed), and press Ctrl+C: it drains and exits 0.
//!
//! Flags: `--ports SPEC` (default `3400..3410`), `--drain-deadline 5s`, `--head-timeout 10s`,
//! `--body-timeout 10s`, and `--test-routes` (`/__test/slow?ms=N`, `/__test/panic`,
//! `POST /__test/echo`: the routes the conformance suite drives every server with). Exit
//! status 0 on a clean stop, 3 when the drain deadline cut requests, 1 on a failure, 2 on a
//! bad flag.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use edge::hyper::Edged;
use edge::{Edge, EdgeConfig, Limits};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyDataStream, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use manager::{BoxFuture, Outcome, ServeContext, Server, ServerConfig, ServerManager};

/// A hello-world server on plain hyper.
struct Hello {
    limits: Limits,
    test_routes: bool,
}

impl Server for Hello {
    fn framework(&self) -> &'static str {
        "hyper"
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
            let edge = Edge::new(ctx.clone(), EdgeConfig::new().limits(self.limits));
            edge::hyper::serve(listener, &ctx, &self.limits, |peer| {
                let (hello, edge2) = (Arc::clone(&self), edge.clone());
                let routes = service_fn(move |req| respond(Arc::clone(&hello), edge2.clone(), req));
                Edged::new(edge.clone(), peer, routes)
            })
            .await?;
            Ok(())
        })
    }
}

/// The routes; everything else (admin endpoints, errors, ids, logs) is the edge's.
async fn respond(
    hello: Arc<Hello>,
    edge: Edge,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => json(
            StatusCode::OK,
            format!(r#"{{"hello":"{}"}}"#, edge.ctx().name()),
        ),
        (_, "/") => edge::errors::method_not_allowed("GET"),
        (&Method::GET, "/__test/slow") if hello.test_routes => {
            let ms = req.uri().query().and_then(|q| q.strip_prefix("ms="));
            match ms.map(str::parse::<u64>) {
                Some(Ok(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    json(StatusCode::OK, format!(r#"{{"slept_ms":{ms}}}"#))
                }
                Some(Err(err)) => {
                    edge::errors::error(StatusCode::BAD_REQUEST, &format!("ms: {err}"))
                }
                None => edge::errors::error(StatusCode::BAD_REQUEST, "ms is required"),
            }
        }
        (&Method::GET, "/__test/panic") if hello.test_routes => panic!("test route asked to panic"),
        (&Method::POST, "/__test/echo") if hello.test_routes => {
            let length = edge::content_length(req.headers());
            let body = BodyDataStream::new(req.into_body());
            match edge::read_body(body, length, edge.limits()).await {
                Ok(body) => json(StatusCode::OK, format!(r#"{{"bytes":{}}}"#, body.len())),
                Err(err) => err.reply(),
            }
        }
        (_, path) => edge::errors::not_found(path),
    };
    Ok(reply.map(Full::new))
}

fn json(status: StatusCode, body: String) -> edge::Reply {
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

struct Flags {
    ports: manager::PortSpec,
    drain_deadline: Duration,
    limits: Limits,
    test_routes: bool,
}

fn flags() -> Result<Flags, String> {
    let mut flags = Flags {
        ports: "3400..3410".parse().expect("a valid port spec"),
        drain_deadline: Duration::from_secs(5),
        limits: Limits::default(),
        test_routes: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--test-routes" {
            flags.test_routes = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let duration =
            || humantime::parse_duration(&value).map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--ports" => {
                flags.ports = value.parse().map_err(|e| format!("--ports {value}: {e}"))?
            }
            "--drain-deadline" => flags.drain_deadline = duration()?,
            "--head-timeout" => flags.limits.head_timeout = duration()?,
            "--body-timeout" => flags.limits.body_timeout = duration()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(flags)
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = match flags() {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut manager = ServerManager::new().drain_deadline(flags.drain_deadline);
    let hello = Hello {
        limits: flags.limits,
        test_routes: flags.test_routes,
    };
    manager.add_server(ServerConfig::new("hello").ports(flags.ports), hello);
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    handle.wait_live().await;
    // The same banner as multi-server's, so the same tools read it.
    println!("multi-server example 01_hyper (pid {})", std::process::id());
    for server in handle.server_info().servers {
        let url = server.url.unwrap_or_else(|| format!("{:?}", server.state));
        println!("  {:<12} {:<10} {url}", server.name, server.framework);
    }
    let report = run.await.expect("the manager does not panic");
    for failure in &report.failures {
        eprintln!("error: {}", failure.chain());
    }
    match report.outcome() {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::RequestsCut => ExitCode::from(3),
        Outcome::Failed => ExitCode::FAILURE,
    }
}

//! Two servers in one process under one lifecycle: a public one and an operations one, each
//! on its own port, started together, stopped together. The public server answers `/`; the
//! operations server answers only the admin endpoints (which both have, through the edge).
//! SIGTERM or `POST /__quitquitquitz` on either stops both: readiness fails at once on both
//! ports, in-flight requests finish, and the process exits 0.
//!
//! Run with `cargo run -p multi-server-manager --example 02_two_servers`, then
//! `curl http://127.0.0.1:8080/`, `curl http://127.0.0.1:9090/__serverz` (both servers, live),
//! and `curl -X POST http://127.0.0.1:9090/__quitquitquitz`.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use edge::hyper::Edged;
use edge::{Edge, EdgeConfig, Limits};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use manager::{BoxFuture, Outcome, ServeContext, Server, ServerConfig, ServerManager};

/// A server whose only route is `/` with a fixed answer (or none: the admin endpoints only).
struct Fixed(Option<&'static str>);

impl Server for Fixed {
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
            let limits = Limits::default();
            let edge = Edge::new(ctx.clone(), EdgeConfig::new().limits(limits));
            edge::hyper::serve(listener, &ctx, &limits, |peer| {
                let answer = self.0;
                let routes = service_fn(move |req: Request<Incoming>| async move {
                    let reply = match answer {
                        Some(text) if req.uri().path() == "/" => Response::new(Bytes::from(text)),
                        _ => edge::errors::not_found(req.uri().path()),
                    };
                    Ok::<_, Infallible>(reply.map(Full::new))
                });
                Edged::new(edge.clone(), peer, routes)
            })
            .await?;
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut manager = ServerManager::new();
    let port = |spec: &str| spec.parse().expect("a valid port spec");
    manager
        .add_server(
            ServerConfig::new("public").ports(port("8080..8090")),
            Fixed(Some("hello\n")),
        )
        .add_server(
            ServerConfig::new("ops").ports(port("9090..9100")),
            Fixed(None),
        );
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    handle.wait_live().await;
    for server in handle.server_info().servers {
        println!("{:<8} {}", server.name, server.url.unwrap_or_default());
    }
    let report = run.await.expect("the manager does not panic");
    println!("stopped: {} ({:?})", report.reason, report.outcome());
    match report.outcome() {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::RequestsCut | Outcome::Failed => ExitCode::FAILURE,
    }
}

//! Baseline for `bench/callgrind.sh`: axum answering `GET /__healthz` with a body of the same
//! shape and size as the managed servers' liveness answer, with no manager and no middleware.
//! Usage: `bare-axum <port> [--log]`.
//!
//! With `--log`, the peer a user would write instead: tower-http's `TraceLayer` with its
//! span and response event at `INFO`, through `tracing_subscriber::fmt` (`RUST_LOG`, default
//! `info`), to stderr.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok","timestamp":1795700000.123456,"uptime_seconds":12.345678}"#,
    )
}

fn main() -> std::io::Result<()> {
    let log = multi_server_bench::peer_logging();
    let port = multi_server_bench::port_arg();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            println!("http://{}", listener.local_addr()?);
            let mut app = Router::new().route("/__healthz", get(healthz));
            if log {
                use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
                let level = tracing::Level::INFO;
                app = app.layer(
                    TraceLayer::new_for_http()
                        .make_span_with(DefaultMakeSpan::new().level(level))
                        .on_response(DefaultOnResponse::new().level(level)),
                );
            }
            axum::serve(listener, app).await
        })
}

//! Baseline for `bench/callgrind.sh`: axum answering `GET /__healthz` with a body of the same
//! shape and size as the managed servers' liveness answer, with no manager and no middleware.
//! Usage: `bare-axum <port>`.

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
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            println!("http://{}", listener.local_addr()?);
            let app = Router::new().route("/__healthz", get(healthz));
            axum::serve(listener, app).await
        })
}

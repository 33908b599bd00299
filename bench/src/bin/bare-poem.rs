//! Baseline for `bench/run.sh`: poem answering `GET /api/__health` with the same bytes as the
//! reflection server, with no manager and no middleware. Usage: `bare-poem <port> [--log]`.
//!
//! With `--log`, the peer a user would write instead: poem's own `middleware::Tracing`
//! through `tracing_subscriber::fmt` (`RUST_LOG`, default `info`), to stderr.

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Response, Route, get, handler};

#[handler]
fn health() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(r#"{"status":"OK"}"#)
}

fn main() -> std::io::Result<()> {
    let log = multi_server_bench::peer_logging();
    let port = multi_server_bench::port_arg();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let acceptor = TcpListener::bind(("127.0.0.1", port))
                .into_acceptor()
                .await?;
            for addr in acceptor.local_addr() {
                if let Some(addr) = addr.as_socket_addr() {
                    println!("http://{addr}");
                }
            }
            let app = Route::new().at("/api/__health", get(health));
            let server = poem::Server::new_with_acceptor(acceptor);
            if log {
                server.run(app.with(poem::middleware::Tracing)).await
            } else {
                server.run(app).await
            }
        })
}

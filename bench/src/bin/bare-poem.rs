//! Baseline for `bench/run.sh`: poem answering `GET /api/__health` with the reflection server's
//! status, content type and body, with no manager and no middleware (so without the headers the
//! edge and the Reflection API put on every answer: `x-request-id`, `x-genkit-version`). Usage:
//! `bare-poem <port> [--log]`.
//!
//! `POST /api/runAction` is the floor of the flow path (`bench/callgrind.sh`'s flow table): a
//! JSON body `{"key", "input"}` read and parsed, the greeting `multi_server_flow` makes,
//! answered as JSON; no registry, no trace.
//!
//! With `--log`, the peer a user would write instead: poem's own `middleware::Tracing`
//! through `tracing_subscriber::fmt` (`RUST_LOG`, default `info`), to stderr.

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Json;
use poem::{EndpointExt, Response, Route, get, handler, post};
use serde_json::{Value, json};

#[handler]
fn health() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(r#"{"status":"OK"}"#)
}

#[handler]
fn run_action(Json(body): Json<Value>) -> Json<Value> {
    let name = body["input"].as_str().unwrap_or_default();
    Json(json!({ "result": format!("Hello from multi-server, {name}!") }))
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
            let app = Route::new()
                .at("/api/__health", get(health))
                .at("/api/runAction", post(run_action));
            let server = poem::Server::new_with_acceptor(acceptor);
            if log {
                server.run(app.with(poem::middleware::Tracing)).await
            } else {
                server.run(app).await
            }
        })
}

//! Baseline for `bench/run.sh`: poem answering `GET /api/__health` with the same bytes as the
//! reflection server, with no manager and no middleware. Usage: `bare-poem <port>`.

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Response, Route, get, handler};

#[handler]
fn health() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(r#"{"status":"OK"}"#)
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
            let acceptor = TcpListener::bind(("127.0.0.1", port))
                .into_acceptor()
                .await?;
            for addr in acceptor.local_addr() {
                if let Some(addr) = addr.as_socket_addr() {
                    println!("http://{addr}");
                }
            }
            let app = Route::new().at("/api/__health", get(health));
            poem::Server::new_with_acceptor(acceptor).run(app).await
        })
}

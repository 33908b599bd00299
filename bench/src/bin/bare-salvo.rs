//! Baseline for `bench/run.sh`: salvo answering `GET /__healthz` with a body of the same
//! shape and size as the Dev UI's, with no manager and no middleware. Usage: `bare-salvo <port>`.

use salvo::prelude::*;

#[handler]
async fn healthz(res: &mut Response) {
    res.add_header("content-type", "application/json", true)
        .ok();
    res.write_body(r#"{"status":"ok","timestamp":1795700000.123456,"uptime_seconds":12.345678}"#)
        .ok();
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
            let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            std_listener.set_nonblocking(true)?;
            println!("http://{}", std_listener.local_addr()?);
            let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(
                tokio::net::TcpListener::from_std(std_listener)?,
            )?;
            let router = Router::with_path("__healthz").get(healthz);
            Server::new(acceptor).try_serve(router).await
        })
}

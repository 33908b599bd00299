//! Baseline for `bench/run.sh`: salvo answering `GET /__healthz` with a body of the same
//! shape and size as the Dev UI's, with no manager and no middleware. Usage:
//! `bare-salvo <port> [--log]`.
//!
//! With `--log`, the peer a user would write instead: salvo's own `logging::Logger`
//! through `tracing_subscriber::fmt` (`RUST_LOG`, default `info`), to stderr.

use salvo::prelude::*;

#[handler]
async fn healthz(res: &mut Response) {
    res.add_header("content-type", "application/json", true)
        .ok();
    res.write_body(r#"{"status":"ok","timestamp":1795700000.123456,"uptime_seconds":12.345678}"#)
        .ok();
}

fn main() -> std::io::Result<()> {
    let log = multi_server_bench::peer_logging();
    let port = multi_server_bench::port_arg();
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
            let mut router = Router::with_path("__healthz").get(healthz);
            if log {
                router = Router::new()
                    .hoop(salvo::logging::Logger::new())
                    .push(router);
            }
            Server::new(acceptor).try_serve(router).await
        })
}

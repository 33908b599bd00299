//! Baseline for `bench/run.sh`: actix-web answering `GET /greet` with the same bytes as the
//! flows API, with no manager and no middleware. Usage: `bare-actix <port> [workers] [--log]`.
//!
//! `POST /flow/multi_server_flow` is the floor of the flow path (`bench/callgrind.sh`'s flow
//! table): a JSON body read and parsed, the greeting `multi_server_flow` makes, answered as
//! JSON; no registry, no trace. A path matched as text, as the flows API routes a flow defined
//! at start (`/flow/{name}`'s regex would add ~3,300 instructions to the floor, callgrind).
//!
//! With `--log`, the peer a user would write instead: actix's own `middleware::Logger`
//! through `env_logger` (`RUST_LOG`, default `info`), every request logged to stderr.

use actix_web::{App, HttpResponse, HttpServer, middleware::Logger, web};
use serde_json::{Value, json};

const GREETING: &str = r#"{"greeting":"Hello from greeting endpoints app!"}"#;

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/greet",
        web::get().to(|| async {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(GREETING)
        }),
    );
    cfg.route(
        "/flow/multi_server_flow",
        web::post().to(|input: web::Json<Value>| async move {
            let name = input.as_str().unwrap_or_default();
            HttpResponse::Ok()
                .json(json!({ "result": format!("Hello from multi-server, {name}!") }))
        }),
    );
}

fn print_addrs(addrs: Vec<std::net::SocketAddr>) {
    for addr in addrs {
        println!("http://{addr}");
    }
}

fn main() -> std::io::Result<()> {
    let log = multi_server_bench::log_flag();
    if log {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    }
    let mut args = std::env::args().skip(1).filter(|a| a != "--log");
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            // Two servers, not `Condition`: the bare one must not pay for a wrapper either.
            let server = if log {
                let server =
                    HttpServer::new(|| App::new().wrap(Logger::default()).configure(routes))
                        .workers(workers)
                        .bind(("127.0.0.1", port))?;
                print_addrs(server.addrs());
                server.run()
            } else {
                let server = HttpServer::new(|| App::new().configure(routes))
                    .workers(workers)
                    .bind(("127.0.0.1", port))?;
                print_addrs(server.addrs());
                server.run()
            };
            server.await
        })
}

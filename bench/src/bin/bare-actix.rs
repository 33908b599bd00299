//! Baseline for `bench/run.sh`: actix-web answering `GET /greet` with the same bytes as the
//! flows API, with no manager and no middleware. Usage: `bare-actix <port> [workers]`.

use actix_web::{App, HttpResponse, HttpServer, web};

const GREETING: &str = r#"{"greeting":"Hello from greeting endpoints app!"}"#;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let server = HttpServer::new(|| {
                App::new().route(
                    "/greet",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(GREETING)
                    }),
                )
            })
            .workers(workers)
            .bind(("127.0.0.1", port))?;
            for addr in server.addrs() {
                println!("http://{addr}");
            }
            server.run().await
        })
}

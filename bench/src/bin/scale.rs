//! The scale test of `bench/run.sh`: N servers in one process, the three frameworks in turn
//! (actix-web with one worker each, poem, salvo), all started at once through the manager.
//! Prints one JSON line: time until the manager reports every server serving, time until
//! every server has answered `GET /__healthz` over TCP, and RSS (total and per server).
//!
//! Usage: `scale <N>` (run it with a file-descriptor limit above N + a few).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use manager::{ServerConfig, ServerManager, ShutdownReason};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn healthz(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /__healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let rss_before = rss_kib();
    let discovery = std::env::temp_dir().join(format!("multi-server-scale-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let registry = flows::Registry::new();
        let mut manager = ServerManager::new().handle_signals(false);
        for i in 0..n {
            let config = ServerConfig::new(format!("s{i}"));
            match i % 3 {
                0 => manager.add_server(
                    config,
                    flows_actix::FlowsApi::new(registry.clone()).workers(1),
                ),
                1 => manager.add_server(
                    config,
                    reflection_poem::ReflectionApi::new(registry.clone())
                        .discovery_root(&discovery),
                ),
                _ => manager.add_server(config, devui_salvo::DevUi::new(registry.clone())),
            };
        }
        let handle = manager.handle();
        let started = Instant::now();
        let run = tokio::spawn(manager.run());
        handle.wait_live().await;
        let live = started.elapsed();
        let addrs: Vec<String> = handle
            .server_info()
            .servers
            .into_iter()
            .filter_map(|s| s.address)
            .collect();
        let all_answered =
            tokio::task::spawn_blocking(move || addrs.iter().all(|a| healthz(a))).await?;
        let answered = started.elapsed();
        let rss = rss_kib();
        handle.request_shutdown(ShutdownReason::Requested {
            why: "scale test done".into(),
        });
        let stop = Instant::now();
        let report = run.await?;
        anyhow::ensure!(all_answered, "not every server answered /__healthz");
        anyhow::ensure!(
            report.failures.is_empty(),
            "failures: {:?}",
            report.failures
        );
        Ok::<_, anyhow::Error>((live, answered, rss, stop.elapsed()))
    });
    let _ = std::fs::remove_dir_all(&discovery);
    let (live, answered, rss, stopped) = result?;
    println!(
        "{{\"servers\":{n},\"live_ms\":{:.1},\"all_answered_ms\":{:.1},\"stop_ms\":{:.1},\"rss_mib\":{:.1},\"rss_per_server_kib\":{:.0}}}",
        live.as_secs_f64() * 1e3,
        answered.as_secs_f64() * 1e3,
        stopped.as_secs_f64() * 1e3,
        rss as f64 / 1024.0,
        (rss.saturating_sub(rss_before)) as f64 / n.max(1) as f64,
    );
    Ok(())
}

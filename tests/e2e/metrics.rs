//! `/__metrics` on the real binary: the exposition a real Prometheus scrapes (started here on
//! a loopback port, stopped by pid), that `promtool check metrics` accepts, and whose series
//! stay bounded under a scan of random paths.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use multi_server_e2e::{Conn, addr, eventually, get, send, temp_dir};
use serde_json::Value;

use super::start;

/// A program the test needs, with what to install when it is missing.
fn tool(name: &str) -> &str {
    assert!(
        Command::new(name).arg("--version").output().is_ok(),
        "the metrics test needs {name}: apt-get install -y prometheus (tests/run.sh installs it)"
    );
    name
}

/// `/__metrics` of `base` in the classic text format.
fn exposition(base: &str) -> String {
    let reply = get(&format!("{base}/__metrics"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.text
}

fn promtool_check(text: &str) {
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_exposition_is_valid_and_a_scan_of_random_paths_adds_no_series() {
    let p = start(&[]);
    let flows = addr(p.url("flows"));
    let mut conn = Conn::connect(flows).unwrap();
    for _ in 0..5 {
        assert_eq!(conn.request("GET", "/greet", &[], b"").unwrap().status, 200);
    }
    // One flow run that works and one whose input is refused: both counted, one an error.
    let mut run = |body: &[u8]| {
        conn.request(
            "POST",
            "/flow/multi_server_flow",
            &[("Content-Type", "application/json")],
            body,
        )
        .unwrap()
        .status
    };
    assert_eq!(run(br#""Ann""#), 200);
    assert_eq!(run(b"42"), 400);
    let before = exposition(p.url("admin"));
    for line in [
        r#"multi_server_flow_runs_total{flow="multi_server_flow"} 2"#,
        r#"multi_server_flow_errors_total{flow="multi_server_flow"} 1"#,
        r#"multi_server_flow_duration_seconds_count{flow="multi_server_flow"} 2"#,
    ] {
        assert!(before.lines().any(|l| l == line), "{line} in:\n{before}");
    }
    assert!(
        before.contains("multi_server_trace_store_bytes "),
        "{before}"
    );
    let series = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with(r#"http_server_request_duration_seconds_count{server="flows","#)
            })
            .count()
    };
    for i in 0..10_000u32 {
        let path = format!("/scan-{i:x}/{}", i.wrapping_mul(2_654_435_761));
        let method = if i % 7 == 0 { "PROPFIND" } else { "GET" };
        let answer = conn.request(method, &path, &[], b"").unwrap();
        assert!(
            answer.status == 404 || answer.status == 405,
            "{}",
            answer.status
        );
    }
    let after = exposition(p.url("admin"));
    promtool_check(&after);
    assert!(
        series(&after) <= series(&before) + 2,
        "{} series before, {} after 10,000 random paths:\n{after}",
        series(&before),
        series(&after)
    );
    assert!(
        after.contains(r#"http_server_request_duration_seconds_count{server="flows",http_request_method="GET",http_response_status_code="200",http_route="/greet"} 5"#),
        "{after}"
    );
    assert!(
        after.contains(
            r#"http_request_method="_OTHER",http_response_status_code="404",http_route="""#
        ),
        "{after}"
    );
    // OpenMetrics when asked for, ending in # EOF.
    let open = send(
        "GET",
        &format!("{}/__metrics", p.url("flows")),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        None,
    );
    assert_eq!(
        open.headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.text.ends_with("# EOF\n"), "{}", open.text);
}

/// Whether `GET url` answers 200 (false while nothing listens).
fn get_ok(url: &str) -> bool {
    multi_server_e2e::try_get(url).is_ok_and(|reply| reply.status == 200)
}

/// A Prometheus server of the test's own, killed (by pid) on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `POST /api/v1/query` on Prometheus at `port`: the result vector, once Prometheus is
/// ready (it answers 503 while it starts).
fn query(port: u16, promql: &str) -> Vec<Value> {
    eventually("Prometheus answers queries", || try_query(port, promql))
}

fn try_query(port: u16, promql: &str) -> Option<Vec<Value>> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let reply = send(
        "POST",
        &format!("http://127.0.0.1:{port}/api/v1/query"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(&format!("query={}", urlencode(promql))),
    );
    if reply.status == 503 {
        return None;
    }
    assert_eq!(reply.status, 200, "{promql}: {}", reply.text);
    Some(
        reply.json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_request_counts_and_a_quantile() {
    let p = start(&[]);
    let dir = temp_dir("prometheus");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let targets: Vec<String> = ["flows", "admin"]
        .iter()
        .map(|s| format!("'{}'", p.url(s).trim_start_matches("http://")))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
         - job_name: multi-server\n    metrics_path: /__metrics\n    static_configs:\n      \
         - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let server = Prometheus(
        Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Prometheus starts in a second or two here; a loaded machine gets a minute.
    let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !get_ok(&format!("http://127.0.0.1:{port}/-/ready")) {
        assert!(
            std::time::Instant::now() < ready_by,
            "Prometheus not ready within 60 s:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let flows = addr(p.url("flows"));
    let mut conn = Conn::connect(flows).unwrap();
    for _ in 0..200 {
        assert_eq!(conn.request("GET", "/greet", &[], b"").unwrap().status, 200);
    }
    let greet = r#"http_server_request_duration_seconds_count{server="flows",http_route="/greet"}"#;
    let counted = eventually("Prometheus has scraped the burst", || {
        let result = query(port, greet);
        let value = result.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (value >= 200.0).then_some(value)
    });
    assert_eq!(counted, 200.0);
    // Both servers, the admin one counting the scrapes themselves (from its second scrape on:
    // a scrape is in flight while it is encoded).
    eventually("request counts of both servers", || {
        let per_server = query(
            port,
            "sum by (server) (http_server_request_duration_seconds_count)",
        );
        let servers: Vec<&str> = per_server
            .iter()
            .filter_map(|r| r["metric"]["server"].as_str())
            .collect();
        (servers.contains(&"flows") && servers.contains(&"admin")).then_some(())
    });
    // A quantile from the histogram (over all the counts so far: the burst may lie within one
    // scrape interval, where a rate() would have nothing to say): every /greet takes far less
    // than 100 ms here.
    let p99 = query(
        port,
        r#"histogram_quantile(0.99, sum by (le) (http_server_request_duration_seconds_bucket{http_route="/greet"}))"#,
    );
    let value: f64 = p99
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no quantile: {p99:?}"));
    assert!(value > 0.0 && value <= 0.1, "p99 {value}");
    drop(server);
}

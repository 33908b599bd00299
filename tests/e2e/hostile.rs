//! The hostile suite (issue 10): one test per attack that worked on the binary before, each
//! tried as an attacker would, on loopback, against every server it applies to: a web page in
//! the developer's browser, a proxy on the same host, anonymous large inputs, a stalled log
//! pipe, stalled bodies and connection floods, keep-alive clients across a drain, secrets and
//! odd bytes in argv, a hostile filesystem for the discovery file, absurd flag values. Every
//! test is bounded in count and time, and kills what it starts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::{Conn, Process, addr, eventually, get, once, post, send, temp_dir};
use serde_json::json;

use super::{DEV_ENV, bin, dev_args, start, start_dev, start_dev_env};

const EXIT_WAIT: Duration = Duration::from_secs(20);

/// Every server of a dev-mode process.
const SERVERS: [&str; 4] = ["flows", "reflection", "devui", "admin"];

/// The resident set size of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    multi_server_e2e::rss_kib(pid) as f64 / 1024.0
}

/// How long `GET /__healthz` takes on `addr`, on a fresh connection.
fn healthz_latency(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let answer = once(addr, "GET", "/__healthz", &[], b"");
    assert_eq!(answer.status, 200, "{}", answer.text());
    started.elapsed()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// 1. A web page drives the dev runtime.

#[test]
fn a_web_page_cannot_drive_the_dev_runtime_nor_redirect_its_traces() {
    let p = start_dev(&[]);
    let base = p.url("reflection");
    let run_body = r#"{"key":"/flow/multi_server_flow","input":"Page"}"#;

    // Another site (or another local dev server) open in the developer's browser: its
    // preflight, its simple requests and its reads are all refused, and no CORS header lets
    // it read anything.
    for origin in ["http://evil.example", "http://localhost:8080", "null"] {
        let preflight = send(
            "OPTIONS",
            &format!("{base}/api/runAction"),
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            None,
        );
        assert_eq!(preflight.status, 403, "{origin}: {}", preflight.text);
        assert!(
            !preflight
                .headers
                .contains_key("access-control-allow-origin"),
            "{origin}: {:?}",
            preflight.headers
        );
        let run = send(
            "POST",
            &format!("{base}/api/runAction"),
            &[("origin", origin), ("content-type", "text/plain")],
            Some(run_body),
        );
        assert_eq!(run.status, 403, "{origin}: {}", run.text);
        assert_eq!(run.json["status"], 403, "{}", run.text);
        let envs = send(
            "GET",
            &format!("{base}/api/envs"),
            &[("origin", origin)],
            None,
        );
        assert_eq!(envs.status, 403, "{origin}: {}", envs.text);
    }

    // A page of this process (the Dev UI's) may; so may the CLI, which sends no Origin.
    let devui = p.url("devui");
    let own = send(
        "POST",
        &format!("{base}/api/runAction"),
        &[("origin", devui), ("content-type", "application/json")],
        Some(run_body),
    );
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.json["result"], "Hello from multi-server, Page!");
    assert!(!own.headers.contains_key("access-control-allow-origin"));

    // Trace export may be pointed at a loopback telemetry server only.
    for url in [
        "http://evil.example:4033",
        "http://10.0.0.1:4033",
        "http://user@127.0.0.1:4033",
        "https://collector.example",
    ] {
        let notify = post(
            &format!("{base}/api/notify"),
            "application/json",
            &json!({"telemetryServerUrl": url, "reflectionApiSpecVersion": 1}).to_string(),
        );
        assert_eq!(notify.status, 403, "{url}: {}", notify.text);
        assert!(
            notify.json["error"]
                .as_str()
                .unwrap_or_default()
                .contains("MULTI_SERVER_TELEMETRY_ANY_HOST"),
            "{}",
            notify.text
        );
    }
    let notify = post(
        &format!("{base}/api/notify"),
        "application/json",
        r#"{"telemetryServerUrl":"http://localhost:4033","reflectionApiSpecVersion":1}"#,
    );
    assert_eq!(notify.status, 200, "{}", notify.text);
}

#[test]
fn a_rebinding_page_cannot_read_the_dev_servers() {
    let p = start_dev(&[]);
    for server in ["reflection", "devui"] {
        let port = addr(p.url(server)).port();
        for path in [
            "/",
            "/api/__health",
            "/api/actions",
            "/api/servers",
            "/__serverz",
        ] {
            // Raw: `Conn` sends a loopback Host of its own.
            let host = format!("rebind.evil:{port}");
            let mut stream = TcpStream::connect(addr(p.url(server))).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            assert!(
                text.starts_with("HTTP/1.1 403"),
                "{server} {path} under {host}: {text}"
            );
            assert!(!text.contains("\"pid\""), "{text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A web page, a proxy, or anyone without the token changes the process.

/// `POST path` on `base` with `headers` and no body and no content type, as
/// `fetch(url, {method: 'POST', mode: 'no-cors'})` sends it.
fn change(base: &str, path: &str, headers: &[(&str, &str)]) -> multi_server_e2e::Reply {
    send("POST", &format!("{base}{path}"), headers, None)
}

#[test]
fn no_web_page_nor_proxied_client_can_change_the_process() {
    let p = start_dev(&[]);
    let hostile: [&[(&str, &str)]; 5] = [
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("x-forwarded-for", "203.0.113.9")],
        &[("forwarded", "for=203.0.113.9")],
    ];
    for server in SERVERS {
        let base = p.url(server);
        for path in edge::admin::CHANGES {
            for headers in hostile {
                let answer = change(base, path, headers);
                assert_eq!(
                    answer.status, 403,
                    "{server} {path} {headers:?}: {}",
                    answer.text
                );
                assert_eq!(answer.json["status"], 403, "{}", answer.text);
            }
            let get = get(&format!("{base}{path}"));
            assert_eq!(get.status, 405, "{server} GET {path}: {}", get.text);
        }
    }
    // The Dev UI's and Genkit's own change endpoints keep the same rules.
    let devui = p.url("devui");
    for path in ["/api/quit", "/api/readiness/fail"] {
        let answer = change(devui, path, &[("origin", "http://evil.example")]);
        assert_eq!(answer.status, 403, "{path}: {}", answer.text);
    }
    let reflection = p.url("reflection");
    let answer = change(
        reflection,
        "/api/__quitquitquit",
        &[("x-real-ip", "203.0.113.9")],
    );
    assert_eq!(answer.status, 403, "{}", answer.text);

    // Nothing happened: still ready, still serving.
    let ready = get(&format!("{}/__readyz", p.url("admin")));
    assert_eq!(ready.status, 200, "{}", ready.text);
}

const TOKEN: &str = "e2e-admin-token-0123456789abcdef";

#[test]
fn with_an_admin_token_every_change_needs_it_and_it_never_shows() {
    let mut p = start_dev_env(&[], &[("MULTI_SERVER_ADMIN_TOKEN", TOKEN)]);
    let bearer = format!("Bearer {TOKEN}");
    for server in SERVERS {
        let base = p.url(server);
        let missing = change(base, "/__readyz/fail", &[]);
        assert_eq!(missing.status, 401, "{server}: {}", missing.text);
        assert_eq!(
            missing.headers.get("www-authenticate").map(String::as_str),
            Some("Bearer realm=\"multi-server admin\""),
            "{server}"
        );
        for wrong in [
            "Bearer e2e-admin-token-0123456789abcdeX",
            "Bearer e2e",
            "Basic ZTJlOmFkbWlu",
        ] {
            let answer = change(base, "/__quitquitquitz", &[("authorization", wrong)]);
            assert_eq!(answer.status, 401, "{server} {wrong}: {}", answer.text);
        }
        // The right token from a hostile page is still refused: the token is not a pass for
        // cross-site requests.
        let cross = change(
            base,
            "/__readyz/fail",
            &[
                ("authorization", &bearer),
                ("origin", "http://evil.example"),
            ],
        );
        assert_eq!(cross.status, 403, "{server}: {}", cross.text);
    }
    for path in ["/api/readiness/fail", "/api/quit"] {
        let answer = change(p.url("devui"), path, &[]);
        assert_eq!(answer.status, 401, "devui {path}: {}", answer.text);
    }
    let answer = change(p.url("reflection"), "/api/__quitquitquit", &[]);
    assert_eq!(answer.status, 401, "{}", answer.text);

    let admin = p.url("admin").to_owned();
    let fail = change(&admin, "/__readyz/fail", &[("authorization", &bearer)]);
    assert_eq!(fail.status, 200, "{}", fail.text);
    assert_eq!(get(&format!("{admin}/__readyz")).status, 503);
    let ok = change(
        p.url("devui"),
        "/api/readiness/ok",
        &[("authorization", &bearer)],
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(get(&format!("{admin}/__readyz")).status, 200);

    let serverz = get(&format!("{admin}/__serverz")).text;
    assert!(!serverz.contains(TOKEN), "{serverz}");

    let quit = change(
        p.url("flows"),
        "/__quitquitquitz",
        &[("authorization", &bearer)],
    );
    assert_eq!(quit.status, 200, "{}", quit.text);
    assert!(p.wait_exit(EXIT_WAIT).success());
    let log = p.stderr();
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(log.contains("admin change refused"), "{log}");
}

#[test]
fn changes_can_be_left_to_the_admin_listener_and_a_bad_token_is_a_clear_error() {
    let tokens = temp_dir("token");
    let token_file = tokens.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file = token_file.to_str().unwrap();
    let mut p = start(&["--changes-on-admin-only", "--admin-token-file", file]);
    let bearer = format!("Bearer {TOKEN}");
    for path in edge::admin::CHANGES {
        let answer = change(p.url("flows"), path, &[("authorization", &bearer)]);
        assert_eq!(answer.status, 403, "{path}: {}", answer.text);
        assert!(answer.text.contains("admin listener"), "{}", answer.text);
    }
    let quit = change(
        p.url("admin"),
        "/__quitquitquitz",
        &[("authorization", &bearer)],
    );
    assert_eq!(quit.status, 200, "{}", quit.text);
    assert!(p.wait_exit(EXIT_WAIT).success());

    // The variable of the flag's old name still keeps changes off the public port.
    let old = multi_server_e2e::Process::start_with_env(
        bin(),
        &["--flows-ports", "0"],
        &[("MULTI_SERVER_QUIT_ON_ADMIN_ONLY", "1")],
    );
    let answer = change(old.url("flows"), "/__quitquitquitz", &[]);
    assert_eq!(answer.status, 403, "{}", answer.text);
    drop(old);

    let short = tokens.join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 3] = [
        (
            &["--admin-token-file", short.to_str().unwrap()],
            &[],
            "at least 16 characters",
        ),
        (
            &["--admin-token-file", "/nonexistent/admin-token"],
            &[],
            "cannot read --admin-token-file /nonexistent/admin-token",
        ),
        (
            &["--admin-token-file", file],
            &[("MULTI_SERVER_ADMIN_TOKEN", TOKEN)],
            "use one",
        ),
    ];
    for (args, env, needle) in cases {
        let mut all = vec!["--flows-ports", "0"];
        all.extend_from_slice(args);
        let mut p = Process::spawn(bin(), &all, env);
        let status = p.wait_exit(EXIT_WAIT);
        assert_eq!(status.code(), Some(2), "{args:?}");
        let log = p.stderr();
        assert_eq!(log.lines().count(), 1, "one line: {log}");
        assert!(log.contains(needle), "{needle:?} in {log}");
        assert!(!log.contains("hunter2"), "{log}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Anonymous large inputs take the memory.

#[test]
fn a_hundred_one_megabyte_flow_inputs_keep_memory_bounded() {
    // Dev mode, with a Developer UI page whose live feed is never read (a stalled tab): the
    // feed must not keep the traces either.
    let p = start_dev(&[]);
    let flows = p.url("flows").to_owned();
    let mut events = TcpStream::connect(addr(p.url("devui"))).unwrap();
    write!(
        events,
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let before = rss_mib(p.pid());
    let destination = "x".repeat(1_000_000);
    let body = json!({"destination": destination, "days": 1, "travelers": ["Ann"]}).to_string();
    for i in 0..100 {
        let answer = post(
            &format!("{flows}/flow/plan_trip"),
            "application/json",
            &body,
        );
        assert_eq!(
            answer.status,
            200,
            "run {i}: {}",
            &answer.text[..200.min(answer.text.len())]
        );
    }
    let after = rss_mib(p.pid());
    let latency = healthz_latency(addr(&flows));
    drop(events);
    eprintln!(
        "100 x 1 MB plan_trip: RSS {before:.1} MiB -> {after:.1} MiB; /__healthz {latency:?}"
    );
    // Before the budgets: 530 MiB, kept. The goal is 64 MiB (a release build); a debug build
    // keeps more code and slack.
    assert!(after < 96.0, "RSS {after:.1} MiB after 100 large inputs");
}

// ---------------------------------------------------------------------------------------------
// 4. A stalled log pipe freezes the servers.

#[test]
fn a_stalled_log_pipe_never_stalls_a_server_nor_the_shutdown() {
    let (mut p, mut log) = multi_server_e2e::Process::start_with_stalled_log(
        bin(),
        &[
            "--flows-ports",
            "0",
            "--flows-workers",
            "2",
            "--drain-deadline",
            "2s",
        ],
        &[],
    );
    let flows = addr(p.url("flows"));
    let admin = addr(p.url("admin"));
    let long = format!("/{}", "a".repeat(4000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let long = long.clone();
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                let mut conn = Conn::connect(flows).unwrap();
                let mut answered = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && answered < 5000 {
                    let answer = conn.request("GET", &long, &[], b"").unwrap();
                    assert_eq!(answer.status, 404);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        latencies.push(healthz_latency(admin));
        latencies.push(healthz_latency(flows));
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: u32 = load.into_iter().map(|t| t.join().unwrap()).sum();
    let info = get(&format!("{}/__serverz", p.url("admin"))).json;
    let dropped = info["log_lines_dropped"].as_u64().unwrap();
    let worst = p99(latencies.clone());
    let signalled = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(EXIT_WAIT);
    let exit = signalled.elapsed();
    eprintln!(
        "stalled log: {answered} requests answered, /__healthz p99 {worst:?} over {} probes, \
         {dropped} lines dropped, SIGTERM to exit {exit:?}",
        latencies.len()
    );
    assert!(status.success(), "{status:?}");
    assert!(dropped > 0, "the pipe never filled: {answered} requests");
    assert!(
        exit < Duration::from_secs(2) + Duration::from_millis(1500),
        "{exit:?}"
    );
    // What the writer wrote before the pipe filled is intact, line by line (that it reports
    // the dropped count once the output drains is the log writer's unit test).
    let mut text = String::new();
    let _ = log.read_to_string(&mut text);
    assert!(
        text.lines()
            .take(20)
            .all(|l| l.contains("INFO") || l.contains("WARN")),
        "{}",
        &text[..2000.min(text.len())]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Stalled bodies, idle keep-alive connections, connection floods.

/// Sends a head declaring a 1000-byte body and 6 bytes of it.
fn stalled_body(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"a\":1"
    )
    .unwrap();
    stream
}

/// What arrives before the server closes (empty when it closed without an answer).
fn rest(mut stream: TcpStream) -> String {
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn stalled_bodies_are_answered_408_on_every_server_and_shutdown_does_not_wait_for_them() {
    let mut p = start_dev(&["--body-timeout", "1s", "--drain-deadline", "8s"]);
    for server in SERVERS {
        let started = Instant::now();
        let text = rest(stalled_body(addr(p.url(server)), "/__test/echo"));
        let took = started.elapsed();
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{server}: {text}"
        );
        assert!(took < Duration::from_secs(5), "{server}: {took:?}");
    }
    // A hundred of them on the public server, then SIGTERM: they end at their body deadline,
    // not at the drain deadline, and the stop is clean.
    let flows = addr(p.url("flows"));
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| stalled_body(flows, "/flow/multi_server_flow"))
        .collect();
    thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(EXIT_WAIT);
    let took = signalled.elapsed();
    drop(stalled);
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_on_every_server() {
    let p = start_dev(&["--head-timeout", "1s"]);
    for server in SERVERS {
        let mut conn = Conn::connect(addr(p.url(server))).unwrap();
        let answer = conn.request("GET", "/__healthz", &[], b"").unwrap();
        assert_eq!(answer.status, 200);
        let idle = Instant::now();
        let mut byte = [0u8; 1];
        let read = conn.stream.read(&mut byte);
        let took = idle.elapsed();
        assert!(matches!(read, Ok(0) | Err(_)), "{server}: {read:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{server}: closed after {took:?}"
        );
    }
}

#[test]
fn over_max_connections_a_client_is_told_503_and_the_server_carries_on() {
    let p = start_dev(&["--max-connections", "8"]);
    for server in ["reflection", "devui", "admin"] {
        let target = addr(p.url(server));
        // Eight connections, each busy with a slow request.
        let busy: Vec<Conn> = (0..8)
            .map(|_| {
                let mut conn = Conn::connect(target).unwrap();
                conn.send("GET", "/__test/slow?ms=1500", &[], b"").unwrap();
                conn
            })
            .collect();
        thread::sleep(Duration::from_millis(300));
        let refused = once(target, "GET", "/__healthz", &[], b"");
        assert_eq!(refused.status, 503, "{server}: {}", refused.text());
        assert!(refused.closes(), "{server}");
        assert!(
            refused.text().contains("--max-connections"),
            "{}",
            refused.text()
        );
        for mut conn in busy {
            assert_eq!(conn.answer().unwrap().status, 200, "{server}");
        }
        eventually(&format!("{server} takes connections again"), || {
            (once(target, "GET", "/__healthz", &[], b"").status == 200).then_some(())
        });
    }
    // actix keeps the newcomer in the backlog until a slot frees, then answers it.
    let flows = addr(p.url("flows"));
    let busy: Vec<Conn> = (0..8)
        .map(|_| {
            let mut conn = Conn::connect(flows).unwrap();
            conn.send("GET", "/__test/slow?ms=1000", &[], b"").unwrap();
            conn
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let late = once(flows, "GET", "/__healthz", &[], b"");
    assert_eq!(late.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    drop(busy);
}

#[test]
fn a_thousand_stalled_bodies_cost_little_memory_and_healthz_stays_fast() {
    // This test's own thousand sockets, next to the parallel tests' (the soft limit is often
    // 1024).
    let _ = rlimit::increase_nofile_limit(8192);
    let p = start(&["--body-timeout", "20s"]);
    let flows = addr(p.url("flows"));
    let before = rss_mib(p.pid());
    let stalled: Vec<TcpStream> = (0..1000)
        .map(|_| stalled_body(flows, "/flow/multi_server_flow"))
        .collect();
    eventually("1000 stalled bodies in flight", || {
        let info = get(&format!("{}/__serverz", p.url("admin"))).json;
        let flows = &info["servers"][0]["requests"]["in_flight"];
        (flows.as_u64() >= Some(1000)).then_some(())
    });
    let during = rss_mib(p.pid());
    let latencies: Vec<Duration> = (0..50)
        .map(|_| healthz_latency(addr(p.url("admin"))))
        .collect();
    let worst = p99(latencies);
    eprintln!(
        "1000 stalled bodies: RSS {before:.1} MiB -> {during:.1} MiB; /__healthz p99 {worst:?}"
    );
    drop(stalled);
    assert!(
        during < 96.0,
        "RSS {during:.1} MiB with 1000 stalled bodies"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Draining keeps keep-alive clients.

#[test]
fn from_the_shutdown_request_keep_alive_clients_are_told_to_close() {
    let mut p = start_dev(&["--drain-delay", "1500ms"]);
    let mut conns: Vec<(&str, Conn)> = SERVERS
        .iter()
        .map(|&s| (s, Conn::connect(addr(p.url(s))).unwrap()))
        .collect();
    for (server, conn) in &mut conns {
        let answer = conn.request("GET", "/__healthz", &[], b"").unwrap();
        assert!(!answer.closes(), "{server} before the shutdown");
    }
    p.signal("TERM");
    thread::sleep(Duration::from_millis(200));
    for (server, conn) in &mut conns {
        let answer = conn.request("GET", "/__readyz", &[], b"").unwrap();
        assert_eq!(answer.status, 503, "{server} drains");
        assert!(
            answer.closes(),
            "{server}: a drain-delay answer says Connection: close"
        );
    }
    assert!(p.wait_exit(EXIT_WAIT).success());
}

// ---------------------------------------------------------------------------------------------
// 7. Secrets and odd bytes in argv.

#[test]
fn serverz_never_shows_a_secret_and_survives_non_utf8_argv() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir("argv");
    // A path that is not UTF-8, under a flag whose name says "token".
    let name = std::ffi::OsStr::from_bytes(b"token-\xff\xfe");
    let path = dir.join(name);
    std::fs::write(&path, TOKEN).unwrap();
    let mut command_args: Vec<std::ffi::OsString> = ["--flows-ports", "0", "--admin-token-file"]
        .iter()
        .map(Into::into)
        .collect();
    command_args.push(path.clone().into_os_string());
    let dir_text = dir.to_str().unwrap().to_owned();
    let mut child = std::process::Command::new(bin())
        .args(&command_args)
        .env("MULTI_SERVER_ADMIN_PORTS", "0")
        .env_remove("GENKIT_ENV")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&banner).contains("admin ") || !banner.ends_with(b"\n") {
        if stdout.read(&mut byte).unwrap() == 0 {
            break;
        }
        banner.push(byte[0]);
    }
    let banner = String::from_utf8_lossy(&banner).into_owned();
    let admin = banner
        .lines()
        .find(|l| l.trim_start().starts_with("admin "))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .unwrap_or_else(|| panic!("no admin URL in {banner}"))
        .to_owned();
    let serverz = get(&format!("{admin}/__serverz"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(serverz.status, 200, "{}", serverz.text);
    let argv = serverz.json["argv"].to_string();
    assert!(
        !argv.contains(&dir_text),
        "the token file's path is redacted: {argv}"
    );
    assert!(argv.contains("--admin-token-file"), "{argv}");
}

// ---------------------------------------------------------------------------------------------
// 8. The discovery file.

#[test]
fn a_discovery_file_that_cannot_be_written_is_one_warning_and_the_runtime_serves() {
    let cwd = temp_dir("discovery");
    // `.genkit/runtimes` a regular file: the folder cannot be made (what a read-only working
    // directory does under systemd, and what root cannot be stopped from by permissions).
    std::fs::create_dir_all(cwd.join(".genkit")).unwrap();
    std::fs::write(cwd.join(".genkit").join("runtimes"), "not a folder").unwrap();
    let mut env = DEV_ENV.to_vec();
    env.push(("GENKIT_ENV", "dev"));
    let mut p = Process::start_in(bin(), &dev_args(), &env, &cwd);
    p.wait_for_log("cannot write the runtime file");
    let health = get(&format!("{}/api/__health", p.url("reflection")));
    assert_eq!(health.status, 200, "{}", health.text);
    p.signal("TERM");
    assert!(p.wait_exit(EXIT_WAIT).success(), "{}", p.stderr());
    let log = p.stderr();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("runtime file"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn the_discovery_folder_is_never_one_above_home() {
    let root = temp_dir("discovery-walk");
    let home = root.join("home");
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    // A marker above $HOME (another user's /tmp/package.json, say) is not a project root.
    std::fs::write(root.join("package.json"), "{}").unwrap();
    let mut env = DEV_ENV.to_vec();
    let home_text = home.to_str().unwrap().to_owned();
    env.push(("HOME", &home_text));
    let mut p = Process::start_in(bin(), &dev_args(), &env, &project);
    let pid = p.pid();
    let written = eventually("the discovery file is written", || {
        std::fs::read_dir(project.join(".genkit").join("runtimes"))
            .ok()?
            .filter_map(Result::ok)
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
            })
            .map(|e| e.path())
    });
    assert!(written.starts_with(&project), "{written:?}");
    assert!(
        !root.join(".genkit").exists(),
        "nothing written above $HOME"
    );
    p.signal("TERM");
    assert!(p.wait_exit(EXIT_WAIT).success());
    assert!(!written.exists(), "removed on exit");
}

// ---------------------------------------------------------------------------------------------
// 9. Absurd flag values.

#[test]
fn absurd_durations_and_limits_are_one_clear_error() {
    for (flag, value) in [
        ("--drain-deadline", "3e11y"),
        ("--drain-delay", "25h"),
        ("--body-timeout", "1000000000000000000s"),
        ("--max-connections", "0"),
        ("--head-timeout", "0s"),
        ("--body-timeout", "0ms"),
        ("--max-connections", "10000000"),
    ] {
        let mut p = Process::spawn(bin(), &["--flows-ports", "0", flag, value], &[]);
        let status = p.wait_exit(EXIT_WAIT);
        assert_eq!(status.code(), Some(2), "{flag} {value}");
        let log = p.stderr();
        assert!(log.contains(flag), "{flag} {value}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

//! The fault suite of issue 5, on the real binary over real loopback sockets: shutdown under
//! load on each framework's server, idle keep-alive connections at shutdown, a drain deadline
//! that cuts a reflection stream, servers that die (required and optional), garbage and
//! slowloris clients on every port, a corpus of malformed JSON for every JSON endpoint, and 50
//! start/stop cycles. Every test is bounded by count and by time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::{Conn, Process, addr, eventually, find, get, once, rss_kib, temp_dir};

use super::{DEV_ENV, bin, dev_args, server_entry, start, start_dev, wait_in_flight};

const EXIT_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Process helpers. (The raw HTTP/1.1 client, `Conn`, is the helper crate's.)

/// Starts the binary in dev mode with every server on an ephemeral port, plus `args`.
fn start_all(args: &[&str]) -> Process {
    let p = start_dev(args);
    for name in ["flows", "reflection", "devui"] {
        let _ = p.url(name);
    }
    p
}

fn assert_no_panic(p: &Process) {
    let log = p.stderr();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// SIGTERM under load, for each framework's server.

/// A cheap request and a slow one on one server.
struct Load {
    server: &'static str,
    cheap: (&'static str, &'static str),
    slow: (&'static str, &'static str, &'static str),
    /// A complete slow answer's body contains this.
    slow_done: &'static str,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    ok_after_signal: u64,
    refused: u64,
    /// A reused keep-alive connection closed without a byte of answer: the server had not
    /// begun the request (HTTP/1.1's keep-alive race; a client retries it on a new connection).
    keepalive_closed: u64,
    /// A connection opened after the signal, closed or reset before a byte of answer: the
    /// kernel completed the handshake, but the server stopped accepting (or closed it as idle,
    /// its request not yet read) in the same instant. The server never began that request.
    fresh_closed: u64,
    /// Anything else: a fresh connection reset or closed before an answer, a partial answer,
    /// a non-200, a timeout.
    bad: Vec<String>,
}

fn hammer(addr: SocketAddr, path: &'static str, signalled: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let until = Instant::now() + Duration::from_secs(30);
    'connections: while Instant::now() < until {
        let after = signalled.load(Ordering::SeqCst);
        let mut conn = match Conn::connect(addr) {
            Ok(conn) => conn,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && after => {
                tally.refused += 1;
                break;
            }
            Err(e) => {
                tally
                    .bad
                    .push(format!("connect (after signal: {after}): {e}"));
                break;
            }
        };
        loop {
            let after = signalled.load(Ordering::SeqCst);
            match conn.request("GET", path, &[], b"") {
                Ok(answer) if answer.status == 200 => {
                    tally.ok += 1;
                    if after {
                        tally.ok_after_signal += 1;
                    }
                    if answer.closes() {
                        continue 'connections;
                    }
                }
                Ok(answer) => {
                    tally
                        .bad
                        .push(format!("status {} {}", answer.status, answer.text()));
                    break 'connections;
                }
                Err(f) if f.received == 0 && conn.answered > 0 => {
                    tally.keepalive_closed += 1;
                    continue 'connections;
                }
                Err(f) if f.received == 0 && after => {
                    tally.fresh_closed += 1;
                    continue 'connections;
                }
                Err(f) => {
                    tally.bad.push(format!(
                        "request #{} on a connection (after signal: {after}): {f:?}",
                        conn.answered + 1
                    ));
                    break 'connections;
                }
            }
        }
    }
    tally
}

fn sigterm_under_load(load: &Load) {
    const CLIENTS: usize = 50;
    const SLOW: usize = 3;
    let mut p = if load.server == "flows" {
        start(&["--drain-deadline", "20s"])
    } else {
        start_all(&["--drain-deadline", "20s"])
    };
    let target = addr(p.url(load.server));
    // Counted through the flows server, so the poll is not among the counted requests.
    let via = "flows";

    // Slow requests first, then wait until the server has begun every one.
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let (method, path, body) = load.slow;
            thread::spawn(move || {
                let mut conn = Conn::connect(target)?;
                conn.request(
                    method,
                    path,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
                .map_err(|f| f.error)
            })
        })
        .collect();
    wait_in_flight(&p, via, load.server, SLOW as u64);

    let signalled = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let signalled = Arc::clone(&signalled);
            let path = load.cheap.1;
            thread::spawn(move || hammer(target, path, &signalled))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    signalled.store(true, Ordering::SeqCst);
    p.signal("TERM");
    let signalled_at = Instant::now();
    let status = p.wait_exit(EXIT_WAIT);
    let exit_ms = signalled_at.elapsed().as_millis();
    // The server is gone: every client's next connection attempt is refused and it ends.

    let mut total = Tally::default();
    for client in clients {
        let tally = client.join().expect("client thread");
        total.ok += tally.ok;
        total.ok_after_signal += tally.ok_after_signal;
        total.refused += tally.refused;
        total.keepalive_closed += tally.keepalive_closed;
        total.fresh_closed += tally.fresh_closed;
        total.bad.extend(tally.bad);
    }
    let log = p.stderr();
    for slow in slow {
        let answer = slow.join().expect("slow thread").unwrap_or_else(|e| {
            panic!(
                "{}: a slow request begun before SIGTERM failed: {e}\n{log}",
                load.server
            )
        });
        assert_eq!(answer.status, 200, "{}: {}", load.server, answer.text());
        assert!(
            answer.text().contains(load.slow_done),
            "{}: the slow answer is incomplete: {}",
            load.server,
            answer.text()
        );
    }
    eprintln!(
        "{} under load: exit {:?} after {exit_ms} ms; {total:?}",
        load.server,
        status.code()
    );
    assert_eq!(status.code(), Some(0), "{}: {log}", load.server);
    assert!(
        total.bad.is_empty(),
        "{}: {:#?}\n{log}",
        load.server,
        total.bad
    );
    assert!(
        total.ok > CLIENTS as u64,
        "{}: too little load: {total:?}",
        load.server
    );
    assert_eq!(
        total.refused, CLIENTS as u64,
        "{}: every client ends refused: {total:?}",
        load.server
    );
    // The socket stops listening before any response says `Connection: close` and before
    // idle connections are closed, so a client sent away reconnects into "refused", never
    // into a backlog that is then reset.
    assert_eq!(total.fresh_closed, 0, "{}: {total:?}", load.server);
    assert!(
        !log.contains("status=\"aborted\""),
        "{}: a request the server had begun was not answered:\n{log}",
        load.server
    );
    assert!(log.contains("outcome=Clean"), "{log}");
    // Every port is closed now.
    let refused = TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .expect_err("nothing listens after exit");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn sigterm_under_load_flows_actix() {
    sigterm_under_load(&Load {
        server: "flows",
        cheap: ("GET", "/greet"),
        slow: ("GET", "/__test/slow?ms=2500", ""),
        slow_done: "\"slept_ms\":2500",
    });
}

#[test]
fn sigterm_under_load_reflection_poem() {
    sigterm_under_load(&Load {
        server: "reflection",
        cheap: ("GET", "/api/__health"),
        slow: (
            "POST",
            "/api/runAction?stream=true",
            r#"{"key":"/flow/streaming_greeting","input":{"name":"Slow","interval_ms":400}}"#,
        ),
        slow_done: "\"result\":\"Hello from multi-server, Slow!",
    });
}

#[test]
fn sigterm_under_load_devui_salvo() {
    sigterm_under_load(&Load {
        server: "devui",
        cheap: ("GET", "/__healthz"),
        slow: (
            "POST",
            "/api/flows/streaming_greeting/run",
            r#"{"input":{"name":"Slow","interval_ms":400}}"#,
        ),
        slow_done: "\"type\":\"result\"",
    });
}

// ---------------------------------------------------------------------------------------------
// Idle keep-alive connections at shutdown.

#[test]
fn idle_keep_alive_connections_are_closed_at_once_on_shutdown() {
    let mut p = start_all(&["--drain-deadline", "30s"]);
    let cheap = [
        ("flows", "/greet"),
        ("reflection", "/api/__health"),
        ("devui", "/__healthz"),
    ];
    let mut idle: Vec<(&str, Conn)> = cheap
        .iter()
        .map(|(name, path)| {
            let mut conn = Conn::connect(addr(p.url(name))).expect("connect");
            let answer = conn.request("GET", path, &[], b"").expect("first request");
            assert_eq!(answer.status, 200, "{name}");
            assert!(!answer.closes(), "{name} must keep the connection alive");
            (*name, conn)
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    let signalled = Instant::now();
    for (name, conn) in &mut idle {
        conn.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        let result = conn.stream.read(&mut byte);
        let after = signalled.elapsed();
        match result {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{name}: idle connection not closed: {other:?} after {after:?}"),
        }
        eprintln!("{name}: idle keep-alive connection closed {after:?} after SIGTERM");
        assert!(
            after < Duration::from_secs(3),
            "{name}: closed only after {after:?}"
        );
    }
    let status = p.wait_exit(Duration::from_secs(5));
    let exit = signalled.elapsed();
    eprintln!(
        "idle keep-alive: exit {:?} {exit:?} after SIGTERM",
        status.code()
    );
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    assert!(exit < Duration::from_secs(3), "exit took {exit:?}");
}

// ---------------------------------------------------------------------------------------------
// The drain deadline cuts a reflection stream.

#[test]
fn a_drain_deadline_shorter_than_a_reflection_stream_cuts_it_and_exits_3() {
    let mut p = start_dev(&["--drain-deadline", "300ms"]);
    let target = addr(p.url("reflection"));
    let client = thread::spawn(move || {
        let mut conn = Conn::connect(target).expect("connect");
        let body =
            r#"{"key":"/flow/streaming_greeting","input":{"name":"Cut","interval_ms":2000}}"#;
        conn.request(
            "POST",
            "/api/runAction?stream=true",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    });
    wait_in_flight(&p, "flows", "reflection", 1);
    p.signal("TERM");
    let status = p.wait_exit(EXIT_WAIT);
    let log = p.stderr();
    assert_eq!(status.code(), Some(3), "{log}");
    match client.join().expect("client") {
        Ok(answer) => panic!("the cut stream must not look complete: {}", answer.text()),
        Err(f) => assert!(f.received > 0, "the stream had begun: {f:?}"),
    }
    assert!(
        log.contains("path=\"/api/runAction\" status=\"aborted\" reason=\"drain deadline\""),
        "{log}"
    );
    assert!(
        log.contains("drain deadline passed: requests cut") && log.contains("cut=1"),
        "{log}"
    );
    assert!(log.contains("outcome=RequestsCut requests_cut=1"), "{log}");
    assert!(
        log.contains("error: drain deadline (300ms) cut 1 in-flight request(s)"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Servers that die while running.

fn runtime_files(p: &Process) -> Vec<String> {
    let dir = p.dir().join(".genkit").join("runtimes");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_required_server_that_dies_takes_the_process_down_with_status_1() {
    let mut p = start_all(&[]);
    assert_eq!(runtime_files(&p).len(), 1, "the discovery file is there");
    let flows = addr(p.url("flows"));
    // The answer may or may not make it out before the server dies.
    if let Ok(mut conn) = Conn::connect(flows)
        && let Ok(answer) = conn.request("POST", "/__test/crash", &[], b"")
    {
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    let status = p.wait_exit(EXIT_WAIT);
    let log = p.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("error: server 'flows' failed: injected crash (POST /__test/crash)"),
        "{log}"
    );
    assert!(log.contains("reason=server 'flows' failed"), "{log}");
    assert!(log.contains("outcome=Failed"), "{log}");
    // The others drained and their shutdown hooks ran, once each.
    assert_eq!(
        log.matches("shutdown hook server=\"flows\"").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("runtime file removed").count(),
        1,
        "the reflection server's shutdown hook: {log}"
    );
    assert!(runtime_files(&p).is_empty(), "{:?}", runtime_files(&p));
    assert_no_panic(&p);
}

#[test]
fn an_optional_server_that_dies_is_shown_failed_and_the_rest_keeps_serving() {
    let mut p = start(&["--test-optional-flows"]);
    let flows = p.url("flows").to_owned();
    let optional = addr(p.url("flows-optional"));
    assert_eq!(
        server_entry(&p, "flows", "flows-optional")["state"],
        "serving"
    );
    assert_eq!(
        server_entry(&p, "flows", "flows-optional")["required"],
        false
    );
    let answer = once(optional, "POST", "/__test/crash", &[], b"");
    assert_eq!(answer.status, 202, "{}", answer.text());

    let entry = eventually("flows-optional failed", || {
        let entry = server_entry(&p, "flows", "flows-optional");
        (entry["state"] == "failed").then_some(entry)
    });
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("server 'flows-optional' failed: injected crash"),
        "{entry}"
    );
    // Readiness counts required servers only: the process is live and `flows` serves.
    let ready = get(&format!("{flows}/__readyz"));
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["ready"], true, "{}", ready.text);
    assert_eq!(ready.json["state"], "live", "{}", ready.text);
    let listed = ready.json["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "flows-optional").cloned())
        .expect("the optional server is listed");
    assert_eq!(listed["state"], "failed", "{}", ready.text);
    assert_eq!(listed["required"], false, "{}", ready.text);
    assert_eq!(get(&format!("{flows}/greet")).status, 200);
    // Its port is released.
    eventually(
        "the dead server's port refuses connections",
        || match TcpStream::connect_timeout(&optional, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    // Logged as the state changes, and written out a moment later (the log writer batches).
    eventually("the optional server's failure is logged", || {
        p.stderr()
            .contains("optional server failed; carrying on")
            .then_some(())
    });
    assert!(p.stdout().contains("flows-optional"), "{}", p.stdout());

    p.signal("TERM");
    let status = p.wait_exit(EXIT_WAIT);
    let log = p.stderr();
    assert_eq!(
        status.code(),
        Some(0),
        "an optional failure is not fatal: {log}"
    );
    assert!(!log.contains("error: server"), "{log}");
    assert_no_panic(&p);
}

// ---------------------------------------------------------------------------------------------
// Garbage on every port.

/// Deterministic noise (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// Writes `bytes` (from another thread, since the server may answer and close before reading
/// all of them), then reads until the server closes. Returns the status line's code, if any.
fn garbage(addr: SocketAddr, bytes: Vec<u8>) -> Option<u16> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut writer = stream.try_clone().expect("clone");
    let write = thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let mut reader = stream;
    let mut got = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "{addr}: neither an answer nor a close after {:?}: {e}",
                started.elapsed()
            ),
        }
        if find(&got, b"\r\n\r\n").is_some() {
            break;
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = write.join();
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// A client that sends the start of a request head and then one byte every 500 ms, never the
/// blank line. Returns how long the server took to drop it.
fn slowloris(addr: SocketAddr, bound: Duration) -> Duration {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /__healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .expect("first bytes");
    let mut chunk = [0u8; 1024];
    while started.elapsed() < bound {
        if stream.write_all(b"a").is_err() {
            return started.elapsed();
        }
        match stream.read(&mut chunk) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {} // e.g. 408, then the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return started.elapsed(),
        }
    }
    panic!("{addr}: a slowloris client was still connected after {bound:?}");
}

#[test]
fn garbage_on_every_port_is_refused_or_dropped_and_the_servers_carry_on() {
    const SLOWLORIS_BOUND: Duration = Duration::from_secs(15);
    const SLOWLORIS_PER_SERVER: usize = 4;
    let mut p = start_all(&[]);
    let pid = p.pid();
    let servers: Vec<(&str, SocketAddr, &str, &str)> = vec![
        (
            "flows",
            addr(p.url("flows")),
            "/greet",
            "/flow/multi_server_flow",
        ),
        (
            "reflection",
            addr(p.url("reflection")),
            "/api/__health",
            "/api/runAction",
        ),
        (
            "devui",
            addr(p.url("devui")),
            "/__healthz",
            "/api/flows/multi_server_flow/run",
        ),
    ];
    let rss_start = rss_kib(pid);

    // Slowloris clients on every port, for the whole test.
    let loris: Vec<_> = servers
        .iter()
        .flat_map(|&(name, addr, _, _)| {
            (0..SLOWLORIS_PER_SERVER)
                .map(move |_| thread::spawn(move || (name, slowloris(addr, SLOWLORIS_BOUND))))
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    let mut rss_max = rss_start;
    for (i, &(name, addr, cheap, json_endpoint)) in servers.iter().enumerate() {
        // Random bytes.
        for seed in 1..=3u64 {
            let status = garbage(addr, noise(64 * 1024, seed * 7919 + i as u64));
            assert!(
                status.is_none_or(|s| (400..500).contains(&s)),
                "{name}: random bytes got {status:?}"
            );
        }
        // A request head with a 1 MiB header.
        let mut big = format!("GET {cheap} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ").into_bytes();
        big.extend(std::iter::repeat_n(b'a', 1024 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        let status = garbage(addr, big);
        eprintln!("{name}: a 1 MiB header got {status:?}");
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{name}: a 1 MiB header got {status:?}"
        );
        // A body over the documented 1 MiB limit: 413 with a JSON error.
        let body = vec![b' '; 2 * 1024 * 1024];
        let mut conn = Conn::connect(addr).expect("connect");
        let writer = {
            let mut stream = conn.stream.try_clone().expect("clone");
            let head = format!(
                "POST {json_endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            thread::spawn(move || {
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            })
        };
        let answer = conn
            .answer()
            .unwrap_or_else(|f| panic!("{name}: no answer to a 2 MiB body: {f:?}"));
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        assert_eq!(answer.status, 413, "{name}: {}", answer.text());
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{name}: {:?}",
            answer.headers
        );
        assert!(
            answer.json()["error"].is_string(),
            "{name}: {}",
            answer.text()
        );
        // A chunked body over the limit (no length to check up front): 413 or a drop.
        let mut conn = Conn::connect(addr).expect("connect");
        let writer = {
            let mut stream = conn.stream.try_clone().expect("clone");
            let head = format!(
                "POST {json_endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            thread::spawn(move || {
                let _ = stream.write_all(head.as_bytes());
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                for _ in 0..32 {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            })
        };
        match conn.answer() {
            Ok(answer) => {
                assert_eq!(answer.status, 413, "{name} chunked: {}", answer.text());
                assert!(
                    answer.json()["error"].is_string(),
                    "{name}: {}",
                    answer.text()
                );
            }
            Err(f) => assert!(
                matches!(
                    f.error.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ),
                "{name} chunked: {f:?}"
            ),
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        rss_max = rss_max.max(rss_kib(pid));
    }

    // While the slowloris clients are still connected, every server answers others at once.
    for &(name, addr, cheap, _) in &servers {
        let started = Instant::now();
        let answer = once(addr, "GET", cheap, &[], b"");
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
    assert!(
        loris.iter().any(|t| !t.is_finished()),
        "the slowloris clients should still be connected"
    );

    let mut closed: Vec<(&str, Duration)> = Vec::new();
    for handle in loris {
        let (name, after) = handle.join().expect("slowloris thread");
        rss_max = rss_max.max(rss_kib(pid));
        closed.push((name, after));
    }
    let rss_end = rss_kib(pid);
    eprintln!(
        "garbage: RSS {rss_start} KiB at start, max {rss_max} KiB, {rss_end} KiB at the end; slowloris dropped after {closed:?}"
    );
    assert!(rss_max < 100 * 1024, "RSS grew to {rss_max} KiB");
    for &(name, addr, cheap, _) in &servers {
        assert_eq!(once(addr, "GET", cheap, &[], b"").status, 200, "{name}");
    }
    assert_no_panic(&p);
    p.signal("TERM");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
}

// ---------------------------------------------------------------------------------------------
// Malformed input for every JSON endpoint.

/// Bodies no JSON endpoint accepts: (what, content type, bytes).
fn corpus() -> Vec<(String, &'static str, Vec<u8>)> {
    const JSON: &str = "application/json";
    let mut cases: Vec<(String, &'static str, Vec<u8>)> = vec![
        ("empty body".into(), JSON, Vec::new()),
        ("empty body, no type".into(), "", Vec::new()),
        (
            "truncated object".into(),
            JSON,
            br#"{"key": "/flow/multi_server_flow", "input": "x"#.to_vec(),
        ),
        (
            "truncated array".into(),
            JSON,
            br#"{"input": [1, 2"#.to_vec(),
        ),
        ("lone brace".into(), JSON, b"{".to_vec()),
        ("unterminated string".into(), JSON, b"\"abc".to_vec()),
        ("not json".into(), JSON, b"not json at all".to_vec()),
        (
            "trailing garbage".into(),
            JSON,
            br#"{"input": "x"} garbage"#.to_vec(),
        ),
        ("1e400".into(), JSON, b"1e400".to_vec()),
        ("-1e400".into(), JSON, b"-1e400".to_vec()),
        (
            "1e400 in a field".into(),
            JSON,
            br#"{"key": 1e400, "input": 1e400, "traceId": 1e400}"#.to_vec(),
        ),
        (
            "huge integer".into(),
            JSON,
            b"99999999999999999999999".to_vec(),
        ),
        (
            "huge integer input".into(),
            JSON,
            br#"{"key": 99999999999999999999999, "input": 99999999999999999999999, "traceId": 99999999999999999999999, "telemetryServerUrl": 99999999999999999999999}"#.to_vec(),
        ),
        (
            "invalid UTF-8 string".into(),
            JSON,
            b"\"\xff\xfe\"".to_vec(),
        ),
        (
            "invalid UTF-8 in a field".into(),
            JSON,
            b"{\"input\": \"\xc3\x28\", \"key\": \"\xc3\x28\"}".to_vec(),
        ),
        (
            "invalid UTF-8 bytes".into(),
            JSON,
            b"\xff\xff\xff\xff".to_vec(),
        ),
        (
            "byte order mark".into(),
            JSON,
            "\u{feff}{}".as_bytes().to_vec(),
        ),
        ("NUL bytes".into(), JSON, b"\0\0\0\0".to_vec()),
        (
            "wrong content type".into(),
            "text/plain",
            br#"{"key":"/flow/multi_server_flow","input":"x","traceId":"x"}"#.to_vec(),
        ),
        (
            "form content type".into(),
            "application/x-www-form-urlencoded",
            b"input=x&key=y".to_vec(),
        ),
        ("wrong types: number".into(), JSON, b"5".to_vec()),
        ("wrong types: bool".into(), JSON, b"true".to_vec()),
        ("wrong types: array".into(), JSON, b"[]".to_vec()),
        (
            "wrong types: fields".into(),
            JSON,
            br#"{"key": 5, "input": [], "traceId": 7, "telemetryServerUrl": 5}"#.to_vec(),
        ),
    ];
    let deep = |open: &str, close: &str, n: usize| {
        let mut s = open.repeat(n);
        s.push_str(&close.repeat(n));
        s.into_bytes()
    };
    cases.push(("100000 '['".into(), JSON, "[".repeat(100_000).into_bytes()));
    cases.push((
        "100000 nested arrays, closed".into(),
        JSON,
        deep("[", "]", 100_000),
    ));
    cases.push((
        "50000 nested objects".into(),
        JSON,
        deep("{\"a\":", "}", 50_000),
    ));
    cases.push((
        "deep input".into(),
        JSON,
        format!(
            "{{\"key\":\"/flow/multi_server_flow\",\"input\":{}}}",
            "[".repeat(100_000)
        )
        .into_bytes(),
    ));
    cases
}

#[test]
fn malformed_json_on_every_json_endpoint_is_a_4xx_with_a_json_error() {
    let mut p = start_all(&[]);
    let flows = addr(p.url("flows"));
    let reflection = addr(p.url("reflection"));
    let devui = addr(p.url("devui"));
    let endpoints: Vec<(SocketAddr, &str, Vec<&[u8]>)> = vec![
        (
            flows,
            "/flow/multi_server_flow",
            vec![b"5", b"null", b"{}", b"[\"x\"]", b"{\"input\":\"x\"}"],
        ),
        (
            flows,
            "/flow/plan_trip",
            vec![
                b"\"Oslo\"",
                br#"{"destination":1,"days":2,"travelers":["a"]}"#,
                br#"{"destination":"x","days":"two","travelers":["a"]}"#,
                br#"{"destination":"x","days":300,"travelers":["a"]}"#,
                br#"{"destination":"x","days":2,"travelers":"a"}"#,
                br#"{"destination":"x","days":2,"travelers":["a"],"pace":"sprint"}"#,
            ],
        ),
        (
            flows,
            "/flow/streaming_greeting?stream=true",
            vec![
                br#"{"name":5}"#,
                br#"{"name":"x","interval_ms":-1}"#,
                br#"{"name":"x","interval_ms":1e400}"#,
                br#"{"name":"x","extra":1}"#,
            ],
        ),
        (
            reflection,
            "/api/runAction",
            vec![
                br#"{"key":5}"#,
                br#"{"key":["x"],"input":"x"}"#,
                br#"{"key":null,"input":"x"}"#,
                br#"{"input":"x"}"#,
                br#"{"key":"/flow/multi_server_flow","telemetryLabels":"x"}"#,
                br#"{"key":"/flow/multi_server_flow","telemetryLabels":[1]}"#,
                b"\"/flow/multi_server_flow\"",
                b"null",
            ],
        ),
        (
            reflection,
            "/api/runAction?stream=true",
            vec![br#"{"key":{},"input":"x"}"#],
        ),
        (
            reflection,
            "/api/cancelAction",
            vec![
                br#"{"traceId":5}"#,
                br#"{"traceId":""}"#,
                b"{}",
                br#"["abc"]"#,
                b"null",
            ],
        ),
        (
            reflection,
            "/api/notify",
            vec![
                br#"{"telemetryServerUrl":5}"#,
                br#"{"telemetryServerUrl":["http://127.0.0.1:1"]}"#,
                b"\"x\"",
                b"null",
                b"[5]",
            ],
        ),
        (
            devui,
            "/api/flows/multi_server_flow/run",
            vec![
                b"{}",
                br#"{"inputs":"x"}"#,
                br#"{"input":5}"#,
                br#"{"input":"x","extra":1}"#,
                b"\"x\"",
                b"null",
            ],
        ),
        (
            devui,
            "/api/flows/plan_trip/run",
            vec![br#"{"input":{"destination":"x","days":"two","travelers":["a"]}}"#],
        ),
        (devui, "/api/runs/no-such-trace/cancel", vec![]),
    ];
    let corpus = corpus();
    let mut failures = Vec::new();
    let mut count = 0;
    for (addr, path, specific) in &endpoints {
        let specific = specific.iter().map(|b| {
            (
                format!("specific {}", String::from_utf8_lossy(b)),
                "application/json",
                b.to_vec(),
            )
        });
        for (what, content_type, body) in corpus.iter().cloned().chain(specific) {
            count += 1;
            let headers: Vec<(&str, &str)> = if content_type.is_empty() {
                vec![]
            } else {
                vec![("Content-Type", content_type)]
            };
            let mut conn = Conn::connect(*addr).expect("connect");
            let answer = match conn.request("POST", path, &headers, &body) {
                Ok(answer) => answer,
                Err(f) => {
                    failures.push(format!("POST {path} ({what}): no answer: {f:?}"));
                    continue;
                }
            };
            let json = answer.json();
            let is_json = answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json"));
            if !(400..500).contains(&answer.status) || !is_json || json["error"].is_null() {
                failures.push(format!(
                    "POST {path} ({what}): {} {:?} {}",
                    answer.status,
                    answer.header("content-type"),
                    answer.text().chars().take(300).collect::<String>()
                ));
            }
        }
    }
    eprintln!("malformed input: {count} requests");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every server still serves, no panic, a clean exit.
    assert_eq!(once(flows, "GET", "/greet", &[], b"").status, 200);
    assert_eq!(
        once(reflection, "GET", "/api/__health", &[], b"").status,
        200
    );
    assert_eq!(once(devui, "GET", "/__healthz", &[], b"").status, 200);
    let info = get(&format!("{}/__serverz", p.url("flows"))).json;
    for server in info["servers"].as_array().expect("servers") {
        assert_eq!(server["requests"]["server_errors"], 0, "{server}");
        assert_eq!(server["state"], "serving", "{server}");
    }
    assert_no_panic(&p);
    p.signal("TERM");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
}

// ---------------------------------------------------------------------------------------------
// 50 start/stop cycles.

fn children_of(pid: u32) -> Vec<String> {
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(Result::ok) {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(list.split_whitespace().map(str::to_owned));
            }
        }
    }
    children
}

fn quit(url: &str, path: &str) {
    let answer = once(addr(url), "POST", path, &[], b"");
    assert_eq!(answer.status, 200, "POST {path}: {}", answer.text());
    assert_eq!(answer.json()["status"], "OK", "{}", answer.text());
}

#[test]
fn fifty_start_stop_cycles_leave_nothing_behind() {
    const CYCLES: usize = 50;
    let bound = Duration::from_secs(120);
    let cwd = temp_dir("cycles");
    let runtimes = cwd.join(".genkit").join("runtimes");
    let mut args = dev_args();
    args.extend_from_slice(&["--devui-ports", "0"]);
    let started = Instant::now();
    let mut methods = Vec::new();
    for cycle in 0..CYCLES {
        assert!(
            started.elapsed() < bound,
            "{cycle} cycles took {:?}",
            started.elapsed()
        );
        let mut p = Process::start_in(bin(), &args, DEV_ENV, &cwd);
        let ports: Vec<(String, u16)> = p
            .urls
            .iter()
            .map(|(name, url)| (name.clone(), addr(url).port()))
            .collect();
        assert_eq!(ports.len(), 4, "{:?}", p.urls);
        assert_eq!(
            files_in(&runtimes).len(),
            1,
            "cycle {cycle}: the discovery file"
        );
        assert!(
            children_of(p.pid()).is_empty(),
            "cycle {cycle}: a child process"
        );
        let method = match cycle % 5 {
            0 => {
                p.signal("TERM");
                "SIGTERM"
            }
            1 => {
                p.signal("INT");
                "SIGINT"
            }
            2 => {
                quit(p.url("flows"), "/__quitquitquitz");
                "POST flows /__quitquitquitz"
            }
            3 => {
                quit(p.url("reflection"), "/api/__quitquitquit");
                "POST reflection /api/__quitquitquit"
            }
            _ => {
                quit(p.url("devui"), "/__quitquitquitz");
                "POST devui /__quitquitquitz"
            }
        };
        let status = p.wait_exit(EXIT_WAIT);
        assert_eq!(
            status.code(),
            Some(0),
            "cycle {cycle} ({method}): {}",
            p.stderr()
        );
        assert!(
            !Path::new(&format!("/proc/{}", p.pid())).exists(),
            "cycle {cycle}: the process is still there"
        );
        let left = files_in(&runtimes);
        assert!(left.is_empty(), "cycle {cycle} ({method}): left {left:?}");
        for (name, port) in &ports {
            if let Err(e) = TcpListener::bind(("127.0.0.1", *port)) {
                panic!("cycle {cycle} ({method}): port {port} of {name} not free: {e}");
            }
        }
        methods.push(method);
    }
    let took = started.elapsed();
    eprintln!(
        "{CYCLES} start/stop cycles in {took:?} ({:?} each)",
        took / CYCLES as u32
    );
    assert!(took < bound, "{took:?}");
    for method in [
        "SIGTERM",
        "SIGINT",
        "/__quitquitquitz",
        "/api/__quitquitquit",
    ] {
        assert!(methods.iter().any(|m| m.contains(method)));
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

//! The conformance suite of issue 9: one list of servers ([`SERVERS`]: every server of the
//! binary, and the hyper example of the manager crate), and every check run against each of
//! them. A check that one server fails fails its test, naming the server; failures are
//! collected per server (each server's checks run in a thread of their own) and reported
//! together, so one bad server does not hide another.
//!
//! Every test starts the binary once (all four servers) and the example once, on ephemeral
//! ports, with 1 s head and body deadlines; both are killed on drop. The checks, one test
//! each:
//!
//! 1. the admin endpoints and their codes (and a loopback quit stopping the process, a
//!    cross-origin one refused);
//! 2. `x-request-id` on every answer, errors included, never twice the same;
//! 3. the JSON 404;
//! 4. a panic is a 500 for that request only;
//! 5. the body limit (413 above it, not at it) and the head limit (431);
//! 6. the head and body deadlines;
//! 7. a foreign `Host` refused on every path of a loopback-only server;
//! 8. SIGTERM: in-flight keep-alive requests finish with `Connection: close`, idle
//!    connections close at once, newcomers are refused, exit 0;
//! 9. the drain deadline cuts requests, logs each as aborted, exit 3.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::{Answer, Conn, Failure, Process, WAIT, addr, try_get};
use serde_json::json;

use super::bin;

// ---------------------------------------------------------------------------------------------
// The servers under test.

/// Which process a server runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The multi-server binary (built with `test-faults`): all four servers at once.
    Binary,
    /// `crates/manager/examples/01_hyper.rs`: one server, `hello`.
    Example,
}

/// One server under test.
#[derive(Debug, Clone, Copy)]
struct Server {
    /// Its name in the banner, in `/__serverz` and in the log (`server="..."`).
    name: &'static str,
    /// What `/__serverz` says it runs on.
    framework: &'static str,
    kind: Kind,
    /// Refuses a foreign `Host` name (403) on every path, admin endpoints included.
    loopback_only: bool,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.framework)
    }
}

/// Every server the suite checks. A new framework is one more line here.
const SERVERS: &[Server] = &[
    Server {
        name: "flows",
        framework: "actix-web",
        kind: Kind::Binary,
        loopback_only: false,
    },
    Server {
        name: "reflection",
        framework: "poem",
        kind: Kind::Binary,
        loopback_only: true,
    },
    Server {
        name: "devui",
        framework: "salvo",
        kind: Kind::Binary,
        loopback_only: true,
    },
    Server {
        name: "admin",
        framework: "axum",
        kind: Kind::Binary,
        // Bound on loopback (the default), it answers only loopback names.
        loopback_only: true,
    },
    Server {
        name: "hello",
        framework: "hyper",
        kind: Kind::Example,
        loopback_only: false,
    },
];

/// The body limit every server enforces.
const BODY_LIMIT: usize = 1 << 20;
/// The request-head size above which every server answers 431: each framework's parser has
/// its own limit (actix 128 KiB, hyper's buffer about 408 KiB under poem, salvo, axum and
/// plain hyper)...
const HEAD_LIMIT: usize = 408 * 1024;
/// ...and the size of the one header that takes a request head over all of them.
const BIG_HEADER: usize = 512 * 1024;
/// `--head-timeout` and `--body-timeout` of every test but the shutdown one.
const DEADLINE: Duration = Duration::from_secs(1);
/// How much later than its deadline a server may act.
const SLACK: Duration = Duration::from_secs(3);
/// A `Host` name no loopback-only server answers under (a DNS-rebinding page's).
const FOREIGN_HOST: &str = "rebind.evil:4000";
/// An `Origin` that is not the server's own.
const FOREIGN_ORIGIN: &str = "http://evil.example";

/// How the processes are started.
#[derive(Debug, Clone, Copy)]
struct Opts {
    head_timeout: &'static str,
    drain_deadline: Option<&'static str>,
}

const DEFAULT: Opts = Opts {
    head_timeout: "1s",
    drain_deadline: None,
};

/// The binary with every server on an ephemeral port.
fn start_binary(opts: Opts) -> Process {
    let mut args = super::dev_args();
    args.extend([
        "--devui-ports",
        "0",
        "--admin-ports",
        "0",
        "--head-timeout",
        opts.head_timeout,
        "--body-timeout",
        "1s",
    ]);
    if let Some(deadline) = opts.drain_deadline {
        args.extend(["--drain-deadline", deadline]);
    }
    let p = Process::start_with_env(bin(), &args, &[("GENKIT_TELEMETRY_SERVER", "")]);
    for server in SERVERS.iter().filter(|s| s.kind == Kind::Binary) {
        let _ = p.url(server.name);
    }
    p
}

/// The hyper example on an ephemeral port, with its test routes.
fn start_example(opts: Opts) -> Process {
    let mut args = vec![
        "--ports",
        "0",
        "--test-routes",
        "--head-timeout",
        opts.head_timeout,
        "--body-timeout",
        "1s",
    ];
    if let Some(deadline) = opts.drain_deadline {
        args.extend(["--drain-deadline", deadline]);
    }
    // Plain log lines (the example's subscriber colours them otherwise).
    let p = Process::start_with_env(example_bin(), &args, &[("NO_COLOR", "1")]);
    let _ = p.url("hello");
    p
}

fn start_one(kind: Kind, opts: Opts) -> Process {
    match kind {
        Kind::Binary => start_binary(opts),
        Kind::Example => start_example(opts),
    }
}

/// `<target>/<profile>/examples/01_hyper`, next to the binary under test. `cargo test
/// --workspace` builds it; otherwise (e.g. `cargo test -p multi-server --test e2e`), or when
/// it is older than the binary (perhaps stale), it is built here, once per run, with the
/// binary's profile and target directory.
fn example_bin() -> &'static str {
    static PATH: OnceLock<Result<String, String>> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        // Next to the binary cargo built (not an override of the binary under test).
        let built = env!("CARGO_BIN_EXE_multi-server");
        let profile_dir = Path::new(built)
            .parent()
            .ok_or_else(|| format!("{built} has no directory"))?;
        let path = profile_dir.join("examples").join("01_hyper");
        let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        let fresh = match (modified(&path), modified(Path::new(built))) {
            (Some(example), Some(bin)) => example >= bin,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !fresh {
            build_example(profile_dir)?;
        }
        if !path.exists() {
            return Err(format!("{} is missing after the build", path.display()));
        }
        Ok(path.to_string_lossy().into_owned())
    });
    path.as_deref()
        .unwrap_or_else(|e| panic!("the hyper example: {e}"))
}

fn build_example(profile_dir: &Path) -> Result<(), String> {
    let target_dir: PathBuf = profile_dir
        .parent()
        .ok_or("the profile directory has no parent")?
        .to_owned();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "-p",
            "multi-server-manager",
            "--example",
            "01_hyper",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let started = Instant::now();
    let output = command.output().map_err(|e| format!("run {cargo}: {e}"))?;
    eprintln!("built the hyper example in {:?}", started.elapsed());
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cargo} build -p multi-server-manager --example 01_hyper` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The two processes of one test.
struct Suite {
    binary: Process,
    example: Process,
}

impl Suite {
    /// Starts both processes (at once) and waits for their banners.
    fn start(opts: Opts) -> Suite {
        thread::scope(|scope| {
            let binary = scope.spawn(|| start_binary(opts));
            let example = scope.spawn(|| start_example(opts));
            let join = |h: thread::ScopedJoinHandle<'_, Process>| {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            let binary = join(binary);
            let example = join(example);
            Suite { binary, example }
        })
    }

    fn process(&self, kind: Kind) -> &Process {
        match kind {
            Kind::Binary => &self.binary,
            Kind::Example => &self.example,
        }
    }

    fn process_mut(&mut self, kind: Kind) -> &mut Process {
        match kind {
            Kind::Binary => &mut self.binary,
            Kind::Example => &mut self.example,
        }
    }

    /// Every server and its address.
    fn targets(&self) -> Vec<(Server, SocketAddr)> {
        SERVERS
            .iter()
            .map(|&s| (s, addr(self.process(s.kind).url(s.name))))
            .collect()
    }

    /// Sends `SIGTERM` to both processes; returns when each was signalled.
    fn sigterm(&self) -> (Instant, Instant) {
        self.binary.signal("TERM");
        let binary = Instant::now();
        self.example.signal("TERM");
        (binary, Instant::now())
    }

    /// Waits for both processes to exit; a failure for each that does not exit with `code`.
    fn exits_with(&mut self, code: i32) -> Vec<String> {
        let mut failures = Vec::new();
        for kind in [Kind::Binary, Kind::Example] {
            let p = self.process_mut(kind);
            match p.try_wait_exit(WAIT) {
                Some(status) if status.code() == Some(code) => {}
                Some(status) => failures.push(format!(
                    "{}: {status}, expected exit status {code}; log:\n{}",
                    process_label(kind),
                    tail(&p.stderr(), 30)
                )),
                None => failures.push(format!(
                    "{}: still running {WAIT:?} after SIGTERM; log:\n{}",
                    process_label(kind),
                    tail(&p.stderr(), 30)
                )),
            }
        }
        failures
    }

    /// Fails the test when there are failures, listing them all.
    fn verdict(&self, what: &str, failures: &[String]) {
        assert!(
            failures.is_empty(),
            "{what}: {} failure(s):\n- {}\n(logs: {}/stderr, {}/stderr)",
            failures.len(),
            failures.join("\n- "),
            self.binary.dir().display(),
            self.example.dir().display(),
        );
    }
}

/// "binary [flows, reflection, ...]": a failure of a whole process names its servers.
fn process_label(kind: Kind) -> String {
    let names: Vec<&str> = SERVERS
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.name)
        .collect();
    let process = match kind {
        Kind::Binary => "binary",
        Kind::Example => "example 01_hyper",
    };
    format!("{process} [{}]", names.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Running checks per server.

/// The failures of one server's checks.
#[derive(Debug, Default)]
struct Failures(Vec<String>);

impl Failures {
    fn fail(&mut self, message: String) {
        self.0.push(message);
    }

    /// Records `message` unless `ok`; returns `ok`.
    fn expect(&mut self, ok: bool, message: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(message());
        }
        ok
    }

    /// The answer, or `None` with the failure recorded.
    fn answer(&mut self, what: &str, result: Result<Answer, String>) -> Option<Answer> {
        match result {
            Ok(answer) => Some(answer),
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                None
            }
        }
    }

    /// A JSON error answer with `status`: that status, a JSON content type and
    /// `{"error": "...", "status": status}`.
    fn json_error(&mut self, what: &str, answer: &Answer, status: u16) -> bool {
        let json = answer.json();
        self.expect(
            answer.status == status
                && is_json(answer)
                && json["error"].is_string()
                && json["status"] == status,
            || {
                format!(
                    "{what}: expected a {status} JSON error, got {}",
                    show(answer)
                )
            },
        )
    }
}

/// Runs `check` for every item at once, one thread per server; returns every failure, each
/// named after its server (a check that panics is a failure too).
fn each<T: Send>(
    items: Vec<(Server, T)>,
    check: impl Fn(Server, T, &mut Failures) + Sync,
) -> Vec<String> {
    let check = &check;
    thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|(server, item)| {
                let handle = thread::Builder::new()
                    .name(format!("check {}", server.name))
                    .spawn_scoped(scope, move || {
                        let mut failures = Failures::default();
                        check(server, item, &mut failures);
                        failures.0
                    })
                    .expect("spawn a check thread");
                (server, handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(server, handle)| match handle.join() {
                Ok(failures) => failures
                    .into_iter()
                    .map(|f| format!("{server}: {f}"))
                    .collect::<Vec<_>>(),
                Err(panic) => vec![format!(
                    "{server}: the check panicked: {}",
                    panic_text(&*panic)
                )],
            })
            .collect()
    })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Talking to a server.

/// A request head: `Host` first, then `headers`, then the blank line.
fn head(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends `bytes` on a fresh connection (from another thread: a server may answer, and close,
/// before it has read them all) and reads one answer, waiting at most `timeout`.
fn exchange(addr: SocketAddr, bytes: Vec<u8>, timeout: Duration) -> Result<Answer, String> {
    let mut conn = Conn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set a read timeout: {e}"))?;
    let mut writer = conn
        .stream
        .try_clone()
        .map_err(|e| format!("clone the socket: {e}"))?;
    let write = thread::spawn(move || writer.write_all(&bytes));
    let answer = conn.answer();
    let _ = conn.stream.shutdown(Shutdown::Both);
    let _ = write.join();
    answer.map_err(|f| no_answer(&f))
}

fn no_answer(f: &Failure) -> String {
    if f.received == 0 {
        format!("no answer ({})", f.error)
    } else {
        format!(
            "an incomplete answer ({} bytes, then {})",
            f.received, f.error
        )
    }
}

/// `method path` on a fresh connection, with `headers` (`Host: 127.0.0.1:PORT` unless they
/// name one) and `body` (with its `Content-Length`; a `POST` always has one).
fn ask(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let is_host = |name: &str| name.eq_ignore_ascii_case("host");
    let host = headers
        .iter()
        .find(|(name, _)| is_host(name))
        .map_or_else(|| addr.to_string(), |(_, value)| (*value).to_owned());
    let length = body.len().to_string();
    let mut all: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| !is_host(name))
        .copied()
        .collect();
    if !body.is_empty() || method == "POST" {
        all.push(("Content-Length", length.as_str()));
    }
    let mut bytes = head(method, path, &host, &all).into_bytes();
    bytes.extend_from_slice(body);
    exchange(addr, bytes, WAIT)
}

fn is_json(answer: &Answer) -> bool {
    answer
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
}

/// An answer in a failure message.
fn show(answer: &Answer) -> String {
    let body: String = answer.text().chars().take(300).collect();
    format!(
        "{} (content-type {:?}, x-request-id {:?}) {body}",
        answer.status,
        answer.header("content-type"),
        answer.header("x-request-id"),
    )
}

/// Reads `stream` until the server closes it (end of stream, or a reset), waiting until
/// `since + limit` at most. `Ok`: when it closed (since `since`) and the bytes sent before.
fn closed_within(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> Result<(Duration, Vec<u8>), String> {
    let deadline = since + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open {limit:?} later{}", sent_text(&got)));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set a read timeout: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((since.elapsed(), got)),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok((since.elapsed(), got));
            }
            Err(e) => return Err(format!("read: {e}{}", sent_text(&got))),
        }
    }
}

fn sent_text(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        String::new()
    } else {
        let text: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
        format!(" (it sent {text:?})")
    }
}

/// Whether the server has neither closed `stream` nor sent anything on it.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let peeked = stream.peek(&mut byte);
    let _ = stream.set_nonblocking(false);
    matches!(peeked, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// `in_flight` of `server` in its own `/__serverz` (the poll counts itself).
fn in_flight(server: Server, addr: SocketAddr) -> Option<u64> {
    let info = try_get(&format!("http://{addr}/__serverz")).ok()?.json;
    info["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == server.name)?["requests"]["in_flight"]
        .as_u64()
}

/// Waits (5 s at most) until every target has a request in flight besides the poll itself;
/// a failure for each that never has.
fn wait_busy(targets: &[(Server, SocketAddr)]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut waiting = targets.to_vec();
    loop {
        waiting.retain(|&(server, addr)| in_flight(server, addr) < Some(2));
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    waiting
        .iter()
        .map(|(server, _)| {
            format!("{server}: the slow request never showed as in flight in /__serverz")
        })
        .collect()
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `log` without ANSI escape sequences (in case a subscriber colours its output).
fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A request head of `POST /__test/echo` declaring `length` body bytes, and `body`.
fn echo_request(addr: SocketAddr, length: usize, body: &[u8]) -> Vec<u8> {
    let length = length.to_string();
    let mut bytes = head(
        "POST",
        "/__test/echo",
        &addr.to_string(),
        &[("Content-Length", length.as_str())],
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

// ---------------------------------------------------------------------------------------------
// 1. The admin endpoints.

#[test]
fn every_server_answers_the_admin_endpoints_with_their_codes() {
    let suite = Suite::start(DEFAULT);
    let mut failures = each(suite.targets(), |server, addr, f| {
        if let Some(a) = f.answer("GET /__healthz", ask(addr, "GET", "/__healthz", &[], b"")) {
            f.expect(
                a.status == 200 && is_json(&a) && a.json()["status"] == "ok",
                || {
                    format!(
                        "GET /__healthz: expected 200 {{\"status\":\"ok\",...}}, got {}",
                        show(&a)
                    )
                },
            );
        }
        if let Some(a) = f.answer("GET /__readyz", ask(addr, "GET", "/__readyz", &[], b"")) {
            f.expect(
                a.status == 200 && is_json(&a) && a.json()["ready"] == true,
                || {
                    format!(
                        "GET /__readyz: expected 200 \"ready\":true, got {}",
                        show(&a)
                    )
                },
            );
        }
        if let Some(a) = f.answer("GET /__serverz", ask(addr, "GET", "/__serverz", &[], b"")) {
            let json = a.json();
            let entry = json["servers"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == server.name));
            f.expect(a.status == 200 && is_json(&a), || {
                format!("GET /__serverz: expected 200 JSON, got {}", show(&a))
            });
            match entry {
                None => f.fail(format!(
                    "GET /__serverz does not list the server itself: {}",
                    show(&a)
                )),
                Some(entry) => {
                    f.expect(entry["framework"] == server.framework, || {
                        format!(
                            "GET /__serverz: framework {}, expected {:?}",
                            entry["framework"], server.framework
                        )
                    });
                    f.expect(entry["url"] == format!("http://{addr}").as_str(), || {
                        format!(
                            "GET /__serverz: url {}, expected \"http://{addr}\"",
                            entry["url"]
                        )
                    });
                    f.expect(entry["state"] == "serving", || {
                        format!(
                            "GET /__serverz: state {}, expected \"serving\"",
                            entry["state"]
                        )
                    });
                }
            }
        }
        let not_allowed = json!({"error": "method not allowed", "status": 405});
        for (method, path, allow) in [
            ("DELETE", "/__serverz", "GET, HEAD"),
            ("GET", "/__quitquitquitz", "POST"),
        ] {
            let what = format!("{method} {path}");
            if let Some(a) = f.answer(&what, ask(addr, method, path, &[], b"")) {
                f.expect(
                    a.status == 405
                        && is_json(&a)
                        && a.json() == not_allowed
                        && a.header("allow") == Some(allow),
                    || {
                        format!(
                            "{what}: expected 405 {not_allowed} with Allow: {allow}, got {} (Allow {:?})",
                            show(&a),
                            a.header("allow")
                        )
                    },
                );
            }
        }
        // Last: a server that wrongly obeys it stops its process.
        let what = format!("POST /__quitquitquitz with Origin: {FOREIGN_ORIGIN}");
        let origin = [("Origin", FOREIGN_ORIGIN)];
        if let Some(a) = f.answer(&what, ask(addr, "POST", "/__quitquitquitz", &origin, b"")) {
            f.json_error(&what, &a, 403);
        }
        // Through a proxy on this host the peer is loopback too; its headers give it away.
        for proxy_header in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] {
            let what = format!("POST /__quitquitquitz with {proxy_header}");
            let proxied = [(proxy_header, "for=203.0.113.9")];
            if let Some(a) = f.answer(&what, ask(addr, "POST", "/__quitquitquitz", &proxied, b"")) {
                f.json_error(&what, &a, 403);
            }
        }
    });
    // The refused quits left every process running, and ready.
    thread::sleep(Duration::from_millis(200));
    failures.extend(each(suite.targets(), |_, addr, f| {
        let what = "GET /__readyz after a refused quit";
        if let Some(a) = f.answer(what, ask(addr, "GET", "/__readyz", &[], b"")) {
            f.expect(a.status == 200 && a.json()["ready"] == true, || {
                format!(
                    "{what}: expected 200 \"ready\":true (still running), got {}",
                    show(&a)
                )
            });
        }
    }));
    suite.verdict("admin endpoints", &failures);
}

#[test]
fn a_loopback_quit_on_any_server_stops_its_process_with_0() {
    let items = SERVERS.iter().map(|&s| (s, ())).collect();
    let failures = each(items, |server, (), f| {
        let mut p = start_one(server.kind, DEFAULT);
        let addr = addr(p.url(server.name));
        if let Some(a) = f.answer(
            "POST /__quitquitquitz",
            ask(addr, "POST", "/__quitquitquitz", &[], b""),
        ) {
            f.expect(
                a.status == 200 && is_json(&a) && a.json() == json!({"status": "OK"}),
                || {
                    format!(
                        "POST /__quitquitquitz: expected 200 {{\"status\":\"OK\"}}, got {}",
                        show(&a)
                    )
                },
            );
        }
        match p.try_wait_exit(WAIT) {
            Some(status) => {
                let log = strip_ansi(&p.stderr());
                f.expect(status.code() == Some(0), || {
                    format!(
                        "{status} after the quit, expected 0; log:\n{}",
                        tail(&log, 30)
                    )
                });
                let reason = format!("quit requested on server '{}'", server.name);
                f.expect(log.contains(&reason), || {
                    format!("the log does not say {reason:?}:\n{}", tail(&log, 30))
                });
            }
            None => f.fail(format!(
                "still running {WAIT:?} after the quit; log:\n{}",
                tail(&p.stderr(), 30)
            )),
        }
    });
    assert!(
        failures.is_empty(),
        "quit: {} failure(s):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. `x-request-id` on every answer.

#[test]
fn every_answer_has_a_request_id_errors_included() {
    let suite = Suite::start(DEFAULT);
    let failures = each(suite.targets(), |server, addr, f| {
        let foreign = [("Host", FOREIGN_HOST)];
        let origin = [("Origin", FOREIGN_ORIGIN)];
        let mut cases: Vec<(String, u16, Result<Answer, String>)> = vec![
            (
                "GET /__healthz".into(),
                200,
                ask(addr, "GET", "/__healthz", &[], b""),
            ),
            (
                "GET /__healthz again".into(),
                200,
                ask(addr, "GET", "/__healthz", &[], b""),
            ),
            (
                "GET /no/such/route".into(),
                404,
                ask(addr, "GET", "/no/such/route", &[], b""),
            ),
            (
                "DELETE /__serverz".into(),
                405,
                ask(addr, "DELETE", "/__serverz", &[], b""),
            ),
            (
                "GET /__test/panic".into(),
                500,
                ask(addr, "GET", "/__test/panic", &[], b""),
            ),
            (
                format!("POST /__test/echo of {} bytes", BODY_LIMIT + 1),
                413,
                exchange(
                    addr,
                    echo_request(addr, BODY_LIMIT + 1, &vec![b'x'; BODY_LIMIT + 1]),
                    WAIT,
                ),
            ),
        ];
        if server.loopback_only {
            cases.push((
                format!("GET /__healthz with Host: {FOREIGN_HOST}"),
                403,
                ask(addr, "GET", "/__healthz", &foreign, b""),
            ));
        }
        cases.push((
            "POST /__test/echo whose body stalls".into(),
            408,
            exchange(
                addr,
                echo_request(addr, 10, b"ab"),
                DEADLINE + SLACK + DEADLINE,
            ),
        ));
        // Last: a server that wrongly obeys it stops its process.
        cases.push((
            format!("POST /__quitquitquitz with Origin: {FOREIGN_ORIGIN}"),
            403,
            ask(addr, "POST", "/__quitquitquitz", &origin, b""),
        ));
        let mut ids: Vec<(String, String)> = Vec::new();
        for (what, status, result) in cases {
            let Some(a) = f.answer(&what, result) else {
                continue;
            };
            f.expect(a.status == status, || {
                format!("{what}: expected {status}, got {}", show(&a))
            });
            match a.header("x-request-id") {
                Some(id) if !id.is_empty() => ids.push((what, id.to_owned())),
                _ => f.fail(format!("x-request-id missing on {what} ({})", a.status)),
            }
        }
        for (i, (what, id)) in ids.iter().enumerate() {
            if let Some((other, _)) = ids[..i].iter().find(|(_, earlier)| earlier == id) {
                f.fail(format!("x-request-id {id} on both {other} and {what}"));
            }
        }
    });
    suite.verdict("x-request-id", &failures);
}

// ---------------------------------------------------------------------------------------------
// 3. JSON error bodies.

#[test]
fn an_unknown_path_is_a_json_404_on_every_server() {
    let suite = Suite::start(DEFAULT);
    let failures = each(suite.targets(), |_, addr, f| {
        let expected = json!({"error": "not found", "status": 404, "path": "/no/such/route"});
        if let Some(a) = f.answer(
            "GET /no/such/route",
            ask(addr, "GET", "/no/such/route", &[], b""),
        ) {
            f.expect(a.status == 404 && a.json() == expected, || {
                format!(
                    "GET /no/such/route: expected 404 {expected}, got {}",
                    show(&a)
                )
            });
            f.expect(is_json(&a), || {
                format!(
                    "GET /no/such/route: content-type {:?}, expected application/json",
                    a.header("content-type")
                )
            });
        }
    });
    suite.verdict("JSON 404", &failures);
}

// ---------------------------------------------------------------------------------------------
// 4. A panic is a 500 for that request only.

#[test]
fn a_handler_panic_is_a_500_for_that_request_only_on_every_server() {
    let suite = Suite::start(DEFAULT);
    let failures = each(suite.targets(), |server, addr, f| {
        let expected = json!({"error": "internal error", "status": 500});
        for round in 1..=3 {
            let what = format!("GET /__test/panic (round {round})");
            if let Some(a) = f.answer(&what, ask(addr, "GET", "/__test/panic", &[], b"")) {
                f.expect(
                    a.status == 500 && is_json(&a) && a.json() == expected,
                    || format!("{what}: expected 500 {expected}, got {}", show(&a)),
                );
            }
            let what = format!("GET /__healthz after panic {round}");
            if let Some(a) = f.answer(&what, ask(addr, "GET", "/__healthz", &[], b"")) {
                f.expect(a.status == 200, || {
                    format!("{what}: expected 200, got {}", show(&a))
                });
            }
        }
        // Counted as three server errors, the requests after them as served.
        if let Some(a) = f.answer("GET /__serverz", ask(addr, "GET", "/__serverz", &[], b"")) {
            let json = a.json();
            let errors = json["servers"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == server.name))
                .map(|s| s["requests"]["server_errors"].clone());
            f.expect(errors == Some(json!(3)), || {
                format!("/__serverz server_errors {errors:?} after 3 panics, expected 3")
            });
        }
    });
    suite.verdict("panics", &failures);
}

// ---------------------------------------------------------------------------------------------
// 5. Limits.

#[test]
fn the_body_and_head_limits_hold_on_every_server() {
    let suite = Suite::start(DEFAULT);
    let failures = each(suite.targets(), |_, addr, f| {
        let what = format!("POST /__test/echo of {} bytes", BODY_LIMIT + 1);
        let over = exchange(
            addr,
            echo_request(addr, BODY_LIMIT + 1, &vec![b'x'; BODY_LIMIT + 1]),
            WAIT,
        );
        if let Some(a) = f.answer(&what, over) {
            f.json_error(&what, &a, 413);
        }
        for size in [1024, BODY_LIMIT] {
            let what = format!("POST /__test/echo of {size} bytes");
            let expected = json!({ "bytes": size });
            let result = exchange(addr, echo_request(addr, size, &vec![b'x'; size]), WAIT);
            if let Some(a) = f.answer(&what, result) {
                f.expect(a.status == 200 && a.json() == expected, || {
                    format!("{what}: expected 200 {expected}, got {}", show(&a))
                });
            }
        }
        // A head over the head limit: the framework's parser answers, so only the status.
        let what = format!("a request head over {HEAD_LIMIT} bytes (a {BIG_HEADER}-byte header)");
        let big = "a".repeat(BIG_HEADER);
        let bytes = head(
            "GET",
            "/__healthz",
            &addr.to_string(),
            &[("x-big", big.as_str())],
        )
        .into_bytes();
        match exchange(addr, bytes, WAIT) {
            Ok(a) => {
                f.expect(a.status == 431, || {
                    format!("{what}: expected 431, got {}", show(&a))
                });
            }
            Err(e) => f.fail(format!("{what}: expected 431, got {e}")),
        }
    });
    suite.verdict("limits", &failures);
}

// ---------------------------------------------------------------------------------------------
// 6. Deadlines.

#[test]
fn the_head_and_body_deadlines_hold_on_every_server() {
    let suite = Suite::start(DEFAULT);
    let bound = DEADLINE + SLACK;
    let failures = each(suite.targets(), |server, addr, f| {
        // A head that never ends: the connection is dropped (an answer first, if any, a 408).
        let what = "a request head that never ends";
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) => f.fail(format!("{what}: connect: {e}")),
            Ok(mut stream) => {
                let sent = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                let since = Instant::now();
                if let Err(e) = sent {
                    f.fail(format!("{what}: write: {e}"));
                } else {
                    match closed_within(&mut stream, since, bound + DEADLINE) {
                        Ok((after, sent)) => {
                            eprintln!(
                                "{server}: {what}: closed after {after:?}{}",
                                sent_text(&sent)
                            );
                            f.expect(after <= bound, || {
                                format!("{what}: closed only after {after:?} (bound {bound:?})")
                            });
                            f.expect(sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"), || {
                                format!(
                                    "{what}: answered other than 408 before closing{}",
                                    sent_text(&sent)
                                )
                            });
                        }
                        Err(e) => f.fail(format!("{what}: {e}")),
                    }
                }
            }
        }
        // A body that stalls: 408 with a JSON error.
        let what = "POST /__test/echo declaring 10 body bytes, sending 2";
        let since = Instant::now();
        match exchange(addr, echo_request(addr, 10, b"ab"), bound + DEADLINE) {
            Ok(a) => {
                let after = since.elapsed();
                eprintln!("{server}: {what}: {} after {after:?}", a.status);
                if f.json_error(what, &a, 408) {
                    f.expect(after <= bound, || {
                        format!("{what}: the 408 came only after {after:?} (bound {bound:?})")
                    });
                }
            }
            Err(e) => f.fail(format!(
                "{what}: expected 408 within {bound:?}, got {e} after {:?}",
                since.elapsed()
            )),
        }
    });
    suite.verdict("deadlines", &failures);
}

// ---------------------------------------------------------------------------------------------
// 7. Host names.

#[test]
fn loopback_only_servers_refuse_a_foreign_host_on_every_path() {
    let suite = Suite::start(DEFAULT);
    let failures = each(suite.targets(), |server, addr, f| {
        let foreign = [("Host", FOREIGN_HOST)];
        if server.loopback_only {
            let mut asks: Vec<(&str, &str)> = ["/", "/__healthz", "/__serverz", "/no/such"]
                .into_iter()
                .map(|path| ("GET", path))
                .collect();
            // Last: a server that wrongly obeys it stops its process.
            asks.push(("POST", "/__quitquitquitz"));
            for (method, path) in asks {
                let what = format!("{method} {path} with Host: {FOREIGN_HOST}");
                if let Some(a) = f.answer(&what, ask(addr, method, path, &foreign, b"")) {
                    f.json_error(&what, &a, 403);
                    f.expect(a.header("x-request-id").is_some(), || {
                        format!("x-request-id missing on {what} ({})", a.status)
                    });
                }
            }
        } else {
            let what = format!("GET /__healthz with Host: {FOREIGN_HOST}");
            if let Some(a) = f.answer(&what, ask(addr, "GET", "/__healthz", &foreign, b"")) {
                f.expect(a.status == 200, || {
                    format!("{what}: expected 200, got {}", show(&a))
                });
            }
        }
        // Every server answers under a loopback name.
        let localhost = format!("localhost:{}", addr.port());
        let what = format!("GET /__healthz with Host: {localhost}");
        let host = [("Host", localhost.as_str())];
        if let Some(a) = f.answer(&what, ask(addr, "GET", "/__healthz", &host, b"")) {
            f.expect(a.status == 200, || {
                format!("{what}: expected 200, got {}", show(&a))
            });
        }
    });
    suite.verdict("Host policy", &failures);
}

// ---------------------------------------------------------------------------------------------
// 8. Shutdown: in-flight requests finish, idle connections close, newcomers are refused.

/// `GET /__test/slow?ms=1500` on a fresh keep-alive connection, begun before SIGTERM: the
/// failures seen (it must finish 200 with `Connection: close`, then the server closes).
fn slow_across_sigterm(addr: SocketAddr) -> Vec<String> {
    let mut conn = match Conn::connect(addr) {
        Ok(conn) => conn,
        Err(e) => return vec![format!("the slow request: connect: {e}")],
    };
    let answer = match conn.request("GET", "/__test/slow?ms=1500", &[], b"") {
        Ok(answer) => answer,
        Err(f) => {
            return vec![format!(
                "the slow request begun before SIGTERM: {}",
                no_answer(&f)
            )];
        }
    };
    let mut failures = Vec::new();
    let expected = json!({"slept_ms": 1500});
    if answer.status != 200 || answer.json() != expected {
        failures.push(format!(
            "the slow request begun before SIGTERM: expected 200 {expected}, got {}",
            show(&answer)
        ));
    }
    if !answer.closes() {
        failures.push(format!(
            "the slow request's answer while draining lacks Connection: close (headers {:?})",
            answer.headers
        ));
    }
    match closed_within(&mut conn.stream, Instant::now(), Duration::from_secs(1)) {
        Ok((_, sent)) if sent.is_empty() => {}
        Ok((_, sent)) => failures.push(format!(
            "sent more after its Connection: close answer{}",
            sent_text(&sent)
        )),
        Err(e) => failures.push(format!(
            "the connection of the Connection: close answer: {e}"
        )),
    }
    failures
}

#[test]
fn sigterm_drains_keep_alive_clients_on_every_server() {
    // A 10 s head timeout here: with 1 s, the keep-alive timer would close the idle
    // connection within the second this check allows, and a server that ignores `close_idle`
    // would pass.
    let mut suite = Suite::start(Opts {
        head_timeout: "10s",
        drain_deadline: Some("10s"),
    });
    let targets = suite.targets();
    let mut failures = Vec::new();

    // An idle keep-alive connection per server, one request answered on it.
    let mut idle: Vec<(Server, (SocketAddr, Option<Conn>))> = Vec::new();
    for &(server, addr) in &targets {
        let conn = Conn::connect(addr)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut conn| {
                let answer = conn
                    .request("GET", "/__healthz", &[], b"")
                    .map_err(|f| no_answer(&f))?;
                if answer.status != 200 || answer.closes() {
                    return Err(format!(
                        "expected 200 keeping the connection, got {} (headers {:?})",
                        show(&answer),
                        answer.headers
                    ));
                }
                Ok(conn)
            });
        let conn = conn
            .map_err(|e| failures.push(format!("{server}: the first keep-alive connection: {e}")))
            .ok();
        idle.push((server, (addr, conn)));
    }
    // A slow request on a second connection per server, in flight before the signal.
    let slow: Vec<_> = targets
        .iter()
        .map(|&(server, addr)| (server, thread::spawn(move || slow_across_sigterm(addr))))
        .collect();
    failures.extend(wait_busy(&targets));
    for (server, (_, conn)) in &mut idle {
        if conn.as_ref().is_some_and(|c| !still_open(&c.stream)) {
            failures.push(format!(
                "{server}: the idle keep-alive connection was closed (or written to) before SIGTERM"
            ));
            *conn = None;
        }
    }

    let (binary_at, example_at) = suite.sigterm();
    let signalled = |server: Server| match server.kind {
        Kind::Binary => binary_at,
        Kind::Example => example_at,
    };
    failures.extend(each(idle, |server, (addr, conn), f| {
        let since = signalled(server);
        thread::scope(|scope| {
            // A newcomer, once the drain has begun: refused, or closed unanswered, at once.
            let newcomer = scope.spawn(move || {
                thread::sleep(
                    (since + Duration::from_millis(200)).saturating_duration_since(Instant::now()),
                );
                let what = "a new connection 200 ms after SIGTERM";
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => None,
                    Err(e) => Some(format!("{what}: {e}, expected refused")),
                    Ok(mut stream) => {
                        let _ = stream.write_all(
                            head("GET", "/__healthz", &addr.to_string(), &[]).as_bytes(),
                        );
                        match closed_within(&mut stream, Instant::now(), Duration::from_secs(1)) {
                            Ok((_, sent)) if sent.is_empty() => None,
                            Ok((_, sent)) => {
                                Some(format!("{what} was answered{}", sent_text(&sent)))
                            }
                            Err(e) => Some(format!(
                                "{what}: accepted, then neither answered nor closed: {e}"
                            )),
                        }
                    }
                }
            });
            if let Some(mut conn) = conn {
                let what = "the idle keep-alive connection";
                match closed_within(&mut conn.stream, since, Duration::from_secs(3)) {
                    Ok((after, sent)) => {
                        eprintln!("{server}: {what} closed {after:?} after SIGTERM");
                        f.expect(after <= Duration::from_secs(1), || {
                            format!("{what} closed only {after:?} after SIGTERM (bound 1s)")
                        });
                        f.expect(sent.is_empty(), || {
                            format!("{what} was written to before it closed{}", sent_text(&sent))
                        });
                    }
                    Err(e) => f.fail(format!("{what} after SIGTERM: {e}")),
                }
            }
            match newcomer.join() {
                Ok(None) => {}
                Ok(Some(failure)) => f.fail(failure),
                Err(panic) => f.fail(format!(
                    "the newcomer check panicked: {}",
                    panic_text(&*panic)
                )),
            }
        });
    }));
    for (server, handle) in slow {
        match handle.join() {
            Ok(found) => failures.extend(found.into_iter().map(|f| format!("{server}: {f}"))),
            Err(panic) => failures.push(format!(
                "{server}: the slow client panicked: {}",
                panic_text(&*panic)
            )),
        }
    }
    failures.extend(suite.exits_with(0));
    suite.verdict("shutdown", &failures);
}

// ---------------------------------------------------------------------------------------------
// 9. A request cut by the drain deadline.

#[test]
fn the_drain_deadline_cuts_slow_requests_and_logs_them_on_every_server() {
    let mut suite = Suite::start(Opts {
        head_timeout: "1s",
        drain_deadline: Some("500ms"),
    });
    let targets = suite.targets();
    let clients: Vec<_> = targets
        .iter()
        .map(|&(server, addr)| {
            let client = thread::spawn(move || {
                Conn::connect(addr).map_err(Failure::from)?.request(
                    "GET",
                    "/__test/slow?ms=10000",
                    &[],
                    b"",
                )
            });
            (server, client)
        })
        .collect();
    let mut failures = wait_busy(&targets);
    suite.sigterm();
    failures.extend(suite.exits_with(3));
    for &(server, _) in &targets {
        let log = strip_ansi(&suite.process(server.kind).stderr());
        let needles = [
            format!("server=\"{}\"", server.name),
            "path=\"/__test/slow\"".to_owned(),
            "status=\"aborted\"".to_owned(),
            "reason=\"drain deadline\"".to_owned(),
        ];
        let logged = log
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n.as_str())));
        if !logged {
            failures.push(format!("{server}: no log line with {}", needles.join(" ")));
        }
    }
    for (server, client) in clients {
        match client.join() {
            Ok(Ok(answer)) => failures.push(format!(
                "{server}: the cut request looks answered: {}",
                show(&answer)
            )),
            Ok(Err(_)) => {}
            Err(panic) => failures.push(format!(
                "{server}: the client panicked: {}",
                panic_text(&*panic)
            )),
        }
    }
    suite.verdict("drain deadline", &failures);
}

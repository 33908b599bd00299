//! Helpers of the end-to-end tests: start the real `multi-server` binary on ephemeral ports,
//! talk real HTTP to it, and always kill what was started.
//!
//! Every wait here is bounded; a test that hangs fails with a message instead.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `multi-server` process with its output captured to files. Killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    dir: TempDir,
    /// Server name → base URL, read from the start-up banner.
    pub urls: BTreeMap<String, String>,
}

/// The resident set size of `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A fresh temporary directory for one test: removed when dropped, kept when the test fails
/// (panics), to read after the failure. Derefs to its path.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        self.0.disable_cleanup(thread::panicking());
    }
}

/// A fresh temporary directory for one test, named `multi-server-e2e-{label}-` and a random
/// suffix. `tempfile` makes it the way `mkdtemp` does (a new name, created only if absent,
/// mode 0700): a name guessed from the pid could be made first by another user of `/tmp`.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("multi-server-e2e-{label}-"))
        .tempdir()
        .map(TempDir)
        .expect("create temp dir")
}

impl Process {
    /// Starts `binary` with `args` and waits for the banner (every immediate server up).
    ///
    /// # Panics
    /// When the process exits or prints no banner within [`WAIT`].
    pub fn start(binary: &str, args: &[&str]) -> Process {
        Self::start_with_env(binary, args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut process = Self::spawn(binary, args, env);
        process.wait_banner();
        process
    }

    /// Starts the binary without waiting for anything (for runs expected to fail).
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        Self::launch(binary, args, env, None)
    }

    /// As [`start`](Self::start), with the log (stderr) a pipe nobody reads until the caller
    /// reads the returned end: a stalled log shipper, `multi-server 2>&1 | less`.
    pub fn start_with_stalled_log(
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Process, std::process::ChildStderr) {
        let mut process = Self::launch_with(binary, args, env, None, true);
        let log = process.child.stderr.take().expect("piped stderr");
        process.wait_banner();
        (process, log)
    }

    /// Starts the binary with its output captured in a fresh temp dir, working in `cwd` (by
    /// default that temp dir), without waiting for anything.
    fn launch(
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&std::path::Path>,
    ) -> Process {
        Self::launch_with(binary, args, env, cwd, false)
    }

    fn launch_with(
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&std::path::Path>,
        log_pipe: bool,
    ) -> Process {
        let dir = temp_dir("run");
        let stdout = fs::File::create(dir.join("stdout")).expect("stdout file");
        let stderr = fs::File::create(dir.join("stderr")).expect("stderr file");
        let mut command = Command::new(binary);
        command
            .args(args)
            .current_dir(cwd.unwrap_or(&*dir))
            .env_remove("GENKIT_ENV")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            // Never notify a service manager the test runner itself runs under.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            // The operations listener on an ephemeral port, so parallel processes do not
            // compete for its default range (a test that wants otherwise passes the env).
            .env("MULTI_SERVER_ADMIN_PORTS", "0")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(if log_pipe {
                Stdio::piped()
            } else {
                stderr.into()
            });
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn multi-server");
        Process {
            child,
            dir,
            urls: BTreeMap::new(),
        }
    }

    /// The base URL of server `name`.
    ///
    /// # Panics
    /// When the banner did not list it.
    pub fn url(&self, name: &str) -> &str {
        self.urls
            .get(name)
            .unwrap_or_else(|| panic!("no server '{name}' in banner {:?}", self.urls))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Everything logged on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}\nstderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits at most `timeout` for the process to exit; `None` while it still runs.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until stderr contains `needle`.
    ///
    /// # Panics
    /// When it does not within [`WAIT`].
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only our own child, by pid; reaped so no zombie is left.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Then `dir` goes, unless the test failed.
    }
}

/// Reads `name framework url` lines of the banner; `None` until the banner is complete.
fn parse_banner(stdout: &str) -> Option<BTreeMap<String, String>> {
    let mut lines = stdout.lines();
    lines.find(|l| l.starts_with("multi-server "))?;
    let urls: BTreeMap<String, String> = lines
        .map_while(|l| l.strip_prefix("  "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let url = words.find(|w| w.starts_with("http://"))?;
            Some((name.to_owned(), url.to_owned()))
        })
        .collect();
    (!urls.is_empty()).then_some(urls)
}

/// A reply: status, headers we care about, and the body parsed as JSON (`Null` if not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// The raw body.
    pub text: String,
    /// Response headers, lower-case names.
    pub headers: BTreeMap<String, String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Reply {
    let mut res = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        headers,
    }
}

/// `GET url`.
pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call(), &format!("GET {url}"))
}

/// `GET url`, returning the transport error instead of panicking on one.
pub fn try_get(url: &str) -> Result<Reply, ureq::Error> {
    let res = agent().get(url).call()?;
    Ok(reply(Ok(res), url))
}

/// `POST url` with a raw body and content type.
pub fn post(url: &str, content_type: &str, body: &str) -> Reply {
    let req = agent().post(url).header("content-type", content_type);
    reply(req.send(body), &format!("POST {url}"))
}

/// `method url` with no body.
pub fn request(method: &str, url: &str) -> Reply {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .expect("request");
    reply(agent().run(req), &format!("{method} {url}"))
}

/// Ports `p..p+n` that were all free a moment ago, with `p` itself held open (busy).
///
/// Retries a few blocks, since other tests bind ports in parallel.
pub fn busy_first_of_free_block(n: u16) -> (TcpListener, u16) {
    for _ in 0..50 {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        if port > u16::MAX - n {
            continue;
        }
        let rest_free = (1..n).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if rest_free {
            return (held, port);
        }
    }
    panic!("no block of {n} free ports found");
}

/// Holds `n` consecutive ports busy; returns the listeners and the first port.
pub fn busy_block(n: u16) -> (Vec<TcpListener>, u16) {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port > u16::MAX - n {
            continue;
        }
        let mut held = vec![first];
        for i in 1..n {
            match TcpListener::bind(("127.0.0.1", port + i)) {
                Ok(l) => held.push(l),
                Err(_) => break,
            }
        }
        if held.len() == n as usize {
            return (held, port);
        }
    }
    panic!("no block of {n} bindable ports found");
}

impl Process {
    /// The process's own temporary directory (its working directory when started with
    /// [`start`](Self::start), [`start_with_env`](Self::start_with_env) or
    /// [`spawn`](Self::spawn)).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// As [`start_with_env`](Self::start_with_env), with `cwd` as the working directory
    /// (several processes may share one); output still goes to a fresh directory of its own.
    ///
    /// # Panics
    /// When the process exits or prints no banner within [`WAIT`].
    pub fn start_in(
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &std::path::Path,
    ) -> Process {
        let mut process = Self::launch(binary, args, env, Some(cwd));
        process.wait_banner();
        process
    }

    /// Waits for the start-up banner and records its URLs.
    ///
    /// # Panics
    /// When the process exits or prints no banner within [`WAIT`].
    pub fn wait_banner(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.stdout();
            if let Some(urls) = parse_banner(&out) {
                self.urls = urls;
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "multi-server exited with {status} before its banner\nstdout:\n{out}\nstderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no banner within {WAIT:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Polls `check` until it returns `Some`, at most [`WAIT`].
///
/// # Panics
/// When it never does; the message names `what`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// `method url` with extra headers and an optional body.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let what = format!("{method} {url}");
    match body {
        Some(body) => reply(
            agent().run(builder.body(body.to_owned()).expect("request")),
            &what,
        ),
        None => reply(agent().run(builder.body(()).expect("request")), &what),
    }
}

/// A response whose body is read as it arrives, line by line.
pub struct Streaming {
    /// HTTP status.
    pub status: u16,
    /// Response headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    reader: std::io::BufReader<ureq::BodyReader<'static>>,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Streaming {
    /// The next line, with its `\n` if it had one; `None` at the end of the body.
    ///
    /// # Panics
    /// On a transport error (the request's overall time limit is [`WAIT`]).
    pub fn next_line(&mut self) -> Option<String> {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read body line");
        (n > 0).then_some(line)
    }

    /// The rest of the body.
    ///
    /// # Panics
    /// On a transport error.
    pub fn rest(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        self.reader.read_to_string(&mut text).expect("read body");
        text
    }
}

/// `POST url` with `headers` and `body`, returning as soon as the response headers arrive.
///
/// # Panics
/// On a transport error.
pub fn post_streaming(url: &str, headers: &[(&str, &str)], body: &str) -> Streaming {
    let mut req = agent().post(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let status = res.status().as_u16();
    Streaming {
        status,
        headers,
        reader: std::io::BufReader::new(res.into_body().into_reader()),
    }
}

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target, e.g. `/api/traces`.
    pub path: String,
    /// The body as text.
    pub body: String,
}

/// A tiny HTTP/1.1 server on an ephemeral loopback port that records every request (bodies
/// sized by `content-length`) and answers each with `200 {}`. Stops accepting on drop.
#[derive(Debug)]
pub struct Recorder {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    /// Starts listening.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start() -> Recorder {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got, stopped) = (Arc::clone(&received), Arc::clone(&stop));
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let got = Arc::clone(&got);
                        thread::spawn(move || serve_recorded(stream, &got));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder {
            url,
            received,
            stop,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `done` holds for the requests received so far, at most [`WAIT`].
    ///
    /// # Panics
    /// When it never does; the message names `what` and lists what arrived.
    pub fn wait_until(
        &self,
        what: &str,
        mut done: impl FnMut(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "recorder never saw {what}; got {requests:#?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads requests off one connection until it closes, answering each with `200 {}`.
fn serve_recorded(stream: std::net::TcpStream, got: &std::sync::Mutex<Vec<Recorded>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = request_line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        got.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Recorded {
                method,
                path,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: keep-alive, content-length and chunked bodies, exact error kinds.

/// One answer read off a raw connection.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers in the order received, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The whole body (de-chunked).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the answer says `Connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no (complete) answer.
#[derive(Debug)]
pub struct Failure {
    /// Bytes of the answer received before the failure (0: the server never answered).
    pub received: usize,
    /// What the socket said.
    pub error: std::io::Error,
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure { received: 0, error }
    }
}

/// A keep-alive HTTP/1.1 connection over a plain [`TcpStream`](std::net::TcpStream).
#[derive(Debug)]
pub struct Conn {
    /// The socket (clone it to write from another thread, or to read it raw).
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
    /// Answers received on this connection.
    pub answered: usize,
}

/// The socket address of a base URL such as `http://127.0.0.1:3400`.
///
/// # Panics
/// When `url` is not `http://` and an IP address with a port.
pub fn addr(url: &str) -> std::net::SocketAddr {
    url.strip_prefix("http://")
        .unwrap_or(url)
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

impl Conn {
    /// Connects (within 5 s); reads and writes time out after [`WAIT`].
    ///
    /// # Errors
    /// When the connection cannot be made.
    pub fn connect(addr: std::net::SocketAddr) -> std::io::Result<Conn> {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            answered: 0,
        })
    }

    /// Sends one request with `Host: 127.0.0.1`, `headers` and `body` (with its
    /// `Content-Length` when it has one, and always on a `POST`).
    ///
    /// # Errors
    /// When the socket fails.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        use std::io::Write;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)
    }

    /// [`send`](Self::send), then reads the [`answer`](Self::answer).
    ///
    /// # Errors
    /// When the socket fails or closes before a whole answer.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Failure> {
        self.send(method, path, headers, body)?;
        self.answer()
    }

    fn fill(&mut self, received: &mut usize) -> Result<(), Failure> {
        use std::io::{ErrorKind, Read};
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Failure {
                received: *received,
                error: std::io::Error::new(ErrorKind::UnexpectedEof, "EOF"),
            }),
            Ok(n) => {
                *received += n;
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(error) => Err(Failure {
                received: *received,
                error,
            }),
        }
    }

    /// Reads one whole answer.
    ///
    /// # Errors
    /// When the socket fails or closes before a whole answer, or the answer is not HTTP.
    pub fn answer(&mut self) -> Result<Answer, Failure> {
        use std::io::ErrorKind;
        let mut received = self.buf.len();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill(&mut received)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure {
                received,
                error: std::io::Error::new(ErrorKind::InvalidData, format!("bad head {head:?}")),
            })?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let body = if let Some(length) = get("content-length") {
            let length: usize = length.parse().unwrap_or(0);
            while self.buf.len() < length {
                self.fill(&mut received)?;
            }
            self.buf.drain(..length).collect()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill(&mut received)?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| Failure {
                            received,
                            error: std::io::Error::new(ErrorKind::InvalidData, "bad chunk size"),
                        })?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill(&mut received)?;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break body;
                }
            }
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else {
            // Delimited by the end of the connection.
            loop {
                match self.fill(&mut received) {
                    Ok(()) => {}
                    Err(f) if f.error.kind() == ErrorKind::UnexpectedEof => {
                        break std::mem::take(&mut self.buf);
                    }
                    Err(f) => return Err(f),
                }
            }
        };
        self.answered += 1;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh [`Conn`].
///
/// # Panics
/// When the connection or the request fails.
pub fn once(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    try_once(addr, method, path, headers, body)
        .unwrap_or_else(|failure| panic!("{method} {path} on {addr}: {failure}"))
}

/// [`once`], with what went wrong (a refused or reset connection, a bad answer) as the error,
/// for load and probe clients that count failures instead of failing.
///
/// # Errors
/// The connection or the request failed.
pub fn try_once(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut conn = Conn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.request(method, path, headers, body)
        .map_err(|failure| format!("{failure:?}"))
}

/// `n` distinct loopback ports that were free a moment ago (held together while picked, so
/// they differ); a URL on one of them is one nothing answers.
///
/// # Panics
/// When loopback cannot be bound.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Whether process `pid` runs (a zombie nobody reaped yet counts as gone).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// A process a test did not start itself (an upgrade's successor, which the test's own child
/// started): stopped by pid when the test ends, however it ends — SIGTERM, then SIGKILL if it
/// is still there after 20 s.
#[derive(Debug)]
pub struct Adopted(pub u32);

impl Drop for Adopted {
    fn drop(&mut self) {
        let pid = self.0.to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(self.0) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

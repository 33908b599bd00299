//! The client of `bench/callgrind.sh`: one keep-alive HTTP/1.1 connection, one `GET` at a
//! time, each response read in full (Content-Length or chunked) before the next is sent, so
//! the server under callgrind does the same work for every request and nothing overlaps.
//!
//! Usage: `seq-client <host:port> <path> <count> [--post <json>] [--timeout <secs>] [--deadline <secs>]`
//!
//! `--post` sends each request as a `POST` with that JSON body (a flow run, `runAction`).
//!
//! `--timeout` bounds every socket read and write (default 30 s: the server may run under
//! valgrind), `--deadline` the whole run (default 600 s). Exits 0 after `count` 2xx
//! responses; exits 1 on a non-2xx, a closed or broken connection, a timeout or a reply it
//! cannot parse, saying which request failed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    count: u64,
    timeout: Duration,
    deadline: Duration,
    post: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: seq-client <host:port> <path> <count> [--post <json>] [--timeout <secs>] [--deadline <secs>]";
    let mut positional = Vec::new();
    let mut timeout = Duration::from_secs(30);
    let mut deadline = Duration::from_secs(600);
    let mut post = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut secs = |name: &str| -> Result<Duration, String> {
            let value = args
                .next()
                .ok_or(format!("{name} needs a value\n{usage}"))?;
            let secs: f64 = value
                .parse()
                .map_err(|_| format!("{name}: not a number of seconds: {value}"))?;
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--timeout" => timeout = secs("--timeout")?,
            "--deadline" => deadline = secs("--deadline")?,
            "--post" => post = Some(args.next().ok_or(format!("--post needs a body\n{usage}"))?),
            "-h" | "--help" => return Err(usage.into()),
            _ => positional.push(arg),
        }
    }
    let [addr, path, count] = <[String; 3]>::try_from(positional).map_err(|_| usage.to_string())?;
    let count = count
        .parse()
        .map_err(|_| format!("count is not a number: {count}\n{usage}"))?;
    if !path.starts_with('/') {
        return Err(format!("path must start with '/': {path}"));
    }
    Ok(Args {
        addr,
        path,
        count,
        timeout,
        post,
        deadline,
    })
}

/// A buffered reader over the connection that keeps bytes past the current response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Reads more bytes into the buffer; a closed connection is an error.
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// One line ending in CRLF, without it.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(self.pending(), b"\r\n") {
                let line = self.pending()[..i].to_vec();
                self.start += i + 2;
                return Ok(line);
            }
            if self.pending().len() > 64 << 10 {
                return Err(bad("a line longer than 64 KiB"));
            }
            self.fill()?;
        }
    }

    /// Skips exactly `n` bytes (a body or a chunk).
    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let have = self.pending().len().min(n);
            self.start += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one response; returns its status and whether the server will close the connection.
fn read_response(conn: &mut Conn) -> io::Result<(u16, bool)> {
    let status_line = conn.line()?;
    let status_line = String::from_utf8_lossy(&status_line).into_owned();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("not a status line: {status_line:?}")))?;
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("not a status line: {status_line:?}")));
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        let line = conn.line()?;
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(&line);
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(&format!("not a header: {line:?}")));
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse().map_err(|_| bad("bad content-length"))?);
            }
            "transfer-encoding" => chunked = value.split(',').any(|v| v.trim() == "chunked"),
            "connection" => {
                if value.split(',').any(|v| v.trim() == "close") {
                    close = true;
                } else if value.split(',').any(|v| v.trim() == "keep-alive") {
                    close = false;
                }
            }
            _ => {}
        }
    }
    if (100..200).contains(&status) {
        return Err(bad(&format!("unexpected interim response {status}")));
    }
    if chunked {
        loop {
            let size_line = conn.line()?;
            let size_line = String::from_utf8_lossy(&size_line);
            let size = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(&format!("bad chunk size: {size_line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !conn.line()?.is_empty() {}
                break;
            }
            conn.skip(size)?;
            if !conn.line()?.is_empty() {
                return Err(bad("a chunk not followed by CRLF"));
            }
        }
    } else if let Some(length) = length {
        conn.skip(length)?;
    } else if status != 204 && status != 304 {
        return Err(bad(
            "a response without Content-Length or chunked encoding (body until close)",
        ));
    }
    Ok((status, close))
}

fn run(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let stream =
        TcpStream::connect(&args.addr).map_err(|e| format!("connect {}: {e}", args.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(args.timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(args.timeout))
        .map_err(|e| e.to_string())?;
    let request = match &args.post {
        None => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: seq-client\r\nAccept: */*\r\n\r\n",
            args.path, args.addr
        ),
        Some(body) => format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: seq-client\r\nAccept: */*\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            args.path,
            args.addr,
            body.len()
        ),
    };
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 << 10),
        start: 0,
    };
    for i in 1..=args.count {
        if started.elapsed() > args.deadline {
            return Err(format!(
                "deadline of {:?} passed after {} of {} requests",
                args.deadline,
                i - 1,
                args.count
            ));
        }
        conn.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("request {i}: write: {e}"))?;
        let (status, close) = read_response(&mut conn).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("request {i}: no answer within {:?}", args.timeout)
            }
            _ => format!("request {i}: read: {e}"),
        })?;
        if !(200..300).contains(&status) {
            return Err(format!("request {i}: status {status}"));
        }
        if !conn.pending().is_empty() {
            return Err(format!("request {i}: bytes after the response"));
        }
        if close && i < args.count {
            return Err(format!(
                "request {i}: the server closes the keep-alive connection (Connection: close)"
            ));
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    eprintln!(
        "seq-client: {} requests to {}{} in {:.2} s",
        args.count,
        args.addr,
        args.path,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("seq-client: {msg}");
            ExitCode::FAILURE
        }
    }
}

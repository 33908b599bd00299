//! Logs: `tracing` to stderr through a background writer, so a slow terminal or pipe never
//! blocks a request, and so logging every request stays cheap.
//!
//! Why not `tracing-appender`'s non-blocking writer: it allocates a message per line and
//! wakes its thread through a channel per line when idle; at 100k requests/s on two cores
//! the allocations and futex wake-ups cost more than formatting the line (measured with
//! `perf` and `bench/run.sh`). Here a line is one copy into a shared buffer under a mutex; the
//! writer thread is woken only when the buffer goes from empty to non-empty, lingers a
//! millisecond (10 while lines come fast) so a batch gathers, and writes the batch with one
//! `write(2)`.
//!
//! A logger never waits for the output: when stderr is a pipe nobody reads (`multi-server |
//! less`, a stuck log shipper) the writer thread blocks in `write(2)`, the buffer reaches its
//! byte budget ([`HIGH_WATER`]) and further lines are dropped and counted. Once the output
//! takes bytes again, the writer writes one line saying how many were dropped. Memory stays
//! bounded by the budget plus the batch being written.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Byte budget of pending lines: a line that would take the buffer past it is dropped and
/// counted (loggers never wait for the output).
const HIGH_WATER: usize = 1 << 20;
/// How long the writer lets a batch gather once woken (cut short by the close: the exit waits
/// for the flush). A line waits this long to reach the output, plus the previous batch's
/// `write`, or [`BUSY_LINGER`] right after a large batch.
const LINGER: Duration = Duration::from_millis(1);
/// How long it gathers while lines come fast (the last batch was at least [`BUSY_BATCH`]).
/// Each batch costs the writer a wake-up, a wait and a `write`: under `wrk` on actix `/greet`
/// (~95k lines/s), 1 ms batches took 0.37-0.50 us of CPU per line, about 4% of the request's
/// whole cost; 10 ms batches 0.10-0.14 us (per-thread CPU time from /proc). The budget holds
/// 10 ms of lines at ~700k lines/s.
const BUSY_LINGER: Duration = Duration::from_millis(10);
/// A batch this large means lines come fast: from ~27k lines/s in 1 ms batches (of ~150 bytes
/// each); the writer goes back to 1 ms below ~2.7k lines/s.
const BUSY_BATCH: usize = 4 * 1024;
/// How long the guard waits at exit for the writer to flush (a stalled output never does).
const FLUSH_DEADLINE: Duration = Duration::from_secs(1);
/// String fields of a request line (the path, above all) are cut at this many bytes.
const MAX_FIELD: usize = 512;
/// Target of the line reporting dropped lines.
const DROP_TARGET: &str = "multi_server::logging";

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    /// Lines dropped since the last report line.
    unreported: u64,
    closed: bool,
    /// The writer thread has written everything and returned.
    finished: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    has_lines: Condvar,
    finished: Condvar,
    /// Lines dropped since start.
    dropped: AtomicU64,
    /// Report lines in JSON.
    json: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer `init` installed, for [`dropped`].
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

/// How many log lines were dropped since start because the output did not keep up.
pub(crate) fn dropped() -> u64 {
    INSTALLED
        .get()
        .map_or(0, |shared| shared.dropped.load(Ordering::Relaxed))
}

/// The `MakeWriter` every layer writes through.
#[derive(Clone)]
pub(crate) struct LogWriter(Arc<Shared>);

impl Write for &LogWriter {
    /// Takes one whole line (every layer writes a formatted line with one `write_all`), or
    /// drops it when the budget is spent. Never waits for the output; reports the line as
    /// written either way, so no layer retries.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.0;
        let mut state = shared.lock();
        if state.closed || state.buffer.len() + line.len() > HIGH_WATER {
            // After close nobody reports, so only the total counts it.
            let wake = !state.closed && state.buffer.is_empty() && state.unreported == 0;
            if !state.closed {
                state.unreported += 1;
            }
            drop(state);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            if wake {
                // A single line over budget into an idle writer: report it now.
                shared.has_lines.notify_one();
            }
            return Ok(line.len());
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        drop(state);
        if was_empty {
            shared.has_lines.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Flushes and stops the writer thread when dropped: keep it until the end of `main`.
#[must_use = "dropping the guard stops the log writer"]
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    /// Waits for the writer to flush, at most [`FLUSH_DEADLINE`]: an output that never
    /// drains must not keep the process from exiting.
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.lock().closed = true;
        shared.has_lines.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let (state, _) = shared
            .finished
            .wait_timeout_while(shared.lock(), FLUSH_DEADLINE, |state| !state.finished)
            .unwrap_or_else(|e| e.into_inner());
        if state.finished {
            drop(state);
            let _ = thread.join();
        }
    }
}

/// The line saying `count` lines were dropped, in the format of the other lines.
fn drop_report(json: bool, count: u64) -> String {
    let mut line = String::with_capacity(160);
    let message = "log output did not keep up: lines dropped";
    if json {
        line.push_str("{\"timestamp\":\"");
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        let _ = writeln!(
            line,
            "\",\"level\":\"WARN\",\"message\":\"{message}\",\"dropped\":{count},\"target\":\"{DROP_TARGET}\"}}"
        );
    } else {
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        let _ = writeln!(line, "  WARN {DROP_TARGET}: {message} dropped={count}");
    }
    line
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut linger = LINGER;
    loop {
        let mut state = shared.lock();
        while state.buffer.is_empty() && state.unreported == 0 && !state.closed {
            state = shared
                .has_lines
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.buffer.is_empty() && state.unreported == 0 {
            // Closed and drained.
            state.finished = true;
            drop(state);
            shared.finished.notify_all();
            return;
        }
        if !state.closed {
            // Let the batch gather, but not past the close: the process waits for the flush.
            state = shared
                .has_lines
                .wait_timeout_while(state, linger, |state| !state.closed)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::swap(&mut batch, &mut state.buffer);
        // Every line in `batch` was taken before the lines counted here were dropped.
        let unreported = std::mem::take(&mut state.unreported);
        drop(state);
        if unreported > 0 {
            batch.extend_from_slice(drop_report(shared.json, unreported).as_bytes());
        }
        // A log that cannot be written (closed stderr) must not take the process down. While
        // this blocks (a stalled pipe), loggers fill the buffer up to the budget, then drop.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        linger = if batch.len() >= BUSY_BATCH {
            BUSY_LINGER
        } else {
            LINGER
        };
        batch.clear();
        // A stalled output can leave one huge batch behind; do not keep its capacity.
        if batch.capacity() > HIGH_WATER + 64 * 1024 {
            batch = Vec::with_capacity(64 * 1024);
        }
    }
}

/// Writes the one line per request (`target: "request"`) itself, straight into a reused
/// per-thread buffer: the generic formatter's per-event machinery cost more than the line
/// (measured with `bench/run.sh`). Same text as the generic formatter, `latency_ms` with three
/// decimals; in JSON mode the same fields as the generic JSON lines.
struct RequestLines {
    writer: LogWriter,
    json: bool,
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

impl<S: tracing::Subscriber> Layer<S> for RequestLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != REQUEST_TARGET {
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            if self.json {
                line.push_str("{\"timestamp\":\"");
                let _ = SystemTime.format_time(&mut Writer::new(line));
                let _ = write!(line, "\",\"level\":\"{}\"", meta.level());
                event.record(&mut JsonFields(line));
                line.push_str(",\"target\":\"request\"}\n");
            } else {
                let _ = SystemTime.format_time(&mut Writer::new(line));
                let _ = write!(line, " {:>5} request:", meta.level());
                event.record(&mut TextFields(line));
                line.push('\n');
            }
            let _ = (&self.writer).write_all(line.as_bytes());
        });
    }
}

const REQUEST_TARGET: &str = "request";

/// The request lines the manager writes (`manager::requests::set_request_log`), formatted
/// here with no `tracing` field machinery at all: a cached second for the timestamp, `itoa`
/// for the numbers, plain text copied when it needs no escaping. The same bytes as
/// [`RequestLines`] writes for the `tracing` event (checked by a test).
struct DirectRequestLog {
    writer: LogWriter,
    json: bool,
    enabled: bool,
}

thread_local! {
    static DIRECT: std::cell::RefCell<(Vec<u8>, LineCache)> =
        std::cell::RefCell::new((Vec::with_capacity(256), LineCache::default()));
}

/// What repeats from one request line to the next on a thread, kept formatted.
struct LineCache {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS.` (20 bytes).
    second: (u64, [u8; 20]),
    server: ServerPart,
}

impl Default for LineCache {
    fn default() -> Self {
        LineCache {
            second: (u64::MAX, [0; 20]),
            server: ServerPart {
                name: None,
                json: false,
                text: Vec::new(),
            },
        }
    }
}

/// The last server's name, in which format, and the line's text from after the timestamp
/// through ` id=` for it: a thread serves one server, or a few, so this is copied, not quoted
/// again (~100 instructions a line, callgrind). The name is matched by its `Arc`'s address,
/// not its text (~20 instructions); kept, so no other name can take that address.
struct ServerPart {
    name: Option<Arc<str>>,
    json: bool,
    text: Vec<u8>,
}

impl ServerPart {
    /// The text for `server` in format `F`.
    fn text<F: LineFormat>(&mut self, server: &Arc<str>) -> &[u8] {
        if !self
            .name
            .as_ref()
            .is_some_and(|name| Arc::ptr_eq(name, server))
            || self.json != F::JSON
        {
            self.name = Some(Arc::clone(server));
            self.json = F::JSON;
            self.text.clear();
            self.text.extend_from_slice(F::SERVER);
            F::push_str(&mut self.text, server);
            self.text.extend_from_slice(F::ID);
        }
        &self.text
    }
}

impl manager::requests::RequestLog for DirectRequestLog {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn write(&self, line: &manager::requests::RequestLine<'_>) {
        DIRECT.with_borrow_mut(|(buf, cache)| {
            buf.clear();
            format_request_line(buf, cache, line, self.json, manager::clock::since_epoch());
            let _ = (&self.writer).write_all(buf);
        });
    }
}

/// `line` in `buf`, as JSON or text, at `now` (since the Unix epoch).
fn format_request_line(
    buf: &mut Vec<u8>,
    cache: &mut LineCache,
    line: &manager::requests::RequestLine<'_>,
    json: bool,
    now: Duration,
) {
    if json {
        write_line::<Json>(buf, cache, line, now);
    } else {
        write_line::<Text>(buf, cache, line, now);
    }
}

/// A request line's format: the text around its fields, and how a string is quoted. Constants
/// of a type parameter, not a table read at run time: each format still compiles to straight
/// code (a loop over a field table cost ~390 instructions more per line, callgrind).
trait LineFormat {
    /// Before the timestamp.
    const START: &'static [u8];
    /// From after the timestamp to the server's name.
    const SERVER: &'static [u8];
    const ID: &'static [u8];
    const METHOD: &'static [u8];
    const PATH: &'static [u8];
    const STATUS: &'static [u8];
    const LATENCY: &'static [u8];
    const END: &'static [u8];
    const JSON: bool;
    fn push_str(buf: &mut Vec<u8>, value: &str);
    /// From [`Self::METHOD`] through [`Self::PATH`] for the methods most requests use,
    /// written out: one copy instead of a quoting.
    fn method_part(method: &str) -> Option<&'static [u8]>;
}

/// `tracing_subscriber`'s full text format.
struct Text;
/// `tracing_subscriber`'s JSON format, flattened.
struct Json;

impl LineFormat for Text {
    const START: &'static [u8] = b"";
    const SERVER: &'static [u8] = b"  INFO request: server=";
    const ID: &'static [u8] = b" id=";
    const METHOD: &'static [u8] = b" method=";
    const PATH: &'static [u8] = b" path=";
    const STATUS: &'static [u8] = b" status=";
    const LATENCY: &'static [u8] = b" latency_ms=";
    const END: &'static [u8] = b"\n";
    const JSON: bool = false;
    #[inline(always)]
    fn push_str(buf: &mut Vec<u8>, value: &str) {
        push_debug_str(buf, value);
    }
    fn method_part(method: &str) -> Option<&'static [u8]> {
        Some(match method {
            "GET" => b" method=\"GET\" path=",
            "POST" => b" method=\"POST\" path=",
            "HEAD" => b" method=\"HEAD\" path=",
            _ => return None,
        })
    }
}

impl LineFormat for Json {
    const START: &'static [u8] = b"{\"timestamp\":\"";
    const SERVER: &'static [u8] = b"\",\"level\":\"INFO\",\"server\":";
    const ID: &'static [u8] = b",\"id\":";
    const METHOD: &'static [u8] = b",\"method\":";
    const PATH: &'static [u8] = b",\"path\":";
    const STATUS: &'static [u8] = b",\"status\":";
    const LATENCY: &'static [u8] = b",\"latency_ms\":";
    const END: &'static [u8] = b",\"target\":\"request\"}\n";
    const JSON: bool = true;
    #[inline(always)]
    fn push_str(buf: &mut Vec<u8>, value: &str) {
        push_json_str(buf, value);
    }
    fn method_part(method: &str) -> Option<&'static [u8]> {
        Some(match method {
            "GET" => b",\"method\":\"GET\",\"path\":",
            "POST" => b",\"method\":\"POST\",\"path\":",
            "HEAD" => b",\"method\":\"HEAD\",\"path\":",
            _ => return None,
        })
    }
}

fn write_line<F: LineFormat>(
    buf: &mut Vec<u8>,
    cache: &mut LineCache,
    line: &manager::requests::RequestLine<'_>,
    now: Duration,
) {
    let mut numbers = itoa::Buffer::new();
    buf.extend_from_slice(F::START);
    push_timestamp(buf, &mut cache.second, now);
    buf.extend_from_slice(cache.server.text::<F>(line.server));
    buf.extend_from_slice(numbers.format(line.id).as_bytes());
    if let Some(part) = F::method_part(line.method) {
        buf.extend_from_slice(part);
    } else {
        buf.extend_from_slice(F::METHOD);
        F::push_str(buf, line.method);
        buf.extend_from_slice(F::PATH);
    }
    F::push_str(buf, line.path);
    buf.extend_from_slice(F::STATUS);
    push_status(buf, line.status);
    buf.extend_from_slice(F::LATENCY);
    // In u64 (584 years of nanoseconds): u128 division is a library call.
    let nanos = (line.latency.as_secs().saturating_mul(1_000_000_000))
        .saturating_add(u64::from(line.latency.subsec_nanos()));
    push_millis(buf, nanos.saturating_add(500) / 1000);
    buf.extend_from_slice(F::END);
}

/// An HTTP status: three digits, written out from [`PAIRS`] (`itoa`'s general loop, for
/// any `u16`, cost ~20 instructions a line more, callgrind).
fn push_status(buf: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        let rest = usize::from(status % 100);
        buf.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            PAIRS[2 * rest],
            PAIRS[2 * rest + 1],
        ]);
    } else {
        buf.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    }
}

/// Milliseconds with three decimals, from microseconds (what `{:.3}` prints of the f64).
fn push_millis(buf: &mut Vec<u8>, micros: u64) {
    let mut numbers = itoa::Buffer::new();
    buf.extend_from_slice(numbers.format(micros / 1000).as_bytes());
    let fraction = u16::try_from(micros % 1000).unwrap_or(0);
    buf.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// Text that needs no escaping: printable ASCII without quotes or backslashes, within the
/// field limit.
fn plain(value: &str) -> bool {
    value.len() <= MAX_FIELD && value.bytes().all(|b| PLAIN[usize::from(b)])
}

/// [`plain`]'s bytes, as a table: one load a byte instead of three comparisons.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// `value` quoted: copied when it is [`plain`], else escaped by `escape` (cut at
/// [`MAX_FIELD`] first), straight into `buf`. Inline, so that the plain copy (most paths) is
/// not a call through a function pointer.
#[inline(always)]
fn push_quoted(buf: &mut Vec<u8>, value: &str, escape: fn(&mut Vec<u8>, &str)) {
    if plain(value) {
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    } else {
        escape(buf, &truncated(value));
    }
}

/// As `{:?}` prints a `str` (the text format).
#[inline(always)]
fn push_debug_str(buf: &mut Vec<u8>, value: &str) {
    push_quoted(buf, value, |buf, text| {
        use std::io::Write as _;
        let _ = write!(buf, "{text:?}");
    });
}

/// As a JSON string.
#[inline(always)]
fn push_json_str(buf: &mut Vec<u8>, value: &str) {
    push_quoted(buf, value, |buf, text| {
        let _ = serde_json::to_writer(&mut *buf, text);
    });
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), as `tracing_subscriber`'s `SystemTime`
/// prints it, of `since` the Unix epoch; the date and time of the second are computed once a
/// second per thread. Inline: called once a line, and a call's register saves cost ~20
/// instructions.
#[inline(always)]
fn push_timestamp(buf: &mut Vec<u8>, cached: &mut (u64, [u8; 20]), since: Duration) {
    let second = since.as_secs();
    if cached.0 != second {
        *cached = (second, civil_second(second));
    }
    buf.extend_from_slice(&cached.1);
    // Two digits at a time from a table, and the `Z` with them: one copy.
    let micros = since.subsec_micros() as usize;
    let pair = |n: usize| [PAIRS[2 * n], PAIRS[2 * n + 1]];
    let ([a, b], [c, d], [e, f]) = (
        pair(micros / 10_000),
        pair(micros / 100 % 100),
        pair(micros % 100),
    );
    buf.extend_from_slice(&[a, b, c, d, e, f, b'Z']);
}

/// `00` to `99`, two bytes each.
static PAIRS: [u8; 200] = {
    let mut table = [0; 200];
    let mut n = 0;
    while n < 100 {
        table[2 * n] = b'0' + (n / 10) as u8;
        table[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    table
};

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second (Howard Hinnant's `civil_from_days`).
fn civil_second(second: u64) -> [u8; 20] {
    let days = (second / 86_400) as i64;
    let of_day = second % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    let mut prefix = [0; 20];
    let bytes = text.as_bytes();
    prefix[..bytes.len().min(20)].copy_from_slice(&bytes[..bytes.len().min(20)]);
    prefix
}

struct TextFields<'a>(&'a mut String);

/// `value` cut at [`MAX_FIELD`] bytes (on a character boundary), with a marker saying how
/// many bytes were left out.
fn truncated(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_FIELD {
        return value.into();
    }
    let mut end = MAX_FIELD;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[+{} bytes]", &value[..end], value.len() - end).into()
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let value = truncated(value);
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let _ = write!(self.0, " {}={value:.3}", field.name());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        let _ = write!(self.0, " {}={}", field.name(), truncated(&text));
    }
}

struct JsonFields<'a>(&'a mut String);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(
            self.0,
            ",\"{}\":{}",
            field.name(),
            serde_json::Value::from(truncated(value).as_ref())
        );
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.0, ",\"{}\":{value}", field.name());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.0, ",\"{}\":{value}", field.name());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let _ = write!(self.0, ",\"{}\":{value:.3}", field.name());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        let _ = write!(
            self.0,
            ",\"{}\":{}",
            field.name(),
            serde_json::Value::from(truncated(&text).as_ref())
        );
    }
}

/// Installs the subscriber: text or JSON lines to stderr, filtered by `RUST_LOG` (default
/// `info`).
pub(crate) fn init(format: LogFormat) -> LogGuard {
    let shared = Arc::new(Shared {
        json: format == LogFormat::Json,
        ..Shared::default()
    });
    let _ = INSTALLED.set(Arc::clone(&shared));
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_batches(&shared, io::stderr())
        })
        .ok();
    let writer = LogWriter(Arc::clone(&shared));
    let writer_for_direct = writer.clone();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_requests = filter_fn(|meta| meta.target() != REQUEST_TARGET);
    let general = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(false)
            .with_filter(not_requests)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .json()
            .flatten_event(true)
            .with_filter(not_requests)
            .boxed(),
    };
    let requests = RequestLines {
        writer,
        json: format == LogFormat::Json,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(requests)
        .with(general)
        .init();
    // The filter is fixed from here on (RUST_LOG, read once): ask it once. On a thread of its
    // own: with per-layer filters, an `enabled!` that no event follows leaves the thread's
    // filter state set, and the next event on that thread (here: main's first) would be
    // dropped by a layer that has not been asked.
    let enabled = std::thread::spawn(|| tracing::enabled!(target: "request", tracing::Level::INFO))
        .join()
        .unwrap_or(true);
    manager::requests::set_request_log(DirectRequestLog {
        writer: writer_for_direct,
        json: format == LogFormat::Json,
        enabled,
    });
    LogGuard { shared, thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_lines_keep_the_generic_shape_and_json_stays_valid() {
        for json in [false, true] {
            let shared = Arc::new(Shared::default());
            let layer = RequestLines {
                writer: LogWriter(Arc::clone(&shared)),
                json,
            };
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(target: "request", server = "flows", id = 7u64, method = "GET",
                    path = "/a\"b", status = 200u16, latency_ms = 1.23456);
                tracing::info!(target: "elsewhere", "not a request line");
            });
            let text = String::from_utf8(shared.lock().buffer.clone()).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
            if json {
                let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                assert_eq!(line["path"], "/a\"b");
                assert_eq!(line["status"], 200);
                assert_eq!(line["latency_ms"], 1.235);
                assert_eq!(
                    (line["level"].as_str(), line["target"].as_str()),
                    (Some("INFO"), Some("request"))
                );
            } else {
                let expected = r#" INFO request: server="flows" id=7 method="GET" path="/a\"b" status=200 latency_ms=1.235"#;
                assert!(text.contains(expected), "{text}");
                assert!(text.ends_with("latency_ms=1.235\n"));
            }
        }
    }

    /// The line of the `tracing` event and of the direct writer, without the timestamp; the
    /// direct one with `cache` as a thread's earlier lines left it.
    fn both_lines(
        cache: &mut LineCache,
        json: bool,
        (server, method, path): (&str, &str, &str),
        latency: Duration,
    ) -> (String, String) {
        let shared = Arc::new(Shared::default());
        let layer = RequestLines {
            writer: LogWriter(Arc::clone(&shared)),
            json,
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "request", server = server, id = 7u64, method = method,
                path = path, status = 200u16, latency_ms = latency.as_secs_f64() * 1e3);
        });
        let event = String::from_utf8(shared.lock().buffer.clone()).unwrap();
        // One `Arc` per name, as the manager keeps one per server.
        thread_local! {
            static NAMES: std::cell::RefCell<Vec<Arc<str>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let name = NAMES.with_borrow_mut(|names| {
            if let Some(name) = names.iter().find(|name| &***name == server) {
                return Arc::clone(name);
            }
            names.push(Arc::from(server));
            Arc::clone(names.last().expect("just pushed"))
        });
        let line = manager::requests::RequestLine {
            server: &name,
            id: 7,
            method,
            path,
            status: 200,
            latency,
        };
        let now = manager::clock::since_epoch();
        let mut direct = Vec::new();
        format_request_line(&mut direct, cache, &line, json, now);
        let direct = String::from_utf8(direct).unwrap();
        let cut = |line: &str| {
            if json {
                line.split_once("\",\"level")
                    .map(|(_, rest)| rest.to_owned())
                    .unwrap()
            } else {
                line.split_once(' ')
                    .map(|(_, rest)| rest.to_owned())
                    .unwrap()
            }
        };
        (cut(&event), cut(&direct))
    }

    /// Every `u16`, as `itoa` writes it.
    #[test]
    fn statuses_are_their_digits() {
        for status in 0..=u16::MAX {
            let mut ours = Vec::new();
            push_status(&mut ours, status);
            assert_eq!(ours, status.to_string().as_bytes());
        }
    }

    #[test]
    fn the_direct_request_line_is_the_event_line_byte_for_byte() {
        let long = "/x".repeat(400);
        // Plain, and long.
        let longish = "/y".repeat(140);
        // One cache through every line, as a thread keeps it: the servers and formats change
        // from line to line, and the methods go from written-out to quoted.
        let mut cache = LineCache::default();
        for json in [false, true] {
            for path in [
                "/greet",
                "/a\"b\\c",
                "/caf\u{e9}/\u{7}",
                long.as_str(),
                longish.as_str(),
            ] {
                for latency in [
                    Duration::from_micros(91),
                    Duration::from_nanos(1_234_567),
                    Duration::from_millis(12_345),
                ] {
                    for (server, method) in [
                        ("flows", "GET"),
                        ("flows", "POST"),
                        ("flows", "HEAD"),
                        ("devui", "PATCH"),
                        ("a \"quoted\" name", "get"),
                        ("flows", "GET"),
                    ] {
                        let (event, direct) =
                            both_lines(&mut cache, json, (server, method, path), latency);
                        assert_eq!(
                            event, direct,
                            "json={json} server={server:?} method={method} path={path:?} \
                             latency={latency:?}"
                        );
                    }
                }
            }
        }
        // The timestamp: as tracing_subscriber's SystemTime prints it, read just before and
        // just after ours (one of them is in the same minute, whenever the test runs).
        let theirs = || {
            let mut text = String::new();
            let _ = SystemTime.format_time(&mut Writer::new(&mut text));
            text
        };
        let before = theirs();
        let mut ours = Vec::new();
        push_timestamp(&mut ours, &mut cache.second, manager::clock::since_epoch());
        let after = theirs();
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours.len(), before.len(), "{ours} vs {before}");
        assert!(
            ours[..17] == before[..17] || ours[..17] == after[..17],
            "{ours} vs {before} / {after}"
        );
        for (micros, text) in [
            (45, "2026-12-01T15:38:43.000045Z"),
            (100_000, "2026-12-01T15:38:43.100000Z"),
            (999_999, "2026-12-01T15:38:43.999999Z"),
            (12_340, "2026-12-01T15:38:43.012340Z"),
        ] {
            let at = Duration::from_micros(1_796_139_523_000_000 + micros);
            let mut line = Vec::new();
            push_timestamp(&mut line, &mut cache.second, at);
            assert_eq!(String::from_utf8(line).unwrap(), text);
        }
        for (second, text) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_796_139_523, "2026-12-01T15:38:43."),
            (4_102_444_799, "2099-12-31T23:59:59."),
        ] {
            assert_eq!(&civil_second(second), text.as_bytes(), "{second}");
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_the_guard_flushes() {
        let shared = Arc::new(Shared::default());
        let sink = Sink::default();
        let thread = std::thread::spawn({
            let (shared, sink) = (Arc::clone(&shared), sink.clone());
            move || write_batches(&shared, sink)
        });
        let writer = LogWriter(Arc::clone(&shared));
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        (&writer)
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        drop(LogGuard {
            shared,
            thread: Some(thread),
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..10_000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    /// An output whose first write blocks until `gate` sends (or its sender is dropped), like a
    /// pipe nobody reads; then it writes into `sink`.
    struct Stalled {
        gate: std::sync::mpsc::Receiver<()>,
        entered: std::sync::mpsc::Sender<()>,
        sink: Sink,
        open: bool,
    }

    impl Write for Stalled {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if !self.open {
                let _ = self.entered.send(());
                let _ = self.gate.recv();
                self.open = true;
            }
            self.sink.write(data)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer thread on a [`Stalled`] output, stuck in its first write once this returns.
    fn stalled_writer(shared: &Arc<Shared>) -> (std::sync::mpsc::Sender<()>, Sink, JoinHandle<()>) {
        let (release, gate) = std::sync::mpsc::channel();
        let (entered, stuck) = std::sync::mpsc::channel();
        let sink = Sink::default();
        let output = Stalled {
            gate,
            entered,
            sink: sink.clone(),
            open: false,
        };
        let thread = std::thread::spawn({
            let shared = Arc::clone(shared);
            move || write_batches(&shared, output)
        });
        (&LogWriter(Arc::clone(shared)))
            .write_all(b"first\n")
            .unwrap();
        stuck
            .recv_timeout(Duration::from_secs(5))
            .expect("the writer reaches the output");
        (release, sink, thread)
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_reports_them_once_it_drains() {
        const LINES: usize = 40_000; // about 3 MiB: three times the budget
        let shared = Arc::new(Shared::default());
        let (release, sink, thread) = stalled_writer(&shared);
        let producer = std::thread::spawn({
            let writer = LogWriter(Arc::clone(&shared));
            move || {
                for i in 0..LINES {
                    let line = format!("line {i:06} {}\n", "y".repeat(64));
                    (&writer).write_all(line.as_bytes()).unwrap();
                }
            }
        });
        let started = std::time::Instant::now();
        while !producer.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a logger blocked on a stalled output"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        producer.join().unwrap();
        let dropped = shared.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing dropped past the budget");
        assert!(shared.lock().buffer.len() <= HIGH_WATER);
        assert_eq!(shared.lock().unreported, dropped);

        release.send(()).unwrap();
        drop(LogGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        });
        assert!(shared.lock().finished);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("first\n"));
        let kept: Vec<usize> = text
            .lines()
            .filter_map(|l| l.strip_prefix("line "))
            .map(|l| l[..6].parse().unwrap())
            .collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "out of order");
        let reports: Vec<u64> = text
            .lines()
            .filter(|l| l.contains(&format!("WARN {DROP_TARGET}: ")))
            .map(|l| l.rsplit_once("dropped=").unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(
            reports,
            [dropped],
            "one report line with the count: {reports:?}"
        );
        assert!(
            text.trim_end().lines().last().unwrap().contains("dropped="),
            "the report follows the lines kept before the drops"
        );
        assert_eq!(kept.len() as u64 + dropped, LINES as u64);
    }

    #[test]
    fn the_guard_gives_up_on_an_output_that_never_drains() {
        let shared = Arc::new(Shared::default());
        let (release, _sink, thread) = stalled_writer(&shared);
        let started = std::time::Instant::now();
        drop(LogGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        });
        let waited = started.elapsed();
        assert!(waited >= FLUSH_DEADLINE, "{waited:?}");
        assert!(
            waited < FLUSH_DEADLINE + Duration::from_secs(2),
            "{waited:?}"
        );
        // Loggers after the end neither block nor grow the buffer.
        (&LogWriter(Arc::clone(&shared)))
            .write_all(b"late\n")
            .unwrap();
        assert!(shared.lock().buffer.is_empty());
        drop(release); // lets the writer thread finish
    }

    #[test]
    fn drop_reports_keep_the_line_formats() {
        let line: serde_json::Value = serde_json::from_str(drop_report(true, 3).trim()).unwrap();
        assert_eq!(line["dropped"], 3);
        assert_eq!(line["level"], "WARN");
        let text = drop_report(false, 3);
        assert!(text.ends_with(" dropped=3\n"), "{text}");
        assert!(text.contains(&format!("  WARN {DROP_TARGET}: ")), "{text}");
    }

    #[test]
    fn long_request_paths_are_truncated_with_a_marker() {
        let path = format!("/{}", "é".repeat(1000)); // 2001 bytes, cut on a char boundary
        for json in [false, true] {
            let shared = Arc::new(Shared::default());
            let layer = RequestLines {
                writer: LogWriter(Arc::clone(&shared)),
                json,
            };
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(target: "request", server = "flows", id = 1u64, method = "GET",
                    path = path.as_str(), status = 404u16, latency_ms = 0.5);
            });
            let text = String::from_utf8(shared.lock().buffer.clone()).unwrap();
            let kept = format!("/{}", "é".repeat(255)); // 511 bytes
            let expected = format!("{kept}…[+1490 bytes]");
            if json {
                let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                assert_eq!(line["path"], expected.as_str());
                assert_eq!(line["status"], 404);
            } else {
                assert!(
                    text.contains(&format!(" path=\"{expected}\" status=404")),
                    "{text}"
                );
            }
            assert!(text.len() < 800, "{}", text.len());
        }
    }
}

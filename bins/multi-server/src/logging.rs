//! Logs: `tracing` to stderr through a background writer, so a slow terminal or pipe never
//! blocks a request, and so logging every request stays cheap.
//!
//! Why not `tracing-appender`'s non-blocking writer: it allocates a message per line and
//! wakes its thread through a channel per line when idle; at 100k requests/s on two cores
//! the allocations and futex wake-ups cost more than formatting the line (measured with
//! `perf` and `bench/run.sh`). Here a line is one copy into a shared buffer under a mutex; the
//! writer thread is woken only when the buffer goes from empty to non-empty, lingers a
//! millisecond so a batch gathers, and writes the batch with one `write(2)`.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

/// Past this many buffered bytes, loggers wait for the writer (back-pressure, never loss).
const HIGH_WATER: usize = 4 << 20;
/// How long the writer lets a batch gather once woken.
const LINGER: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    has_lines: Condvar,
    has_room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` every layer writes through.
#[derive(Clone)]
pub(crate) struct LogWriter(Arc<Shared>);

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.0;
        let mut state = shared.lock();
        while state.buffer.len() >= HIGH_WATER && !state.closed {
            state = shared
                .has_room
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
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
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.has_lines.notify_one();
        self.shared.has_room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let mut state = shared.lock();
        while state.buffer.is_empty() && !state.closed {
            state = shared
                .has_lines
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.buffer.is_empty() {
            return; // closed and drained
        }
        if !state.closed {
            drop(state);
            std::thread::sleep(LINGER);
            state = shared.lock();
        }
        std::mem::swap(&mut batch, &mut state.buffer);
        drop(state);
        shared.has_room.notify_all();
        // A log that cannot be written (closed stderr) must not take the process down.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
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

struct TextFields<'a>(&'a mut String);

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
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
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

struct JsonFields<'a>(&'a mut String);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(
            self.0,
            ",\"{}\":{}",
            field.name(),
            serde_json::Value::from(value)
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
            serde_json::Value::from(text)
        );
    }
}

/// Installs the subscriber: text or JSON lines to stderr, filtered by `RUST_LOG` (default
/// `info`).
pub(crate) fn init(format: LogFormat) -> LogGuard {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_batches(&shared, io::stderr())
        })
        .ok();
    let writer = LogWriter(Arc::clone(&shared));
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

    #[test]
    fn a_full_buffer_holds_loggers_back_instead_of_dropping_lines() {
        let shared = Arc::new(Shared::default());
        let writer = LogWriter(Arc::clone(&shared));
        (&writer).write_all(&vec![b'x'; HIGH_WATER]).unwrap();
        let blocked = std::thread::spawn({
            let writer = writer.clone();
            move || (&writer).write_all(b"next\n").unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!blocked.is_finished(), "must wait for room");
        let sink = Sink::default();
        let thread = std::thread::spawn({
            let (shared, sink) = (Arc::clone(&shared), sink.clone());
            move || write_batches(&shared, sink)
        });
        blocked.join().unwrap();
        drop(LogGuard {
            shared,
            thread: Some(thread),
        });
        let written = sink.0.lock().unwrap();
        assert_eq!(written.len(), HIGH_WATER + 5);
        assert!(written.ends_with(b"next\n"));
    }
}

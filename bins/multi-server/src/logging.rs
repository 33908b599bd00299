//! Logs: `tracing` to stderr through a background writer, so a slow terminal or pipe never
//! blocks a request.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the subscriber. Keep the guard until the end of `main`: dropping it flushes.
pub(crate) fn init(format: LogFormat) -> WorkerGuard {
    // Not lossy: under a burst the writer applies back-pressure instead of dropping lines.
    // Buffered: the writer thread flushes whenever it has drained its queue, so under load
    // one write(2) carries many lines instead of one each (a core's worth of syscalls at
    // 100k requests/s), and an idle log is still written out at once.
    let (writer, guard) =
        NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

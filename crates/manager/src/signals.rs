//! SIGTERM, SIGINT and SIGHUP: the first starts the graceful shutdown, the second forces exit.
//! SIGUSR2: an in-place upgrade (see `upgrade`), when the program enabled it.
//!
//! SIGHUP is treated like SIGTERM: a hung-up terminal means nobody is watching, so the process
//! should drain and go. (Reloading configuration on SIGHUP would need configuration that can
//! change at run time; there is none.)

use std::io::{self, Write};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::{ManagerHandle, ShutdownReason};

/// How long a forced exit waits for its note to reach stderr.
const FORCED_EXIT_NOTE_WAIT: Duration = Duration::from_millis(100);

pub(crate) fn spawn(handle: ManagerHandle) -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let upgrades = handle.clone();
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            match upgrades.start_upgrade() {
                Ok(pid) => tracing::info!(pid, "SIGUSR2: upgrading in place"),
                Err(refused) => tracing::warn!(%refused, "SIGUSR2: no upgrade"),
            }
        }
    });
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            let (name, number) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 15),
                _ = int.recv() => ("SIGINT", 2),
                _ = hup.recv() => ("SIGHUP", 1),
            };
            received += 1;
            // Act first, then log: logging must never be what stands between a signal and
            // its effect (a stalled log pipe).
            if received == 1 {
                handle.request_shutdown(ShutdownReason::Signal { signal: name });
                tracing::info!(
                    signal = name,
                    "shutting down gracefully; send it again to force exit"
                );
            } else {
                tracing::error!(signal = name, "second signal: forced exit");
                // Straight to stderr as well (the log writer may not get to flush), but from
                // another thread and for a bounded time: stderr may be a pipe nobody reads.
                let (done, written) = std::sync::mpsc::channel();
                let _ = std::thread::Builder::new()
                    .name("forced-exit-note".into())
                    .spawn(move || {
                        let _ = writeln!(
                            io::stderr(),
                            "{name} received again: forced exit, in-flight requests dropped"
                        );
                        let _ = done.send(());
                    });
                let _ = written.recv_timeout(FORCED_EXIT_NOTE_WAIT);
                std::process::exit(128 + number);
            }
        }
    });
    Ok(())
}

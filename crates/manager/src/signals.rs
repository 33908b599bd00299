//! SIGTERM, SIGINT and SIGHUP: the first starts the graceful shutdown, the second forces exit.
//!
//! SIGHUP is treated like SIGTERM: a hung-up terminal means nobody is watching, so the process
//! should drain and go. (Reloading configuration on SIGHUP would need configuration that can
//! change at run time; there is none.)

use std::io;

use tokio::signal::unix::{SignalKind, signal};

use crate::{ManagerHandle, ShutdownReason};

pub(crate) fn spawn(handle: ManagerHandle) -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            let (name, number) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 15),
                _ = int.recv() => ("SIGINT", 2),
                _ = hup.recv() => ("SIGHUP", 1),
            };
            received += 1;
            if received == 1 {
                tracing::info!(
                    signal = name,
                    "shutting down gracefully; send it again to force exit"
                );
                handle.request_shutdown(ShutdownReason::Signal { signal: name });
            } else {
                // Straight to stderr as well: the log writer may not get to flush.
                eprintln!("{name} received again: forced exit, in-flight requests dropped");
                tracing::error!(signal = name, "second signal: forced exit");
                std::process::exit(128 + number);
            }
        }
    });
    Ok(())
}

//! For the framework crates' own tests (feature `testing`): one server under a manager, live.

use std::net::SocketAddr;
use std::time::Duration;

use manager::{ManagerHandle, ProcessState, Report, ServerConfig, ServerManager};
use tokio::task::JoinHandle;

/// A server started by [`start`].
#[derive(Debug)]
pub struct Started {
    /// The manager's handle.
    pub handle: ManagerHandle,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// `http://` and the address.
    pub url: String,
    /// The manager's run: its report once stopped.
    pub run: JoinHandle<Report>,
}

/// Runs `server` as `name` on 127.0.0.1:0 under a manager (no signal handling, 5 s drain
/// deadline) and waits until it is live.
///
/// # Panics
/// When it is not live within 10 s.
pub async fn start(name: &str, server: impl manager::Server) -> Started {
    let mut manager = ServerManager::new()
        .handle_signals(false)
        .drain_deadline(Duration::from_secs(5));
    manager.add_server(ServerConfig::new(name), server);
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    let state = tokio::time::timeout(Duration::from_secs(10), handle.wait_live())
        .await
        .expect("live within 10 s");
    assert_eq!(state, ProcessState::Live);
    let address = handle.server_info().servers[0]
        .address
        .clone()
        .expect("bound");
    let addr: SocketAddr = address.parse().expect("an address");
    Started {
        url: format!("http://{addr}"),
        handle,
        addr,
        run,
    }
}

/// The report of `run`, which must end within 900 ms: a server that has just drained its
/// last request stops at once (not, say, at its framework's next once-a-second check).
///
/// # Panics
/// When the run does not end in time, or its task panicked.
pub async fn report_soon(run: JoinHandle<Report>) -> Report {
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stopped within 10 s")
        .expect("the manager does not panic");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "stopped {:?} after the last request ended",
        started.elapsed()
    );
    report
}

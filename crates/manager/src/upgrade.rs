//! In-place upgrade, as nginx's `SIGUSR2` and Pingora's `--upgrade` do it: the running process
//! starts its successor with every listening socket, keeps serving until the successor says
//! it is ready, then stops accepting and drains. Nobody sees a refused connection: the sockets
//! never stop listening, and whichever process calls `accept` takes what the kernel queued.
//!
//! - **Sockets**: the successor gets them at fds 3.. with `LISTEN_FDS` and `LISTEN_FDNAMES`
//!   (the server names), the convention the process already reads for systemd socket
//!   activation and `watchexec --socket`: one way in for sockets, whoever hands them over, and
//!   nothing to version between the old binary and the new.
//! - **Readiness**: the successor's notifier (the one that tells systemd `READY=1`) also tells
//!   a datagram socket this process owns, named by `MULTI_SERVER_UPGRADE_NOTIFY`, in a
//!   directory only this user can enter. Under systemd, this process then sends
//!   `MAINPID=<successor>`.
//! - **Failure**: a successor that exits, or is not ready within the timeout, is asked to stop
//!   (`SIGTERM`: it may have accepted connections; it drains them), killed if it has not
//!   stopped after its drain deadline, and this process carries on as if nothing happened.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use serde::Serialize;

use crate::server::ListeningSocket;
use crate::shared::{Shared, lock, read};
use crate::{ManagerHandle, ServerState, ShutdownReason};

/// The variable that names the predecessor's readiness socket in a successor.
pub(crate) const NOTIFY_VAR: &str = "MULTI_SERVER_UPGRADE_NOTIFY";
/// The variable that names, in a successor, the sockets the predecessor had bound itself
/// (the successor then owns them outright, where a service manager's stay its).
pub(crate) const OWNED_VAR: &str = "MULTI_SERVER_UPGRADE_OWNED";

/// How the successor is started: the binary and its arguments (the program's own, so that it
/// serves what this one serves).
#[derive(Debug, Clone)]
pub struct UpgradeCommand {
    /// The binary to start; the program's own path, where a new version was installed.
    pub binary: PathBuf,
    /// Its arguments, without the program name.
    pub args: Vec<OsString>,
    /// How long the successor may take to be ready.
    pub timeout: Duration,
}

/// Where an upgrade stands, for `/__serverz`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeState {
    /// `upgrading` (a successor is starting), `upgraded` (it took over; this process is
    /// draining) or `failed` (this process carries on).
    pub state: &'static str,
    /// The successor's process id.
    pub pid: Option<u32>,
    /// The binary started.
    pub binary: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An upgrade that could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefused {
    /// The program set no [`UpgradeCommand`].
    #[error("in-place upgrade is not configured for this process")]
    NotConfigured,
    /// Another upgrade is under way.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// The process is shutting down.
    #[error("the process is shutting down")]
    ShuttingDown,
    /// The successor could not be started (no such binary, ...).
    #[error("cannot start the new process: {0}")]
    Spawn(String),
}

impl ManagerHandle {
    /// Starts an in-place upgrade (see the module docs) and returns the successor's process
    /// id; how it ends is logged, shown in `/__serverz` (`upgrade`), and, when it succeeds,
    /// the shutdown of this process ([`ShutdownReason::Upgraded`]).
    ///
    /// # Errors
    /// Why no upgrade was started.
    pub fn start_upgrade(&self) -> Result<u32, UpgradeRefused> {
        let shared = &self.shared;
        let command = lock(&shared.settings)
            .upgrade
            .clone()
            .ok_or(UpgradeRefused::NotConfigured)?;
        if self.is_shutting_down() {
            return Err(UpgradeRefused::ShuttingDown);
        }
        if shared.upgrading.swap(true, Ordering::AcqRel) {
            return Err(UpgradeRefused::InProgress);
        }
        match spawn_successor(shared, &command) {
            Ok((child, notify, passed)) => {
                let pid = child.id().unwrap_or_default();
                self.set_upgrade_state("upgrading", Some(pid), &command, None);
                tracing::info!(pid, binary = %command.binary.display(), "upgrade: the new process is starting");
                tokio::spawn(watch(self.clone(), command, child, notify, passed));
                Ok(pid)
            }
            Err(err) => {
                shared.upgrading.store(false, Ordering::Release);
                let refused = UpgradeRefused::Spawn(err);
                self.set_upgrade_state("failed", None, &command, Some(refused.to_string()));
                tracing::error!(error = %refused, "upgrade failed; still serving");
                Err(refused)
            }
        }
    }

    fn set_upgrade_state(
        &self,
        state: &'static str,
        pid: Option<u32>,
        command: &UpgradeCommand,
        error: Option<String>,
    ) {
        *lock(&self.shared.upgrade_state) = Some(UpgradeState {
            state,
            pid,
            binary: command.binary.display().to_string(),
            error,
        });
    }
}

/// The readiness socket, in a directory of its own (mode 0700: no other user can send
/// `READY=1` and make this process stop), removed when dropped.
struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    dir: PathBuf,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sockets handed to a successor.
type Passed = Vec<Arc<ListeningSocket>>;

fn spawn_successor(
    shared: &Arc<Shared>,
    command: &UpgradeCommand,
) -> Result<(tokio::process::Child, NotifySocket, Passed), String> {
    let notify =
        notify_socket().map_err(|err| format!("cannot make the readiness socket: {err}"))?;
    let mut names = Vec::new();
    let mut owned = Vec::new();
    let mut mappings = Vec::new();
    let mut passed = Vec::new();
    for slot in read(&shared.servers).iter() {
        let Some(listening) = slot.listening.get() else {
            continue;
        };
        let Some(fd) = listening.for_successor() else {
            continue;
        };
        if slot.state() != ServerState::Serving {
            continue;
        }
        names.push(slot.name().to_owned());
        if lock(&shared.adoption).owns(listening) {
            owned.push(slot.name().to_owned());
        }
        passed.push(Arc::clone(listening));
        let child_fd = 3 + i32::try_from(mappings.len()).unwrap_or(i32::MAX - 3);
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd,
        });
    }
    let mut child = tokio::process::Command::new(&command.binary);
    child
        .args(&command.args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD")
        // systemd's, naming this process: with it the successor would think the watchdog
        // is someone else's and never beat (sd_watchdog_enabled(3)).
        .env_remove("WATCHDOG_PID")
        .env("LISTEN_FDS", mappings.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(OWNED_VAR, owned.join(":"))
        .env(NOTIFY_VAR, notify.dir.join("notify"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    child
        .fd_mappings(mappings)
        .map_err(|_| "two sockets for one descriptor".to_owned())?;
    let child = child
        .spawn()
        .map_err(|err| format!("{}: {err}", command.binary.display()))?;
    Ok((child, notify, passed))
}

fn notify_socket() -> std::io::Result<NotifySocket> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "multi-server-upgrade-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let socket = tokio::net::UnixDatagram::bind(dir.join("notify"));
    match socket {
        Ok(socket) => Ok(NotifySocket { socket, dir }),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(err)
        }
    }
}

/// Waits for the successor to be ready, to exit, or to run out of time, and acts on it.
async fn watch(
    handle: ManagerHandle,
    command: UpgradeCommand,
    mut child: tokio::process::Child,
    notify: NotifySocket,
    passed: Passed,
) {
    let pid = child.id().unwrap_or_default();
    let started = Instant::now();
    let failure = tokio::select! {
        // A stop requested meanwhile wins over a successor that gets ready at the same
        // moment: the operator asked for no process at all.
        biased;
        () = handle.shared.shutdown.cancelled() => Some(format!(
            "this process is shutting down; the new process (pid {pid}) is stopped too"
        )),
        () = ready(&notify.socket) => None,
        status = child.wait() => Some(match status {
            Ok(status) => format!("the new process (pid {pid}) exited ({status}) before it was ready"),
            Err(err) => format!("cannot watch the new process (pid {pid}): {err}"),
        }),
                () = tokio::time::sleep(command.timeout) => Some(format!(
            "the new process (pid {pid}) was not ready within {:?}", command.timeout
        )),
    };
    drop(notify);
    let Some(error) = failure else {
        let ready_ms = started.elapsed().as_secs_f64() * 1e3;
        {
            let mut adoption = lock(&handle.shared.adoption);
            for socket in &passed {
                adoption.hand_over(socket);
            }
        }
        handle.set_upgrade_state("upgraded", Some(pid), &command, None);
        // The last word to systemd: the service is the successor now, and a STOPPING=1 or a
        // status from this process would be taken for its own (NotifyAccess=all).
        crate::systemd::send(vec![crate::systemd::Notice::MainPid(pid)], true);
        handle.request_shutdown(ShutdownReason::Upgraded { pid });
        tracing::info!(
            pid,
            ready_ms,
            "upgrade: the new process is ready; this one stops accepting and drains"
        );
        return;
    };
    tracing::error!(error, "upgrade failed; still serving");
    handle.set_upgrade_state("failed", Some(pid), &command, Some(error));
    stop(&handle, &mut child, pid).await;
    handle.shared.upgrading.store(false, Ordering::Release);
}

/// Resolves once a `READY=1` datagram arrives.
async fn ready(socket: &tokio::net::UnixDatagram) {
    let mut buf = vec![0; 4096];
    loop {
        let Ok(n) = socket.recv(&mut buf).await else {
            // A socket that fails cannot say ready: wait for the exit or the timeout.
            return std::future::pending().await;
        };
        if buf[..n]
            .split(|&b| b == b'\n')
            .any(|line| line == b"READY=1")
        {
            return;
        }
    }
}

/// Asks a successor that will not take over to stop, then kills it if it has not.
async fn stop(handle: &ManagerHandle, child: &mut tokio::process::Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    // Its stop, as it would take it: the drain delay, the deadline, its hooks (two of the
    // hook timeout, as a rule), and a margin.
    let grace = {
        let settings = lock(&handle.shared.settings);
        settings.drain_delay
            + settings.drain_deadline
            + 2 * settings.hook_timeout
            + Duration::from_secs(2)
    };
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(pid, "the failed new process did not stop; killing it");
        let _ = child.kill().await;
    }
}

/// Makes `socket` (handed over by the process this one upgraded, which had bound it) refuse
/// connections at this process's stop, once that process is gone: until then it serves on
/// the same socket, and a successor that fails and stops must not shut it under it.
pub(crate) fn adopt_when_predecessor_gone(shared: &Arc<Shared>, socket: &Arc<ListeningSocket>) {
    let mut adoption = lock(&shared.adoption);
    if adoption.predecessor_gone {
        socket.adopt();
        return;
    }
    adoption.waiting.push(Arc::clone(socket));
    if adoption.watching {
        return;
    }
    adoption.watching = true;
    let predecessor = std::os::unix::process::parent_id();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        // Its exit reparents this process: poll for that (50 ms; this ends with it).
        while std::os::unix::process::parent_id() == predecessor {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lock(&shared.adoption).predecessor_gone();
    });
}

/// Sockets waiting for the predecessor to be gone (see [`adopt_when_predecessor_gone`]).
#[derive(Debug, Default)]
pub(crate) struct Adoption {
    predecessor_gone: bool,
    watching: bool,
    waiting: Vec<Arc<ListeningSocket>>,
}

impl Adoption {
    /// Whether `socket` is this process's own, to hand a successor as such: bound here, or
    /// adopted, or waiting to be adopted. One still waiting counts: a process that upgrades
    /// again before its predecessor is gone would otherwise tell its successor the socket
    /// was inherited (systemd's), and the successor would never make it refuse at its stop.
    pub(crate) fn owns(&self, socket: &Arc<ListeningSocket>) -> bool {
        socket.refuses_at_stop() || self.waiting.iter().any(|w| Arc::ptr_eq(w, socket))
    }

    /// `socket` lives on in a successor now: this process's stop must not make it refuse,
    /// and neither may the predecessor's exit later (it no longer waits to be adopted).
    pub(crate) fn hand_over(&mut self, socket: &Arc<ListeningSocket>) {
        self.waiting.retain(|w| !Arc::ptr_eq(w, socket));
        socket.handed_over();
    }

    /// The predecessor is gone: every socket still waiting is this process's alone.
    fn predecessor_gone(&mut self) {
        self.predecessor_gone = true;
        for socket in self.waiting.drain(..) {
            socket.adopt();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::server::ListeningSocket;

    /// A socket inherited from a predecessor still running: it waits to be adopted.
    fn waiting(adoption: &mut super::Adoption) -> Arc<ListeningSocket> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = Arc::new(ListeningSocket::of(&listener, false));
        adoption.waiting.push(Arc::clone(&socket));
        socket
    }

    #[test]
    fn a_socket_waiting_to_be_adopted_is_handed_on_as_owned_and_not_adopted_once_handed() {
        let mut adoption = super::Adoption::default();
        let handed = waiting(&mut adoption);
        let kept = waiting(&mut adoption);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let systemds = Arc::new(ListeningSocket::of(&listener, false));
        // Upgrading again before the predecessor is gone: the waiting ones are ours to pass.
        assert!(adoption.owns(&handed) && adoption.owns(&kept));
        assert!(
            !adoption.owns(&systemds),
            "an inherited socket is its parent's"
        );

        // The successor took `handed`; then the predecessor goes.
        adoption.hand_over(&handed);
        adoption.predecessor_gone();
        assert!(
            !handed.refuses_at_stop(),
            "the successor's socket must not refuse here"
        );
        assert!(kept.refuses_at_stop(), "a socket not handed on is adopted");
        assert!(!adoption.owns(&handed));
        assert!(adoption.owns(&kept));
    }

    /// Only a whole `READY=1` line says ready: not a longer or prefixed word, nor one past
    /// the 4 KiB a datagram is read into (cut off, it cannot be seen).
    #[tokio::test]
    async fn only_a_ready_line_within_a_datagram_says_ready() {
        let (ours, theirs) = tokio::net::UnixDatagram::pair().unwrap();
        let mut oversized = vec![b'x'; 8192];
        oversized.extend_from_slice(b"\nREADY=1\n");
        for hostile in [
            &b"READY=10"[..],
            b"XREADY=1",
            b"READY=1 ",
            b"STATUS=READY=1",
            &oversized,
        ] {
            theirs.send(hostile).await.unwrap();
        }
        let waited = tokio::time::timeout(Duration::from_millis(200), super::ready(&ours)).await;
        assert!(waited.is_err(), "a hostile datagram said ready");
        theirs.send(b"STATUS=up\nREADY=1\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), super::ready(&ours))
            .await
            .expect("READY=1 on a line of its own says ready");
    }
}

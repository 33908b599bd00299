//! systemd's service notifications (`sd_notify(3)`), sent only when `NOTIFY_SOCKET` says a
//! service manager listens (a unit with `Type=notify`): `READY=1` once the process is live
//! (every required server due at start serves), a `STATUS=` line whenever a server's state
//! changes, `STOPPING=1` at the first step of shutdown, and `WATCHDOG=1` every half
//! `WATCHDOG_USEC` from a task on the runtime, so that a stalled runtime stops the heartbeat
//! and systemd restarts the process. Without `NOTIFY_SOCKET`: nothing at all, not even a task.

use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;

use crate::{ManagerHandle, ProcessState, ServerState};

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Stopping,
    Watchdog,
    Status(String),
    /// An upgrade's successor is the service's process now.
    MainPid(u32),
}

/// Whether a service manager listens, or a predecessor waits for this process to be ready
/// (an in-place upgrade).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        || std::env::var_os(crate::upgrade::NOTIFY_VAR).is_some()
}

/// What has been said, so that notices arrive in order and once: the status last sent, and
/// whether the stop (`STOPPING=1`) and the last word have been.
struct Said {
    status: String,
    stopping: bool,
    closed: bool,
}

static SAID: std::sync::Mutex<Said> = std::sync::Mutex::new(Said {
    status: String::new(),
    stopping: false,
    closed: false,
});

/// Sends `notices` as one datagram, at once or not at all: the socket is non-blocking, so a
/// service manager that does not read never holds a thread (sd-notify's own `notify` blocks,
/// hence this sender). The same status twice, `READY=1` after `STOPPING=1`, and anything
/// after the `last` word are left out; a failure is logged, never fatal.
pub(crate) fn send(notices: Vec<Notice>, last: bool) {
    let ready = notices.contains(&Notice::Ready);
    send_to_service_manager(notices, last);
    // The predecessor of an upgrade hears only that this process is ready, and after systemd
    // has: it then hands systemd this process's pid (MAINPID=), which is ready already.
    if ready
        && let Some(path) = std::env::var_os(crate::upgrade::NOTIFY_VAR)
        && let Err(err) = datagram(&path, b"READY=1\n")
    {
        tracing::warn!(error = %err, "cannot tell the process upgraded from that this one is ready");
    }
}

fn send_to_service_manager(mut notices: Vec<Notice>, last: bool) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.closed {
        return;
    }
    let stopping = said.stopping;
    notices.retain(|notice| match notice {
        Notice::Status(text) => *text != said.status,
        Notice::Ready => !stopping,
        _ => true,
    });
    said.closed = last;
    if notices.is_empty() {
        return;
    }
    let mut message = String::new();
    for notice in &notices {
        message.push_str(&match notice {
            Notice::Ready => "READY=1".to_owned(),
            Notice::Stopping => "STOPPING=1".to_owned(),
            Notice::Watchdog => "WATCHDOG=1".to_owned(),
            Notice::MainPid(pid) => format!("MAINPID={pid}"),
            // One line: a newline would start another assignment.
            Notice::Status(text) => format!("STATUS={}", text.replace('\n', " ")),
        });
        message.push('\n');
    }
    match datagram(&path, message.as_bytes()) {
        Ok(()) => {
            for notice in notices {
                match notice {
                    Notice::Status(text) => said.status = text,
                    Notice::Stopping => said.stopping = true,
                    _ => {}
                }
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
}

/// One non-blocking datagram to `path` (`@name`: an abstract socket, as systemd may give).
fn datagram(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let sent = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address)?
        }
        None => socket.send_to(message, path)?,
    };
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ))
    }
}

/// Starts the notifier of `handle`'s process (`READY=1`, `STATUS=`, `WATCHDOG=1`), if a
/// service manager listens. `STOPPING=1` is the manager's to send, at the moment it stops.
pub(crate) fn spawn(handle: ManagerHandle) -> Option<AbortOnDropHandle<()>> {
    // A new run of a manager (tests run several in one process) starts a new conversation.
    *SAID.lock().unwrap_or_else(|e| e.into_inner()) = Said {
        status: String::new(),
        stopping: false,
        closed: false,
    };
    // WATCHDOG_USEC=0 is no watchdog.
    let watchdog = sd_notify::watchdog_enabled().filter(|timeout| !timeout.is_zero());
    enabled().then(|| AbortOnDropHandle::new(tokio::spawn(notify(handle, watchdog))))
}

async fn notify(handle: ManagerHandle, watchdog: Option<Duration>) {
    let mut process = handle.watch_state();
    let mut servers = handle.shared.servers_changed.subscribe();
    // Half the timeout, as sd_watchdog_enabled(3) advises: one late tick is not a restart.
    let mut heartbeat = watchdog.map(|timeout| {
        let mut interval = tokio::time::interval((timeout / 2).max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut ready = false;
    let mut last_status = String::new();
    loop {
        let mut notices = Vec::new();
        process.borrow_and_update();
        // One snapshot for both: READY=1 goes with the status that says why.
        let info = handle.server_info();
        let status = status_of(&info);
        if status != last_status {
            notices.push(Notice::Status(status.clone()));
            last_status = status;
        }
        if !ready && info.state == ProcessState::Live {
            notices.push(Notice::Ready);
            ready = true;
        }
        send(notices, false);
        tokio::select! {
            changed = process.changed() => if changed.is_err() { return },
            changed = servers.changed() => if changed.is_err() { return },
            _ = async { heartbeat.as_mut().expect("checked").tick().await }, if heartbeat.is_some() => {
                send(vec![Notice::Watchdog], false);
            }
        }
    }
}

/// `STATUS=`: the process state, then each server's, e.g. `live: flows serving
/// 127.0.0.1:3400, reflection starting`.
pub(crate) fn status_line(handle: &ManagerHandle) -> String {
    status_of(&handle.server_info())
}

fn status_of(info: &crate::admin::ServerInfo) -> String {
    let process = crate::state::state_name(info.state);
    let servers: Vec<String> = info
        .servers
        .iter()
        .map(|server| {
            let state = format!("{:?}", server.state).to_lowercase();
            match (&server.address, server.state) {
                (Some(address), ServerState::Serving | ServerState::Draining) => {
                    format!("{} {state} {address}", server.name)
                }
                _ => format!("{} {state}", server.name),
            }
        })
        .collect();
    format!("{process}: {}", servers.join(", "))
}

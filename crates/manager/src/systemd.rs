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
}

/// Whether a service manager listens.
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `notices` as one datagram, on a blocking thread: a service manager that does not
/// read its socket must not stall a runtime worker, and the caller waits at most 1 s. A
/// failure is logged (each time), never fatal.
pub(crate) async fn send(mut notices: Vec<Notice>) {
    if !enabled() {
        return;
    }
    // The same status twice (the manager's at the stop and the notifier's) says nothing new.
    static LAST_STATUS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let status = notices.iter().find_map(|notice| match notice {
        Notice::Status(text) => Some(text.clone()),
        _ => None,
    });
    if let Some(status) = &status
        && *LAST_STATUS.lock().unwrap_or_else(|e| e.into_inner()) == *status
    {
        notices.retain(|notice| !matches!(notice, Notice::Status(_)));
    }
    if notices.is_empty() {
        return;
    }
    let sent = tokio::task::spawn_blocking(move || {
        let states: Vec<sd_notify::NotifyState<'_>> = notices
            .iter()
            .map(|notice| match notice {
                Notice::Ready => sd_notify::NotifyState::Ready,
                Notice::Stopping => sd_notify::NotifyState::Stopping,
                Notice::Watchdog => sd_notify::NotifyState::Watchdog,
                Notice::Status(text) => sd_notify::NotifyState::Status(text),
            })
            .collect();
        sd_notify::notify(&states)
    });
    // The stop waits for STOPPING=1, but not on a service manager that does not read.
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(Ok(()))) => {
            if let Some(status) = status {
                *LAST_STATUS.lock().unwrap_or_else(|e| e.into_inner()) = status;
            }
        }
        Ok(Ok(Err(err))) => {
            tracing::warn!(error = %err, "cannot notify systemd (NOTIFY_SOCKET)");
        }
        _ => tracing::warn!("systemd's notify socket did not take a message within 1 s"),
    }
}

/// How long the stop waits for one notification to be taken.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the notifier of `handle`'s process (`READY=1`, `STATUS=`, `WATCHDOG=1`), if a
/// service manager listens. `STOPPING=1` is the manager's to send, at the moment it stops.
pub(crate) fn spawn(handle: ManagerHandle) -> Option<AbortOnDropHandle<()>> {
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
        send(notices).await;
        tokio::select! {
            changed = process.changed() => if changed.is_err() { return },
            changed = servers.changed() => if changed.is_err() { return },
            _ = async { heartbeat.as_mut().expect("checked").tick().await }, if heartbeat.is_some() => {
                send(vec![Notice::Watchdog]).await;
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

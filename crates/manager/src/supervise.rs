//! One server's life: delay, bind, startup hook, serve, stop accepting, drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientContext};
use crate::error::Error;
use crate::server::Server;
use crate::server::{ListeningSocket, ServeContext};
use crate::shared::{Registration, Role, Shared, Slot, Started, fail, lock, set_state};
use crate::{ManagerHandle, ServerState};

/// How long a framework may take to unwind after the drain deadline before it is abandoned:
/// enough for one whose timers count whole seconds (actix) to drop what the deadline cut.
const FRAMEWORK_GRACE: Duration = Duration::from_millis(1500);

/// Starts one server, serves it until shutdown, and drains it within the deadline.
pub(crate) async fn supervise(shared: Arc<Shared>, Registration { slot, role }: Registration) {
    if !slot.config.start_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(slot.config.start_delay) => {}
            () = shared.shutdown.cancelled() => {
                set_state(&slot, ServerState::Stopped);
                return;
            }
        }
    }
    if shared.shutdown.is_cancelled() {
        set_state(&slot, ServerState::Stopped);
        return;
    }
    set_state(&slot, ServerState::Starting);
    match role {
        Role::Listens(server) => serve(shared, slot, server).await,
        Role::Dials(client) => run_client(shared, slot, client).await,
    }
}

/// A server: bind, startup hook, serve, stop accepting, drain.
async fn serve(shared: Arc<Shared>, slot: Arc<Slot>, server: Arc<dyn Server>) {
    let name = slot.name().to_owned();
    let (inherited, owned) = {
        let mut sockets = lock(&shared.inherited);
        (sockets.take(slot.index), sockets.owns(slot.name()))
    };
    // A socket from a service manager stays listening for its next process; one bound here
    // refuses connections once this one stops, and so does one the process this one upgraded
    // had bound, but only once that process is gone: until then it serves on it too (a
    // successor that fails must not shut the socket under it).
    let bound_here = inherited.is_none();
    let listener = match inherited {
        Some(Ok(listener)) => Ok(listener),
        Some(Err(source)) => Err(Error::Inherited {
            server: name.clone(),
            index: slot.index,
            source,
        }),
        None => crate::port::bind(&name, slot.config.host, &slot.config.ports),
    };
    let (listener, local_addr) = match listener.and_then(|l| {
        let addr = l.local_addr().map_err(|source| Error::Inherited {
            server: name.clone(),
            index: slot.index,
            source,
        })?;
        Ok((l, addr))
    }) {
        Ok(bound) => bound,
        Err(err) => return fail(&shared, &slot, err),
    };
    let _ = slot.addr.set(local_addr);
    // Whichever way this function returns (a failed startup hook too), our handle on the
    // socket goes, so the port is released.
    let listening = ReleaseOnDrop(Arc::new(ListeningSocket::of(&listener, bound_here)));
    let _ = slot.listening.set(Arc::clone(&listening.0));
    if owned {
        crate::upgrade::adopt_when_predecessor_gone(&shared, &listening.0);
    }

    let settings = lock(&shared.settings).clone();
    let ctx = ServeContext {
        name: Arc::clone(&slot.config.name),
        local_addr,
        stop_accepting: shared.stop_accepting.clone(),
        close_idle: CancellationToken::new(),
        done_accepting: CancellationToken::new(),
        drain_deadline: settings.drain_deadline,
        requests: Arc::clone(&slot.tracker),
        listening: Arc::clone(&listening.0),
        manager: ManagerHandle {
            shared: Arc::clone(&shared),
        },
    };
    match tokio::time::timeout(settings.hook_timeout, server.on_startup(&ctx)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            let source = err.into();
            return fail(
                &shared,
                &slot,
                Error::StartupHook {
                    server: name,
                    source,
                },
            );
        }
        Err(_) => {
            let timeout = settings.hook_timeout;
            let err = Error::HookTimeout {
                server: name,
                hook: "startup",
                timeout,
            };
            return fail(&shared, &slot, err);
        }
    }
    lock(&shared.started_servers).push(Started {
        slot: Arc::clone(&slot),
        server: Arc::clone(&server),
        ctx: ctx.clone(),
    });

    mark_serving(&shared, &slot);
    tracing::info!(server = name, framework = slot.framework, url = %format!("http://{local_addr}"), "serving");

    let close_idle = ctx.close_idle.clone();
    let done_accepting = ctx.done_accepting.clone();
    let accept_stop_lag = server.accept_stop_lag();
    let serve = tokio::spawn(Arc::clone(&server).serve(listener, ctx));
    let Some(serve) = until_stop(&shared, &slot, serve).await else {
        return;
    };
    let drain_started = Instant::now();
    // The stop sequence the server itself need not know: once it has stopped calling accept,
    // the socket refuses newcomers (instead of queueing them to be reset when it closes) and
    // responses ask keep-alive clients to close (not earlier: a client told to close
    // reconnects at once, and before the socket stops listening it would land in the
    // backlog); a moment later, idle connections close.
    let settle = shared
        .stop_plan
        .get()
        .expect("set before stop_accepting")
        .idle_settle;
    tokio::spawn({
        let tracker = Arc::clone(&slot.tracker);
        async move {
            let stopped = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(accept_stop_lag) => {}
                () = done_accepting.cancelled() => {}
            }
            listening.0.stop();
            tracker.close_connections();
            // Counted from the stop, not from the socket ceasing to listen: a connection
            // accepted until then has had the same moment to deliver its request either way.
            tokio::time::sleep(settle.saturating_sub(stopped.elapsed())).await;
            close_idle.cancel();
        }
    });
    finish_draining(&shared, &slot, serve, drain_started).await;
}

/// A client: run it until the stop, then let it drain within the deadline.
async fn run_client(shared: Arc<Shared>, slot: Arc<Slot>, client: Arc<dyn Client>) {
    let name = slot.name().to_owned();
    let settings = lock(&shared.settings).clone();
    let ctx = ClientContext {
        name: Arc::clone(&slot.config.name),
        stopping: shared.stop_accepting.clone(),
        drain_deadline: settings.drain_deadline,
        requests: Arc::clone(&slot.tracker),
        status: Arc::clone(&slot.status),
        changed: Arc::clone(&slot.changed),
        manager: ManagerHandle {
            shared: Arc::clone(&shared),
        },
    };
    mark_serving(&shared, &slot);
    let dials = slot.dials.as_deref().unwrap_or_default();
    tracing::info!(server = name, framework = slot.framework, dials, "running");

    let run = tokio::spawn(client.run(ctx));
    let Some(run) = until_stop(&shared, &slot, run).await else {
        return;
    };
    finish_draining(&shared, &slot, run, Instant::now()).await;
}

/// The slot serves from now on (a server listening, a client running): shown so, and the
/// process's liveness looked at again.
fn mark_serving(shared: &Arc<Shared>, slot: &Slot) {
    let _ = slot.serving_since.set(Instant::now());
    set_state(slot, ServerState::Serving);
    ManagerHandle {
        shared: Arc::clone(shared),
    }
    .update_liveness();
}

/// Waits for the stop, then marks the slot draining and hands its task back. A task that ends
/// first died (or, racing the stop, stopped): that is recorded, and `None` returned.
async fn until_stop(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    mut task: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let exited = tokio::select! {
        joined = &mut task => Some(joined),
        () = shared.stop_accepting.cancelled() => None,
    };
    let Some(joined) = exited else {
        set_state(slot, ServerState::Draining);
        return Some(task);
    };
    match exit_error(slot.name(), joined, shared.stop_accepting.is_cancelled()) {
        Some(err) => fail(shared, slot, err),
        None => set_state(slot, ServerState::Stopped),
    }
    None
}

/// Waits for a draining server's (or client's) task until the drain deadline, then for a
/// grace, and abandons it after that; records how it ended.
async fn finish_draining(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    mut serve: tokio::task::JoinHandle<anyhow::Result<()>>,
    drain_started: Instant,
) {
    let Some(joined) = join_within_deadline(shared, slot, &mut serve).await else {
        return;
    };
    if let Some(err) = exit_error(slot.name(), joined, true) {
        return fail(shared, slot, err);
    }
    set_state(slot, ServerState::Stopped);
    tracing::info!(
        server = slot.name(),
        drain_ms = drain_started.elapsed().as_secs_f64() * 1e3,
        served = slot.tracker.served(),
        "stopped"
    );
}

/// The drained task's outcome, or `None` when it outlived the deadline and the grace (then
/// it is aborted and recorded as a failure).
async fn join_within_deadline(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    serve: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Option<Result<anyhow::Result<()>, tokio::task::JoinError>> {
    let deadline = *shared.deadline.get().expect("set before stop_accepting");
    match tokio::time::timeout_at(deadline, &mut *serve).await {
        Ok(joined) => {
            // A framework that returns with requests still running has cut them; one whose
            // own deadline timer fired a moment before ours has dropped them already.
            if slot.tracker.in_flight() > 0 || slot.tracker.cut_by_deadline() > 0 {
                report_cut(slot);
            }
            Some(joined)
        }
        Err(_) => {
            report_cut(slot);
            match tokio::time::timeout(FRAMEWORK_GRACE, &mut *serve).await {
                Ok(joined) => Some(joined),
                Err(_) => {
                    serve.abort();
                    let err = Error::Unresponsive {
                        server: slot.name().to_owned(),
                        grace: FRAMEWORK_GRACE,
                    };
                    fail(shared, slot, err);
                    None
                }
            }
        }
    }
}

struct ReleaseOnDrop(Arc<ListeningSocket>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn report_cut(slot: &Slot) {
    let cut = slot.tracker.deadline_passed();
    if cut > 0 {
        tracing::warn!(
            server = slot.name(),
            cut,
            "drain deadline passed: requests cut"
        );
    }
}

/// The error a finished serve task stands for, if any. An `Ok` return is only an error when
/// shutdown had not been requested.
fn exit_error(
    name: &str,
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
    shutting_down: bool,
) -> Option<Error> {
    match joined {
        Ok(Ok(())) if shutting_down => None,
        Ok(Ok(())) => Some(Error::Exited {
            server: name.to_owned(),
        }),
        Ok(Err(err)) => Some(Error::Serve {
            server: name.to_owned(),
            source: err.into(),
        }),
        Err(join) if join.is_panic() => {
            let payload = join.into_panic();
            let message = panic_message(&*payload);
            Some(Error::Panicked {
                server: name.to_owned(),
                message,
            })
        }
        Err(_) => None,
    }
}

/// The message of a caught panic (`&str` or `String` payloads).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

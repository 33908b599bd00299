//! `GET /api/events`: the page's one live feed, as Server-Sent Events.
//!
//! Events: `servers` (the [`snapshot`](crate::api::snapshot) at once, then every second, at
//! every process state change, and 200 ms after requests), `request` (each finished or aborted request of every
//! server: the log tail), `trace` (each state of each flow run's trace), and `lagged` (how many
//! events a slow page missed). The stream ends, after one last `servers` event, when this
//! server stops accepting, so an open page never holds up a shutdown; the browser then
//! reconnects by itself (after the `retry` delay) if the process is still there.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manager::ProcessState;
use manager::requests::RequestEvent;
use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use salvo::{Depot, Response, handler};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::api::{snapshot, state};
use crate::server::{LongLived, State};

/// How often the servers snapshot is pushed.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How soon after a request the next snapshot goes out (its counters changed).
const SNAPSHOT_SOON: Duration = Duration::from_millis(200);
/// How long the browser waits before reconnecting a closed stream.
const RETRY_MS: u32 = 2000;

struct Feed {
    state: Arc<State>,
    requests: broadcast::Receiver<RequestEvent>,
    traces: broadcast::Receiver<std::sync::Arc<str>>,
    process: watch::Receiver<ProcessState>,
    next_snapshot: Instant,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Live,
    Done,
}

#[handler]
pub(crate) async fn events(depot: &mut Depot, res: &mut Response) {
    let state = state(depot);
    // The stream lasts as long as the page is open: counting it as in flight would hold the
    // drain and skew latency, so the request counts as answered once the headers go out.
    depot.insert_typed(LongLived);
    let manager = state.ctx().manager();
    let feed = Feed {
        requests: manager.subscribe_requests(),
        traces: state.registry.subscribe_traces(),
        process: manager.watch_state(),
        next_snapshot: Instant::now() + SNAPSHOT_EVERY,
        state,
        phase: Phase::Hello,
    };
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.status_code(StatusCode::OK);
    res.stream(futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((Ok::<_, Infallible>(frame), feed))
    }));
}

impl Feed {
    async fn next(&mut self) -> Option<Bytes> {
        match self.phase {
            Phase::Done => return None,
            Phase::Hello => {
                self.phase = Phase::Live;
                self.next_snapshot = Instant::now() + SNAPSHOT_EVERY;
                let mut frame = format!("retry: {RETRY_MS}\n\n");
                frame.push_str(&self.snapshot());
                return Some(frame.into());
            }
            Phase::Live => {}
        }
        let stop = self.state.ctx().stop_accepting().clone();
        let frame = tokio::select! {
            () = stop.cancelled() => {
                self.phase = Phase::Done;
                self.snapshot()
            }
            () = tokio::time::sleep_until(self.next_snapshot) => self.snapshot(),
            changed = self.process.changed() => {
                if changed.is_err() {
                    // The manager is gone: nothing more will happen.
                    self.phase = Phase::Done;
                }
                self.snapshot()
            }
            received = self.requests.recv() => match received {
                Ok(request) => {
                    // The counters just changed: show them soon rather than up to 1s later.
                    self.next_snapshot = self.next_snapshot.min(Instant::now() + SNAPSHOT_SOON);
                    event("request", &request)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    event("lagged", &json!({ "feed": "request", "missed": missed }))
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.phase = Phase::Done;
                    self.snapshot()
                }
            },
            received = self.traces.recv() => match received {
                // The state now; an update of a trace already evicted is an SSE comment.
                Ok(trace_id) => match self.state.registry.trace(&trace_id) {
                    Some(trace) => event("trace", &trace),
                    None => ":\n\n".to_owned(),
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    event("lagged", &json!({ "feed": "trace", "missed": missed }))
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.phase = Phase::Done;
                    self.snapshot()
                }
            },
        };
        Some(frame.into())
    }

    /// A `servers` event, and the next one due a full period later.
    fn snapshot(&mut self) -> String {
        self.next_snapshot = Instant::now() + SNAPSHOT_EVERY;
        event("servers", &snapshot(&self.state))
    }
}

/// One SSE frame. JSON never contains a raw newline, so one `data:` line suffices.
fn event(name: &str, data: &impl Serialize) -> String {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned());
    format!("event: {name}\ndata: {data}\n\n")
}

//! The last five minutes, one sample a second, for the page's charts: per server, requests per
//! second, p50 and p99 latency over that second (from the fine power-of-two microsecond
//! histogram of `/__serverz`, not the metrics' coarse buckets, most of which a dev box never
//! reaches), and requests in flight; per flow, runs and errors per second. Sampled by a task of
//! the server from the manager's counters, kept in a ring of [`SAMPLES`]: at most a few
//! hundred KiB, whatever the traffic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use manager::ManagerHandle;
use manager::requests::LatencyHistogram;
use serde::Serialize;

/// Samples kept: five minutes at one a second.
pub(crate) const SAMPLES: usize = 300;
/// Time between samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// One second of one server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerPoint {
    pub(crate) name: String,
    pub(crate) rps: f64,
    pub(crate) in_flight: usize,
    /// `None` when no request was answered in the second.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// One second of one flow.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FlowPoint {
    pub(crate) name: String,
    pub(crate) runs_per_s: f64,
    pub(crate) errors_per_s: f64,
    /// Since start.
    pub(crate) runs: u64,
    pub(crate) errors: u64,
}

/// One second.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// The end of the second, in milliseconds since the Unix epoch.
    pub(crate) at_ms: f64,
    pub(crate) servers: Vec<ServerPoint>,
    pub(crate) flows: Vec<FlowPoint>,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// The samples after `since_ms` (all with 0), oldest first.
    pub(crate) fn since(&self, since_ms: f64) -> Vec<Sample> {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|s| s.at_ms > since_ms)
            .cloned()
            .collect()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Totals at one moment, to take differences of (and the in-flight count then).
#[derive(Default)]
struct Totals {
    servers: BTreeMap<String, (u64, LatencyHistogram, usize)>,
    flows: BTreeMap<String, (u64, u64)>,
}

fn totals(manager: &ManagerHandle, registry: &flows::Registry) -> Totals {
    let servers = manager
        .request_trackers()
        .into_iter()
        .map(|(name, _, tracker)| {
            let totals = tracker.http_metrics().totals();
            let in_flight = tracker.in_flight();
            (name.to_string(), (totals.served, totals.latency, in_flight))
        })
        .collect();
    let flows = registry
        .flow_stats()
        .into_iter()
        .map(|(name, s)| (name, (s.runs, s.errors)))
        .collect();
    Totals { servers, flows }
}

/// Samples every [`INTERVAL`] into `history` until `stop` fires.
pub(crate) async fn sample(
    history: &History,
    ctx: &manager::ServeContext,
    registry: &flows::Registry,
) {
    let manager = ctx.manager().clone();
    let mut previous = totals(&manager, registry);
    let mut last = std::time::Instant::now();
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = ctx.stop_accepting().cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = totals(&manager, registry);
        let seconds = last.elapsed().as_secs_f64().max(1e-3);
        last = std::time::Instant::now();
        let servers = now
            .servers
            .iter()
            .map(|(name, (served, latency, in_flight))| {
                let (served_before, latency_before, _) =
                    previous.servers.get(name).cloned().unwrap_or_default();
                let second = latency.since(&latency_before);
                let ms = |q: f64| second.quantile(q).map(|d| d.as_secs_f64() * 1e3);
                ServerPoint {
                    name: name.clone(),
                    rps: served.saturating_sub(served_before) as f64 / seconds,
                    in_flight: *in_flight,
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                }
            })
            .collect();
        let flows = now
            .flows
            .iter()
            .map(|(name, (runs, errors))| {
                let (runs_before, errors_before) =
                    previous.flows.get(name).copied().unwrap_or_default();
                FlowPoint {
                    name: name.clone(),
                    runs_per_s: runs.saturating_sub(runs_before) as f64 / seconds,
                    errors_per_s: errors.saturating_sub(errors_before) as f64 / seconds,
                    runs: *runs,
                    errors: *errors,
                }
            })
            .collect();
        history.push(Sample {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
            servers,
            flows,
        });
        previous = now;
    }
}

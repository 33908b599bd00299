//! Per-flow run statistics: runs, errors and a duration histogram, counted when a run ends
//! (the `/__metrics` series of each flow, and the Developer UI's flow charts).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::record::{Outcome, RunRecord};
use crate::trace::lock;

/// The upper bounds, in seconds, of the duration histogram (the OpenTelemetry HTTP
/// conventions' buckets, which suit flows as well), and an implicit `+Inf`.
pub const FLOW_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// One flow's figures since the process started.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FlowStats {
    /// Runs that ended (any outcome, validation failures included).
    pub runs: u64,
    /// Runs that ended with an error (cancelled ones included).
    pub errors: u64,
    /// Runs per bucket of [`FLOW_DURATION_BUCKETS`] (not cumulative); the last is `+Inf`.
    pub buckets: [u64; FLOW_DURATION_BUCKETS.len() + 1],
    /// The sum of the run durations, in seconds.
    pub duration_seconds: f64,
}

/// Every flow's [`FlowStats`], by flow name (a name the program defined: bounded).
#[derive(Debug, Default)]
pub(crate) struct Stats(Mutex<BTreeMap<String, FlowStats>>);

impl Stats {
    /// Counts `record`, if it is a finished run.
    pub(crate) fn record(&self, record: &RunRecord) {
        let root = &record.root;
        if root.is_open() {
            return;
        }
        let failed = matches!(root.outcome, Some(Outcome::Failure(_)));
        let seconds = ((root.end_time - root.start_time) / 1e3).max(0.0);
        let bucket = FLOW_DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(FLOW_DURATION_BUCKETS.len());
        let mut stats = lock(&self.0);
        let flow = match stats.get_mut(&*root.name) {
            Some(flow) => flow,
            None => stats.entry(root.name.to_string()).or_default(),
        };
        flow.runs += 1;
        flow.errors += u64::from(failed);
        flow.buckets[bucket] += 1;
        flow.duration_seconds += seconds;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, FlowStats> {
        lock(&self.0).clone()
    }
}

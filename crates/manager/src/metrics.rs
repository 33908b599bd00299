//! Request metrics as the OpenTelemetry HTTP conventions define them: one duration histogram
//! per (method, status, route), recorded where each request ends, on memory the recording
//! thread owns.
//!
//! Recording is a lock that only one thread takes (its shard's) and a few adds: every thread
//! is given its own shard, as Envoy keeps thread-local stats, so that no cache line bounces
//! between cores on the request path. A scrape locks each shard in turn and merges them.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The upper bounds, in seconds, of `http.server.request.duration`'s buckets (the
/// OpenTelemetry HTTP semantic conventions' advice), and an implicit `+Inf`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Shards per server: enough that threads rarely share one (they are handed out in turn).
const SHARDS: usize = 16;

/// One series' labels. The method is a standard one or `_OTHER` and the route a template
/// the server declared (or empty): both bounded, whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// `http.request.method`: a standard method, or `_OTHER`.
    pub method: &'static str,
    /// `http.response.status_code`.
    pub status: u16,
    /// `http.route`: the matched route template; empty when no route matched.
    pub route: &'static str,
}

/// One series' counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Requests per bucket of [`DURATION_BUCKETS`] (not cumulative); the last slot is `+Inf`.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// The sum of the durations, in seconds.
    pub sum_seconds: f64,
    /// How many requests.
    pub count: u64,
}

impl Series {
    fn record(&mut self, seconds: f64) {
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    fn merge(&mut self, other: &Series) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// `(upper bound, count)` per bucket, `+Inf` last; counts not cumulative (the encoder
    /// adds them up).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

/// FNV-1a: the keys are a few small words, for which SipHash's flood resistance buys nothing
/// (clients cannot choose them: both the method and the route are from fixed lists).
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = hash;
    }
}

type SeriesMap = HashMap<SeriesKey, Series, BuildHasherDefault<Fnv>>;

/// A shard on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<SeriesMap>);

/// The request duration histograms of one server.
pub struct HttpMetrics {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, handed out in turn on its first request.
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_shard() -> usize {
    MY_SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

impl HttpMetrics {
    /// Records one answered request.
    pub(crate) fn record(&self, key: SeriesKey, duration: Duration) {
        let mut shard = self.shards[my_shard()]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.entry(key).or_default().record(duration.as_secs_f64());
    }

    /// Every series, merged across shards, in label order.
    pub fn snapshot(&self) -> Vec<(SeriesKey, Series)> {
        let mut merged: SeriesMap = SeriesMap::default();
        for shard in &self.shards {
            let shard = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (key, series) in shard.iter() {
                merged.entry(*key).or_default().merge(series);
            }
        }
        let mut all: Vec<_> = merged.into_iter().collect();
        all.sort_by_key(|(key, _)| *key);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_merge_across_threads_and_buckets_are_cumulative() {
        let metrics = std::sync::Arc::new(HttpMetrics::default());
        let key = SeriesKey {
            method: "GET",
            status: 200,
            route: "/greet",
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = std::sync::Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for ms in [1, 7, 300, 20_000] {
                        metrics.record(key, Duration::from_millis(ms));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 1);
        let series = &snapshot[0].1;
        assert_eq!(series.count, 16);
        assert!((series.sum_seconds - 4.0 * 20.308).abs() < 1e-9);
        let buckets = series.buckets();
        assert_eq!(buckets[0], (0.005, 4), "1 ms");
        assert_eq!(buckets[1], (0.01, 4), "7 ms");
        assert_eq!(buckets[7], (0.5, 4), "300 ms");
        assert_eq!(buckets[13], (10.0, 0));
        assert_eq!(buckets[14], (f64::INFINITY, 4), "20 s only in +Inf");
    }
}

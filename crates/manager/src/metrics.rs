//! Request metrics as the OpenTelemetry HTTP conventions define them: one duration histogram
//! per (method, status, route), recorded where each request ends, on memory the recording
//! thread owns.
//!
//! Recording is a lock and a few adds on one of 16 shards, handed to threads in turn on their
//! first request (as Envoy keeps thread-local stats): up to 16 recording threads each have a
//! shard of their own, so no cache line bounces between cores on the request path (more
//! threads share, correctly, behind the shard's lock). A scrape locks each shard in turn and merges them. The
//! per-server totals of `/__serverz` (served, 5xx, latency quantiles) live in the same shards;
//! the in-flight counts the drain waits on are sharded the same way (in `requests`).

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
pub(crate) const SHARDS: usize = 16;

/// One series' labels. The method is a standard one or `_OTHER` and the route a template
/// the server declared (or empty): both bounded, whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// The recording shards' key: a [`SeriesKey`] hashed and compared by the addresses of its
/// `&'static str`s, which come from fixed tables (the standard methods, the servers' route
/// templates), so a lookup costs a few instructions instead of hashing and comparing text.
/// The same text at two addresses makes two entries, merged by content at scrape time.
#[derive(Debug, Clone, Copy)]
struct ShardKey(SeriesKey);

impl PartialEq for ShardKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.status == b.status && std::ptr::eq(a.method, b.method) && std::ptr::eq(a.route, b.route)
    }
}

impl Eq for ShardKey {}

impl std::hash::Hash for ShardKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.method.as_ptr() as usize ^ self.0.route.len());
        state.write_usize(self.0.route.as_ptr() as usize);
        state.write_u16(self.0.status);
    }
}

/// FxHash's multiply-rotate over whole words: the keys are three words that clients cannot
/// choose (see [`ShardKey`]), for which SipHash's flood resistance buys nothing.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.add(u64::from(*byte));
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
}

type ShardMap = HashMap<ShardKey, usize, BuildHasherDefault<WordHasher>>;

/// What one shard holds: the series, and the per-server totals `/__serverz` shows.
#[derive(Default)]
struct ShardData {
    /// Where each key's series is in `series`.
    index: ShardMap,
    series: Vec<Series>,
    /// The key recorded last and its place: a thread's requests mostly repeat the series
    /// before, whose check is a few compares where the map's lookup cost ~70 instructions
    /// (callgrind).
    last: Option<(ShardKey, usize)>,
    totals: Totals,
}

impl ShardData {
    fn series_of(&mut self, key: ShardKey) -> &mut Series {
        let at = match self.last {
            Some((last, at)) if last == key => at,
            _ => {
                let next = self.series.len();
                let at = *self.index.entry(key).or_insert(next);
                if at == next {
                    self.series.push(Series::default());
                }
                self.last = Some((key, at));
                at
            }
        };
        &mut self.series[at]
    }
}

/// A server's answered requests, merged from its shards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests answered (any status).
    pub served: u64,
    /// Requests answered with a 5xx status.
    pub server_errors: u64,
    /// Their latencies, in power-of-two buckets (fine-grained quantiles for `/__serverz`).
    pub latency: crate::requests::LatencyHistogram,
}

/// A shard on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<ShardData>);

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

pub(crate) fn my_shard() -> usize {
    MY_SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

impl HttpMetrics {
    /// Records one answered request, in this thread's shard.
    #[cfg(test)]
    pub(crate) fn record(&self, key: SeriesKey, duration: Duration) {
        self.record_in(my_shard(), key, duration);
    }

    /// Records one answered request in `shard`: the [`my_shard`] of the thread that began it,
    /// which its guard holds (the finishing thread's too, unless a work-stealing runtime moved
    /// the request; the shard's lock keeps that correct).
    pub(crate) fn record_in(&self, shard: usize, key: SeriesKey, duration: Duration) {
        let mut shard = self.shards[shard % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard
            .series_of(ShardKey(key))
            .record(duration.as_secs_f64());
        let totals = &mut shard.totals;
        totals.served += 1;
        totals.server_errors += u64::from(key.status >= 500);
        totals.latency.record(duration);
    }

    /// The server's totals, merged across shards.
    pub fn totals(&self) -> Totals {
        let mut all = Totals::default();
        for shard in &self.shards {
            let shard = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            all.served += shard.totals.served;
            all.server_errors += shard.totals.server_errors;
            all.latency.merge(&shard.totals.latency);
        }
        all
    }

    /// Every series, merged across shards, in label order.
    pub fn snapshot(&self) -> Vec<(SeriesKey, Series)> {
        let mut merged: std::collections::BTreeMap<SeriesKey, Series> = Default::default();
        for shard in &self.shards {
            let shard = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (key, &at) in &shard.index {
                merged.entry(key.0).or_default().merge(&shard.series[at]);
            }
        }
        merged.into_iter().collect()
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

        // The same route text at another address is the same series once merged.
        let elsewhere: &'static str = Box::leak("/greet".to_owned().into_boxed_str());
        metrics.record(
            SeriesKey {
                route: elsewhere,
                ..key
            },
            Duration::from_millis(1),
        );
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].1.count, 17);
    }

    /// One shard's series keep their own counts whichever key came before (the last key's
    /// shortcut), in runs and interleaved.
    #[test]
    fn interleaved_keys_in_one_shard_keep_their_own_series() {
        let metrics = HttpMetrics::default();
        let keys: Vec<SeriesKey> = [(200, "/a"), (404, "/a"), (200, "/b"), (500, "")]
            .into_iter()
            .map(|(status, route)| SeriesKey {
                method: "GET",
                status,
                route,
            })
            .collect();
        // Each key its own duration (so its own bucket) and its own count: series swapped
        // between keys would show in either.
        let durations = [1, 7, 300, 20_000].map(Duration::from_millis);
        let buckets = [0, 1, 7, DURATION_BUCKETS.len()];
        let runs = [3_usize, 7, 11, 19];
        let mut expected = [0_u64; 4];
        let mut record = |which: usize| {
            metrics.record_in(3, keys[which], durations[which]);
            expected[which] += 1;
        };
        // Runs of one key, then a step that visits them in the order 0, 3, 2, 1, then 0, 1,
        // 2, 3.
        for (which, &run) in runs.iter().enumerate() {
            (0..run).for_each(|_| record(which));
        }
        (0..80_usize).for_each(|n| record((n * 3) % 4));
        (0..40_usize).for_each(|n| record(n % 4));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 4);
        for (key, series) in &snapshot {
            let which = keys.iter().position(|k| k == key).unwrap();
            assert_eq!(series.count, expected[which], "{key:?}");
            assert_eq!(series.buckets[buckets[which]], expected[which], "{key:?}");
            let seconds = durations[which].as_secs_f64() * expected[which] as f64;
            assert!((series.sum_seconds - seconds).abs() < 1e-9, "{key:?}");
        }
        let served: u64 = expected.iter().sum();
        assert_eq!(metrics.totals().served, served);
        assert_eq!(metrics.totals().server_errors, expected[3]);
    }
}

//! Per-server request accounting: in-flight count, totals, latency histogram, the one log
//! line each request gets, and the live feed of finished requests.
//!
//! Frameworks do not say whether their drain deadline cut requests, and actix notices an idle
//! server only once a second, so every request is wrapped (by the edge crate) in a
//! [`RequestGuard`]. The guard is what lets the manager stop an idle server at once and report
//! the requests a deadline cut.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use tokio::sync::Notify;

use crate::clock::Monotonic;

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Request ids a thread takes from [`NEXT_REQUEST_ID`] at a time, so that the shared counter's
/// cache line is touched once per this many requests instead of bouncing between the cores on
/// every one (ids stay process-unique; across threads they are no longer in order).
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's next request id and the end of its block.
    static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn next_request_id() -> u64 {
    IDS.with(|ids| {
        let (next, end) = ids.get();
        if next < end {
            ids.set((next + 1, end));
            return next;
        }
        let start = NEXT_REQUEST_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
        ids.set((start + 1, start + ID_BLOCK));
        start
    })
}

/// One thread's count of requests begun and not yet finished, on a cache line of its own.
#[repr(align(128))]
#[derive(Debug, Default)]
struct InFlight(AtomicUsize);

/// Counts the requests of one server. Shared by the server's middleware and the manager.
///
/// Each request's guard holds a handle of its thread's shard, not the tracker: a reference
/// count every serving thread changed on every request would move one cache line between the
/// cores twice a request, and the tracker's other fields with it (perf under `wrk` on two
/// cores, this change and actix's per-worker edge measured together: the metrics record,
/// which reads those fields, fell from 229 to 135 samples per million requests).
#[derive(Debug)]
pub struct RequestTracker {
    state: Arc<TrackerState>,
    /// One per in-flight shard, each on a cache line of its own.
    handles: Box<[Arc<ShardHandle>]>,
}

/// What a [`RequestGuard`] holds: the shared state and the shard that counts it. Threads of
/// the same shard share it; others never touch its reference count.
#[repr(align(128))]
#[derive(Debug)]
struct ShardHandle {
    state: Arc<TrackerState>,
    shard: usize,
}

#[derive(Debug)]
struct TrackerState {
    server: Arc<str>,
    /// Per-thread shards (the metrics' [`my_shard`](crate::metrics::my_shard)): a request is
    /// counted in the shard of the thread that began it and uncounted there, wherever it
    /// ends, so no shard goes below zero and a sum read shard by shard is never zero while a
    /// request is in flight.
    in_flight: Box<[InFlight]>,
    aborted: AtomicU64,
    cut_by_deadline: AtomicU64,
    drain_started: AtomicBool,
    closing: AtomicBool,
    deadline_passed: AtomicBool,
    /// When the drain deadline falls, once draining started. Frameworks enforce the same
    /// deadline with their own timers, which may fire a moment before the manager's: a
    /// request dropped unanswered at or after this instant was cut by the deadline.
    deadline: std::sync::OnceLock<tokio::time::Instant>,
    idle: Notify,
    /// Answered requests: counts, 5xx, latencies, series, in per-thread shards.
    http: crate::metrics::HttpMetrics,
    feed: Arc<RequestFeed>,
}

impl RequestTracker {
    pub(crate) fn new(server: Arc<str>, feed: Arc<RequestFeed>) -> Self {
        let state = Arc::new(TrackerState {
            feed,
            server,
            in_flight: (0..crate::metrics::SHARDS)
                .map(|_| InFlight::default())
                .collect(),
            aborted: AtomicU64::new(0),
            cut_by_deadline: AtomicU64::new(0),
            drain_started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            deadline_passed: AtomicBool::new(false),
            deadline: std::sync::OnceLock::new(),
            idle: Notify::new(),
            http: crate::metrics::HttpMetrics::default(),
        });
        let handles = (0..crate::metrics::SHARDS)
            .map(|shard| {
                Arc::new(ShardHandle {
                    state: Arc::clone(&state),
                    shard,
                })
            })
            .collect();
        RequestTracker { state, handles }
    }

    /// Starts accounting for one request; call [`RequestGuard::finish`] with the status when the
    /// response is ready. A guard dropped without `finish` is logged as aborted.
    pub fn begin(&self, method: &str, path: &str) -> RequestGuard {
        let shard = crate::metrics::my_shard();
        self.state.in_flight[shard].0.fetch_add(1, Ordering::SeqCst);
        RequestGuard {
            handle: Arc::clone(&self.handles[shard]),
            id: next_request_id(),
            method: static_method(method)
                .map_or_else(|| Cow::Owned(method.to_owned()), Cow::Borrowed),
            path: CompactString::new(path),
            route: "",
            started: Monotonic::now(),
            finished: false,
        }
    }

    /// Requests that have begun and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// Requests answered (any status).
    pub fn served(&self) -> u64 {
        self.state.http.totals().served
    }

    /// Requests answered with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.state.http.totals().server_errors
    }

    /// Requests that ended without a response (client gone, or cut by the drain deadline).
    pub fn aborted(&self) -> u64 {
        self.state.aborted.load(Ordering::Relaxed)
    }

    /// Requests cut by the drain deadline: dropped unanswered once it had passed, plus any
    /// still in flight after it.
    pub fn cut_by_deadline(&self) -> u64 {
        self.state.cut_by_deadline()
    }

    /// True from the start of the drain delay (when there is one), else once the server's
    /// socket has stopped listening: responses must now ask clients to close their connection
    /// (`Connection: close`). With no delay not earlier: a client told to close reconnects at
    /// once, and before the socket stops listening that new connection would wait in the
    /// backlog only to be reset; from then on it is refused and the client can go elsewhere.
    pub fn closes_connections(&self) -> bool {
        self.state.closes_connections()
    }

    /// The latency histogram of answered requests, now.
    pub fn latency(&self) -> LatencyHistogram {
        self.state.http.totals().latency
    }

    /// The duration histograms per method, status and route (`/__metrics`).
    pub fn http_metrics(&self) -> &crate::metrics::HttpMetrics {
        &self.state.http
    }

    pub(crate) fn close_connections(&self) {
        self.state.closing.store(true, Ordering::Relaxed);
    }

    pub(crate) fn start_draining_until(&self, deadline: tokio::time::Instant) {
        let _ = self.state.deadline.set(deadline);
        self.start_draining();
    }

    pub(crate) fn start_draining(&self) {
        self.state.drain_started.store(true, Ordering::SeqCst);
    }

    /// Records that the drain deadline passed; returns how many requests it has cut.
    pub(crate) fn deadline_passed(&self) -> u64 {
        self.state.deadline_passed.store(true, Ordering::SeqCst);
        self.cut_by_deadline()
    }

    /// Resolves once no request is in flight. Only meaningful after draining started, since
    /// only then does the tracker wake waiters.
    ///
    /// # Cancellation safety
    /// Cancel-safe: it holds no state between polls.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl TrackerState {
    fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }

    fn cut_by_deadline(&self) -> u64 {
        let still_running = if self.deadline_passed.load(Ordering::SeqCst) {
            self.in_flight() as u64
        } else {
            0
        };
        self.cut_by_deadline.load(Ordering::Relaxed) + still_running
    }

    fn is_past_deadline(&self) -> bool {
        self.deadline_passed.load(Ordering::SeqCst)
            || self
                .deadline
                .get()
                .is_some_and(|deadline| tokio::time::Instant::now() >= *deadline)
    }

    fn closes_connections(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    fn end(&self, shard: usize) {
        // SeqCst on both sides pairs with start_draining + wait_idle: either the waiter sees
        // the count reach zero or this side sees the draining flag and wakes it. The sum is
        // read only while draining.
        self.in_flight[shard].0.fetch_sub(1, Ordering::SeqCst);
        if self.drain_started.load(Ordering::SeqCst) && self.in_flight() == 0 {
            self.idle.notify_waiters();
        }
    }
}

/// One answered request, as its log line says it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The server's name: the same `Arc` on every line of one server, so that a log may keep
    /// what it formats of it, keyed by the address (which the `Arc` it keeps holds on to).
    pub server: &'a Arc<str>,
    /// The process-unique request id.
    pub id: u64,
    /// The method as sent.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The status answered.
    pub status: u16,
    /// From the start of the request to its answer's end.
    pub latency: Duration,
}

/// Writes the one log line of each answered request, in place of the `tracing` event
/// (`target: "request"`, fields `server id method path status latency_ms`) the manager emits
/// otherwise: `tracing`'s field machinery costs more than the line (some 7,000 instructions a
/// request, callgrind), so a program that formats its own lines installs one with
/// [`set_request_log`]. It must never wait (a stalled output drops lines, it does not hold a
/// serving thread).
pub trait RequestLog: Send + Sync + 'static {
    /// Whether request lines are wanted at all (the log filter's answer for `request` at
    /// `INFO`, taken once).
    fn enabled(&self) -> bool;
    /// Writes one line.
    fn write(&self, line: &RequestLine<'_>);
}

static REQUEST_LOG: std::sync::OnceLock<Box<dyn RequestLog>> = std::sync::OnceLock::new();

/// Installs the process's request logger (once; later calls are ignored, and say so).
pub fn set_request_log(log: impl RequestLog) -> bool {
    REQUEST_LOG.set(Box::new(log)).is_ok()
}

/// One request in flight. Log line and counters are written when it is finished or dropped.
#[derive(Debug)]
#[must_use = "a guard dropped at once logs the request as aborted"]
pub struct RequestGuard {
    handle: Arc<ShardHandle>,
    id: u64,
    method: Cow<'static, str>,
    /// Inline up to 24 bytes (most paths): no allocation per request.
    path: CompactString,
    route: &'static str,
    started: Monotonic,
    finished: bool,
}

impl RequestGuard {
    /// The process-unique request id (also sent back as `x-request-id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The name of the server it came to.
    pub fn server(&self) -> &str {
        &self.handle.state.server
    }

    /// Whether the response must ask the client to close the connection (the server's
    /// socket has stopped listening: see [`RequestTracker::closes_connections`]).
    pub fn closes_connection(&self) -> bool {
        self.handle.state.closes_connections()
    }

    /// The route template the request matched (e.g. `/flow/{name}`), its `http_route` label
    /// in the metrics: one of a list the server declared, never the raw path, so a scan of
    /// random paths adds no series. Unset: no route matched.
    pub fn set_route(&mut self, route: &'static str) {
        self.route = route;
    }

    /// Records the response status and logs the request.
    pub fn finish(mut self, status: u16) {
        self.finished = true;
        let tracker = &*self.handle.state;
        let latency = self.started.elapsed();
        let method = match &self.method {
            Cow::Borrowed(method) => method,
            Cow::Owned(_) => "_OTHER",
        };
        let key = crate::metrics::SeriesKey {
            method,
            status,
            route: self.route,
        };
        tracker.http.record_in(self.handle.shard, key, latency);
        let line = RequestLine {
            server: &tracker.server,
            id: self.id,
            method: &self.method,
            path: &self.path,
            status,
            latency,
        };
        match REQUEST_LOG.get() {
            Some(log) => {
                if log.enabled() {
                    log.write(&line);
                }
            }
            None => tracing::info!(
                target: "request",
                server = &**line.server,
                id = line.id,
                method = line.method,
                path = line.path,
                status,
                latency_ms = latency.as_secs_f64() * 1e3,
            ),
        }
        // After the log line: the event takes the method and path.
        tracker.feed.publish(|| RequestEvent {
            server: tracker.server.to_string(),
            id: self.id,
            method: std::mem::take(&mut self.method).into_owned(),
            path: feed_path(&self.path),
            status: Some(status),
            aborted: None,
            latency_ms: latency.as_secs_f64() * 1e3,
            at_ms: epoch_ms(),
        });
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.finished {
            let tracker = &*self.handle.state;
            tracker.aborted.fetch_add(1, Ordering::Relaxed);
            let reason = if tracker.is_past_deadline() {
                tracker.cut_by_deadline.fetch_add(1, Ordering::Relaxed);
                "drain deadline"
            } else {
                "client gone"
            };
            let latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
            tracing::warn!(
                target: "request",
                server = &*tracker.server,
                id = self.id,
                method = &*self.method,
                path = &*self.path,
                status = "aborted",
                reason,
                latency_ms,
            );
            tracker.feed.publish(|| RequestEvent {
                server: tracker.server.to_string(),
                id: self.id,
                method: std::mem::take(&mut self.method).into_owned(),
                path: feed_path(&self.path),
                status: None,
                aborted: Some(reason),
                latency_ms,
                at_ms: epoch_ms(),
            });
        }
        self.handle.state.end(self.handle.shard);
    }
}

/// The most of a path the live feed carries: its ring holds 1024 events for a slow
/// subscriber, and request heads may be hundreds of KiB.
const FEED_PATH_BYTES: usize = 512;

/// `path`, cut to [`FEED_PATH_BYTES`] on a character boundary with a `…` marker.
fn feed_path(path: &str) -> String {
    if path.len() <= FEED_PATH_BYTES {
        return path.to_owned();
    }
    let end = path.floor_char_boundary(FEED_PATH_BYTES);
    format!("{}…", &path[..end])
}

/// The standard methods as `&'static str`, so the common case allocates nothing.
fn static_method(method: &str) -> Option<&'static str> {
    const METHODS: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    METHODS.into_iter().find(|m| *m == method)
}

/// One finished (or aborted) request, as the live request feed carries it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestEvent {
    /// The server that handled it.
    pub server: String,
    /// Process-unique request id.
    pub id: u64,
    /// HTTP method.
    pub method: String,
    /// Request path (no query string).
    pub path: String,
    /// Response status; `None` when the request was aborted.
    pub status: Option<u16>,
    /// Why it was aborted: `"client gone"` or `"drain deadline"`.
    pub aborted: Option<&'static str>,
    /// Time to the response (or to the abort), milliseconds.
    pub latency_ms: f64,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: f64,
}

/// The process-wide feed of [`RequestEvent`]s. Costs nothing while nobody subscribes: a
/// production process without a Dev UI never builds an event, and once the last subscriber
/// has gone (the Dev UI's tab closed) the next request stops them again.
#[derive(Debug)]
pub(crate) struct RequestFeed {
    sender: tokio::sync::broadcast::Sender<RequestEvent>,
    /// Whether a subscriber may be listening: set on each subscribe, cleared by the first
    /// event that found none.
    subscribed: AtomicBool,
}

impl Default for RequestFeed {
    fn default() -> Self {
        RequestFeed {
            sender: tokio::sync::broadcast::channel(1024).0,
            subscribed: AtomicBool::new(false),
        }
    }
}

impl RequestFeed {
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RequestEvent> {
        // After the receiver exists. `subscribe`, `send` and `receiver_count` all take the
        // channel's lock, which orders them: a publisher that cleared the flag either counts
        // this receiver, or counted before it existed, and then this store comes after the
        // clear. (A publisher on another thread may skip an event in that moment.)
        let receiver = self.sender.subscribe();
        self.subscribed.store(true, Ordering::SeqCst);
        receiver
    }

    /// Sends the event while someone may be listening. An event nobody received (its
    /// builder's strings and the channel's lock: ~850 instructions a request on actix
    /// `/greet`, callgrind) clears the flag, unless a subscriber came meanwhile.
    fn publish(&self, event: impl FnOnce() -> RequestEvent) {
        if self.subscribed.load(Ordering::Relaxed) && self.sender.send(event()).is_err() {
            self.subscribed.store(false, Ordering::SeqCst);
            if self.sender.receiver_count() > 0 {
                self.subscribed.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn epoch_ms() -> f64 {
    crate::clock::since_epoch().as_secs_f64() * 1e3
}

pub(crate) const BUCKETS: usize = 40;

/// A latency histogram with power-of-two microsecond buckets: bucket `i` holds latencies in
/// `[2^i, 2^(i+1))` µs. Quantiles are reported as the bucket's geometric middle, which is
/// within ±41% of the true value: enough to tell 1 ms from 10 ms on a dashboard. Recorded in
/// the per-thread shards of [`HttpMetrics`](crate::metrics::HttpMetrics), merged when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub(crate) buckets: [u64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [0; BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// Adds one observation.
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().max(1) as u64;
        let bucket = (63 - micros.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket] += 1;
    }

    /// The observations since `earlier` (a snapshot of the same histogram taken before).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut delta = self.clone();
        for (now, before) in delta.buckets.iter_mut().zip(earlier.buckets) {
            *now = now.saturating_sub(before);
        }
        delta
    }

    pub(crate) fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }

    /// The approximate `q`-quantile (0.0..=1.0), or `None` before the first observation.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let middle = (1u64 << i) as f64 * std::f64::consts::SQRT_2;
                return Some(Duration::from_nanos((middle * 1e3) as u64));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Arc<RequestTracker> {
        Arc::new(RequestTracker::new("t".into(), Arc::default()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_end_on_another_thread_are_counted_once_and_wake_the_drain() {
        let tracker = tracker();
        // Begun on threads of their own (each its own in-flight shard and id block), ended
        // here.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tracker = Arc::clone(&tracker);
                std::thread::spawn(move || -> Vec<RequestGuard> {
                    (0..3).map(|_| tracker.begin("GET", "/x")).collect()
                })
            })
            .collect();
        let guards: Vec<RequestGuard> = threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect();
        assert_eq!(tracker.in_flight(), 12);
        let ids: std::collections::BTreeSet<u64> = guards.iter().map(RequestGuard::id).collect();
        assert_eq!(ids.len(), 12, "ids are unique across threads: {ids:?}");
        tracker.start_draining();
        let idle = tokio::spawn({
            let tracker = Arc::clone(&tracker);
            async move { tracker.wait_idle().await }
        });
        let mut guards = guards.into_iter();
        for guard in guards.by_ref().take(11) {
            guard.finish(200);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!idle.is_finished(), "one request is still in flight");
        assert_eq!(tracker.in_flight(), 1);
        guards.for_each(|guard| guard.finish(200));
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("the last request to end wakes the drain")
            .unwrap();
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.served(), 12);
    }

    #[test]
    fn a_histogram_since_an_earlier_snapshot_holds_only_the_new_observations() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(100));
        let earlier = h.clone();
        for _ in 0..3 {
            h.record(Duration::from_millis(50));
        }
        let second = h.since(&earlier);
        assert_eq!(second.buckets.iter().sum::<u64>(), 3);
        let p50 = second.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_millis(30) && p50 < Duration::from_millis(70),
            "{p50:?}"
        );
        assert_eq!(h.since(&h).quantile(0.5), None);
    }

    #[test]
    fn counts_finished_and_aborted_requests() {
        let t = tracker();
        let a = t.begin("GET", "/a");
        let b = t.begin("GET", "/b");
        let c = t.begin("GET", "/c");
        assert_ne!(a.id(), b.id());
        assert_eq!(t.in_flight(), 3);
        a.finish(200);
        b.finish(503);
        drop(c);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.served(), 2);
        assert_eq!(t.server_errors(), 1);
        assert_eq!(t.aborted(), 1);
    }

    #[test]
    fn guards_hold_their_shard_not_the_shared_state_and_may_outlive_the_tracker() {
        let feed = Arc::new(RequestFeed::default());
        let t = RequestTracker::new("t".into(), Arc::clone(&feed));
        let shared = Arc::strong_count(&t.state);
        let handle = Arc::clone(&t.handles[crate::metrics::my_shard()]);
        let handle_count = Arc::strong_count(&handle);
        let guards: Vec<_> = (0..3).map(|_| t.begin("GET", "/a")).collect();
        assert_eq!(
            Arc::strong_count(&t.state),
            shared,
            "no request changes the count every thread shares"
        );
        assert_eq!(Arc::strong_count(&handle), handle_count + 3);
        let mut rx = feed.subscribe();
        let counts = Arc::clone(&t.state);
        drop(t);
        let mut guards = guards.into_iter();
        guards.next().unwrap().finish(200);
        drop(guards);
        assert_eq!(counts.in_flight(), 0);
        assert_eq!(counts.http.totals().served, 1);
        assert_eq!(counts.aborted.load(Ordering::Relaxed), 2);
        assert_eq!(rx.try_recv().unwrap().status, Some(200));
        assert_eq!(rx.try_recv().unwrap().aborted, Some("client gone"));
    }

    #[test]
    fn the_feed_carries_finished_and_aborted_requests_once_subscribed() {
        let feed = Arc::new(RequestFeed::default());
        let t = Arc::new(RequestTracker::new("t".into(), Arc::clone(&feed)));
        t.begin("GET", "/unseen").finish(200);
        let mut rx = feed.subscribe();
        t.begin("GET", "/a").finish(201);
        drop(t.begin("POST", "/b"));
        let a = rx.try_recv().unwrap();
        assert_eq!(
            (a.server.as_str(), a.method.as_str(), a.path.as_str()),
            ("t", "GET", "/a")
        );
        assert_eq!(a.status, Some(201));
        let b = rx.try_recv().unwrap();
        assert_eq!(
            (b.path.as_str(), b.status, b.aborted),
            ("/b", None, Some("client gone"))
        );
        assert!(
            rx.try_recv().is_err(),
            "the request before subscribing is not replayed"
        );
    }

    /// Once the last subscriber has gone, requests build no events; a new subscriber gets
    /// them again from the next request on (one thread: the re-set for a subscriber that
    /// comes between a failed send and the count is not reached here).
    #[test]
    fn the_feed_stops_when_its_last_subscriber_goes_and_starts_again() {
        let feed = Arc::new(RequestFeed::default());
        let t = Arc::new(RequestTracker::new("t".into(), Arc::clone(&feed)));
        let first = feed.subscribe();
        let second = feed.subscribe();
        drop(first);
        t.begin("GET", "/one-left").finish(200);
        assert!(
            feed.subscribed.load(Ordering::SeqCst),
            "one subscriber is left"
        );
        drop(second);
        t.begin("GET", "/none-left").finish(200);
        assert!(!feed.subscribed.load(Ordering::SeqCst));
        feed.publish(|| unreachable!("no event is built with nobody subscribed"));
        let mut again = feed.subscribe();
        t.begin("GET", "/again").finish(200);
        assert_eq!(again.try_recv().unwrap().path, "/again");
    }

    #[test]
    fn the_feed_carries_at_most_512_bytes_of_a_path() {
        let feed = Arc::new(RequestFeed::default());
        let t = Arc::new(RequestTracker::new("t".into(), Arc::clone(&feed)));
        let mut rx = feed.subscribe();
        let long = format!("/{}", "é".repeat(1000));
        t.begin("GET", &long).finish(200);
        let event = rx.try_recv().unwrap();
        assert!(
            event.path.len() <= FEED_PATH_BYTES + '…'.len_utf8(),
            "{}",
            event.path.len()
        );
        assert!(event.path.ends_with('…') && long.starts_with(event.path.trim_end_matches('…')));
    }

    #[test]
    fn deadline_counts_what_is_still_in_flight() {
        let t = tracker();
        let slow = t.begin("GET", "/slow");
        t.begin("GET", "/fast").finish(200);
        assert_eq!(t.deadline_passed(), 1);
        assert_eq!(t.cut_by_deadline(), 1);
        drop(slow);
        assert_eq!(t.aborted(), 1);
    }

    /// A framework's own deadline timer may fire a moment before the manager's: a request it
    /// drops once the deadline instant has passed is still counted as cut.
    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_after_the_deadline_instant_counts_as_cut() {
        let t = tracker();
        let early = t.begin("GET", "/early");
        let late = t.begin("GET", "/late");
        t.start_draining_until(tokio::time::Instant::now() + Duration::from_millis(300));
        drop(early);
        assert_eq!(
            t.cut_by_deadline(),
            0,
            "dropped before the deadline: client gone"
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        drop(late);
        assert_eq!(t.cut_by_deadline(), 1);
        assert_eq!(t.aborted(), 2);
        assert_eq!(
            t.deadline_passed(),
            1,
            "the manager's timer, later, counts it once"
        );
    }

    #[tokio::test]
    async fn wait_idle_wakes_when_the_last_request_ends() {
        let t = tracker();
        let guard = t.begin("GET", "/");
        t.start_draining();
        let waiter = tokio::spawn({
            let t = Arc::clone(&t);
            async move { t.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        guard.finish(200);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn histogram_quantiles_land_in_the_right_bucket() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(50));
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_micros(64) && p50 < Duration::from_micros(128));
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_micros(32_768) && p99 < Duration::from_micros(65_536));
    }
}

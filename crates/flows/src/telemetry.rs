//! Export of traces to a Genkit telemetry server (`POST <url>/api/traces`).
//!
//! Flows must never wait for telemetry: they hand the serialized trace to a queue bounded in
//! count and bytes and move on. One background task posts the queue in order, so the start
//! post of a trace reaches the server before its end post (the server merges posts; the last
//! one wins). A trace's first state stays queued (tools show a run as running from it); a later
//! state replaces the later state still waiting in the queue (it carries everything the older
//! one did), so a trace takes at most two slots however many steps it has. Beyond the budget the oldest posts are dropped and counted; a failing server's posts
//! too. Drops are logged at most once a second, with how many there were since the last log.
//! The server's response body is never read beyond a few bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::trace::{TraceData, lock};

/// The most bytes (of serialized trace JSON) the export queue holds.
///
/// Posts wait here while the telemetry server is slow or down; they are full traces, each up
/// to hundreds of KiB even with truncated values. A count limit alone let 1024 such copies
/// pile up (hundreds of MB). 4 MiB is many seconds of ordinary traffic for a local helper
/// that answers in milliseconds; beyond it the oldest posts are dropped, since a trace the
/// server cannot take now is better lost than the process killed for memory.
pub const TELEMETRY_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How many posts may wait, whatever their size (each is one trace, by coalescing).
const QUEUE_LEN: usize = 1024;
/// The most of a response body read (to let a keep-alive connection be reused for the next
/// post when the answer is the usual tiny `OK`); a longer or unknown-length body is dropped
/// unread, closing the connection. The status is all that matters.
const RESPONSE_BODY_BYTES: u64 = 1024;
/// Drops are logged at most this often (each log says how many since the last one).
const WARN_EVERY: Duration = Duration::from_secs(1);
/// A telemetry server is a local helper: if it does not answer fast, it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable the `genkit` CLI sets for the runtime it starts.
pub(crate) const ENV_VAR: &str = "GENKIT_TELEMETRY_SERVER";

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    dropped: AtomicU64,
    /// Drops not logged yet.
    unlogged: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl Stats {
    /// Counts `n` dropped posts and warns, unless it already did within [`WARN_EVERY`].
    fn drop_posts(&self, n: u64, why: &str) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.unlogged.fetch_add(n, Ordering::Relaxed);
        // Decided under the lock, logged after it: a slow log never holds other exporters.
        let due = {
            let mut last = lock(&self.last_warn);
            let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if !due {
            tracing::debug!(n, why, "telemetry posts dropped");
            return;
        }
        let dropped = self.unlogged.swap(0, Ordering::Relaxed);
        let total = self.dropped.load(Ordering::Relaxed);
        tracing::warn!(dropped, total, why, "telemetry posts dropped");
    }
}

/// One post waiting: the trace's JSON, for one server.
#[derive(Debug)]
struct Post {
    url: String,
    trace_id: String,
    body: Vec<u8>,
    /// A later state of its trace, which a newer one may replace (set by the queue).
    replaceable: bool,
}

#[derive(Debug, Default)]
struct Pending {
    posts: VecDeque<Post>,
    /// The sum of the bodies' lengths.
    bytes: usize,
    /// Set when the `Telemetry` is dropped: the poster stops.
    closed: bool,
}

/// The queue between flows and the poster task.
#[derive(Debug)]
struct Queue {
    pending: Mutex<Pending>,
    wake: Notify,
    /// A poster task exists (cleared when its future is dropped, e.g. with its runtime).
    poster: AtomicBool,
    /// The poster has taken a post and not finished it (set under the `pending` lock).
    posting: AtomicBool,
    budget: usize,
    max_len: usize,
}

impl Queue {
    fn new(budget: usize, max_len: usize) -> Self {
        Self {
            pending: Mutex::default(),
            wake: Notify::new(),
            poster: AtomicBool::new(false),
            posting: AtomicBool::new(false),
            budget,
            max_len,
        }
    }

    /// Queues `post`, replacing a queued later state of the same trace to the same server (a
    /// queued first state stays, and `post` goes behind it). Returns
    /// how many posts were dropped to stay within budget (the new one included, when it alone
    /// is over budget).
    fn push(&self, mut post: Post) -> u64 {
        if post.body.len() > self.budget {
            return 1;
        }
        let mut pending = lock(&self.pending);
        let same = pending
            .posts
            .iter_mut()
            .rev()
            .find(|p| p.trace_id == post.trace_id && p.url == post.url);
        post.replaceable = same.is_some();
        match same {
            Some(slot) if slot.replaceable => {
                let new_len = post.body.len();
                let old = std::mem::replace(slot, post);
                pending.bytes = pending.bytes - old.body.len() + new_len;
            }
            _ => {
                pending.bytes += post.body.len();
                pending.posts.push_back(post);
            }
        }
        let mut dropped = 0;
        while pending.bytes > self.budget || pending.posts.len() > self.max_len {
            let Some(oldest) = pending.posts.pop_front() else {
                break;
            };
            pending.bytes -= oldest.body.len();
            dropped += 1;
        }
        drop(pending);
        self.wake.notify_one();
        dropped
    }

    /// The oldest post, or `None` once closed.
    async fn pop(&self) -> Option<Post> {
        loop {
            {
                let mut pending = lock(&self.pending);
                if pending.closed {
                    return None;
                }
                if let Some(post) = pending.posts.pop_front() {
                    pending.bytes -= post.body.len();
                    self.posting.store(true, Ordering::Release);
                    return Some(post);
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check above
            // and this await is not missed.
            self.wake.notified().await;
        }
    }

    fn bytes(&self) -> usize {
        lock(&self.pending).bytes
    }

    /// Nothing queued and nothing being posted.
    fn is_idle(&self) -> bool {
        let pending = lock(&self.pending);
        pending.posts.is_empty() && !self.posting.load(Ordering::Acquire)
    }
}

/// Clears [`Queue::poster`] when the poster's future is dropped, run or not.
struct PosterAlive(Arc<Queue>);

impl Drop for PosterAlive {
    fn drop(&mut self) {
        // A post it had taken is gone with it.
        self.0.posting.store(false, Ordering::Release);
        self.0.poster.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
pub(crate) struct Telemetry {
    /// The URL came from the environment; `/api/notify` must not override it.
    from_env: bool,
    url: RwLock<Option<String>>,
    /// Its poster is started on first use, inside whatever tokio runtime runs flows, and
    /// started again if that runtime went away.
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    /// The registry's runtime, preferred over the caller's (see `Registry::runtime`).
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        lock(&self.queue.pending).closed = true;
        self.queue.wake.notify_one();
    }
}

impl Telemetry {
    pub(crate) fn new(env_url: Option<String>, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self::with_budget(env_url, runtime, TELEMETRY_QUEUE_BYTES, QUEUE_LEN)
    }

    pub(crate) fn with_budget(
        env_url: Option<String>,
        runtime: Option<tokio::runtime::Handle>,
        budget: usize,
        max_len: usize,
    ) -> Self {
        let env_url = env_url.and_then(normalize);
        Self {
            from_env: env_url.is_some(),
            url: RwLock::new(env_url),
            queue: Arc::new(Queue::new(budget, max_len)),
            stats: Arc::default(),
            runtime,
        }
    }

    pub(crate) fn set_url(&self, url: Option<String>) {
        if self.from_env {
            tracing::debug!(
                ?url,
                "telemetry server from {ENV_VAR} kept; ignoring the notified one"
            );
            return;
        }
        *self.url.write().unwrap_or_else(|e| e.into_inner()) = url.and_then(normalize);
    }

    pub(crate) fn url(&self) -> Option<String> {
        self.url.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Queues one post of the trace `trace` builds, if a telemetry server is known (only then
    /// is it built). Never blocks.
    pub(crate) fn export(&self, trace: impl FnOnce() -> TraceData) {
        let Some(url) = self.url() else { return };
        if !self.ensure_poster() {
            self.stats.drop_posts(1, "no runtime to post from");
            return;
        }
        let trace = trace();
        let body = match serde_json::to_vec(&trace) {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(%error, "trace cannot be encoded");
                self.stats.drop_posts(1, "trace cannot be encoded");
                return;
            }
        };
        let post = Post {
            url,
            trace_id: trace.trace_id,
            body,
            replaceable: false,
        };
        let dropped = self.queue.push(post);
        self.stats
            .drop_posts(dropped, "export queue over its byte budget");
    }

    /// Waits until every queued post has been sent (or has failed), for at most `timeout`.
    /// Returns whether the queue emptied.
    pub(crate) async fn flush(&self, timeout: std::time::Duration) -> bool {
        let idle = async {
            // A poster gone with its runtime will never empty the queue.
            while !self.queue.is_idle() && self.queue.poster.load(Ordering::Acquire) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            self.queue.is_idle()
        };
        tokio::time::timeout(timeout, idle).await.unwrap_or(false)
    }

    /// Starts the poster task unless one is running. Returns whether one is.
    fn ensure_poster(&self) -> bool {
        if self.queue.poster.load(Ordering::Acquire) {
            return true;
        }
        // Outside a runtime there is nowhere to post from; the caller drops the trace.
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime,
                Err(_) => return false,
            },
        };
        // Only one caller starts it.
        if self
            .queue
            .poster
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true;
        }
        let alive = PosterAlive(Arc::clone(&self.queue));
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // The telemetry server is a local helper; an HTTP_PROXY meant for the internet
            // must not swallow its traffic.
            .no_proxy()
            .build();
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "cannot build the telemetry HTTP client; not exporting");
                return false;
            }
        };
        let stats = Arc::clone(&self.stats);
        // The guard moves into the future, so it clears the flag even if the runtime drops
        // the task unpolled (a runtime shutting down).
        runtime.spawn(async move {
            let alive = alive;
            post_all(&alive.0, client, &stats).await;
        });
        true
    }
}

/// Posts queued traces one after the other until the queue is closed.
async fn post_all(queue: &Queue, client: reqwest::Client, stats: &Stats) {
    while let Some(post) = queue.pop().await {
        let endpoint = format!("{}/api/traces", post.url);
        let request = client
            .post(&endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(post.body);
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => {
                discard_body(response).await;
                Ok(())
            }
            // Dropped unread.
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(%endpoint, %error, "telemetry export failed");
                stats.drop_posts(1, "telemetry server failing");
            }
        }
        queue.posting.store(false, Ordering::Release);
    }
}

/// Reads a tiny body to its end (so the connection can be reused) and drops anything else
/// unread: never more than [`RESPONSE_BODY_BYTES`] of it.
async fn discard_body(mut response: reqwest::Response) {
    if response
        .content_length()
        .is_none_or(|len| len > RESPONSE_BODY_BYTES)
    {
        return;
    }
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len() as u64;
        if read > RESPONSE_BODY_BYTES {
            return;
        }
    }
}

/// Trims and strips a trailing `/`; an empty URL means "none".
fn normalize(url: String) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    (!url.is_empty()).then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(trace_id: &str, bytes: usize) -> Post {
        Post {
            url: "http://localhost:1".into(),
            trace_id: trace_id.into(),
            body: vec![b'x'; bytes],
            replaceable: false,
        }
    }

    fn queued(queue: &Queue) -> Vec<(String, usize)> {
        lock(&queue.pending)
            .posts
            .iter()
            .map(|p| (p.trace_id.clone(), p.body.len()))
            .collect()
    }

    #[test]
    fn a_newer_state_replaces_the_queued_one_in_place() {
        let queue = Queue::new(10_000, 100);
        assert_eq!(queue.push(post("a", 100)), 0);
        assert_eq!(queue.push(post("b", 200)), 0);
        // The first state stays (a run shows as running); later ones replace each other.
        assert_eq!(queue.push(post("a", 300)), 0);
        assert_eq!(queue.push(post("a", 400)), 0);
        assert_eq!(
            queued(&queue),
            [("a".into(), 100), ("b".into(), 200), ("a".into(), 400)]
        );
        assert_eq!(queue.bytes(), 700);
        // Another server's post of the same trace is another post.
        let mut other = post("a", 50);
        other.url = "http://localhost:2".into();
        assert_eq!(queue.push(other), 0);
        assert_eq!(queued(&queue).len(), 4);
        assert_eq!(queue.bytes(), 750);
    }

    #[test]
    fn over_budget_the_oldest_are_dropped_and_counted() {
        let queue = Queue::new(1_000, 100);
        let mut dropped = 0;
        for i in 0..10 {
            dropped += queue.push(post(&i.to_string(), 300));
            assert!(queue.bytes() <= 1_000);
        }
        assert_eq!(dropped, 7);
        assert_eq!(
            queued(&queue),
            [("7".into(), 300), ("8".into(), 300), ("9".into(), 300)]
        );
        // A later state of a queued trace goes behind its first one and evicts the oldest
        // (that first state included, here) to stay within budget.
        assert_eq!(queue.push(post("9", 800)), 3);
        assert_eq!(queued(&queue), [("9".into(), 800)]);
        // A post alone over budget is dropped itself, and nothing else.
        assert_eq!(queue.push(post("huge", 1_001)), 1);
        assert_eq!(queued(&queue), [("9".into(), 800)]);
        // The count limit holds as well.
        let queue = Queue::new(usize::MAX, 2);
        let dropped: u64 = (0..5).map(|i| queue.push(post(&i.to_string(), 1))).sum();
        assert_eq!(dropped, 3);
    }

    fn trace(trace_id: &str, pad: usize) -> TraceData {
        let mut root = crate::record::SpanRecord::open(
            "0000000000000001".into(),
            "t".into(),
            "/{t,t:action,s:flow}".into(),
        );
        root.start_time = 1.0;
        crate::record::RunRecord::new(
            trace_id.into(),
            std::collections::BTreeMap::new(),
            "p".repeat(pad),
            root,
        )
        .to_trace()
    }

    #[tokio::test]
    async fn export_coalesces_by_trace_and_counts_drops_against_a_stalled_server() {
        // A server that accepts and never answers: the poster sits on its first post.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let budget = 50_000;
        let telemetry = Telemetry::with_budget(None, None, budget, QUEUE_LEN);
        telemetry.set_url(Some(format!("http://{addr}")));
        // Let the poster take the first post, so what follows stays queued.
        telemetry.export(|| trace("first", 10));
        for _ in 0..100 {
            if telemetry.queued_bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(telemetry.queued_bytes(), 0);

        // Ten states of one trace take two slots: the first and the latest.
        for pad in 0..10 {
            telemetry.export(|| trace("same", 1_000 + pad));
        }
        assert_eq!(queued(&telemetry.queue).len(), 2);
        assert_eq!(
            telemetry.queued_bytes(),
            serde_json::to_vec(&trace("same", 1_000)).unwrap().len()
                + serde_json::to_vec(&trace("same", 1_009)).unwrap().len()
        );
        assert_eq!(telemetry.dropped(), 0);

        // Forty big traces do not: the queue stays under budget and counts what it drops.
        for i in 0..40 {
            telemetry.export(|| trace(&format!("big{i}"), 10_000));
            assert!(telemetry.queued_bytes() <= budget);
        }
        let kept = queued(&telemetry.queue);
        assert!(kept.len() < 6, "{}", kept.len());
        // The two posts of "same" and the forty: all but those kept were dropped.
        assert_eq!(telemetry.dropped(), 42 - kept.len() as u64);
        assert_eq!(kept.last().unwrap().0, "big39");
        assert_eq!(telemetry.sent(), 0);
        // A flush against a server that never answers gives up at its timeout.
        let started = std::time::Instant::now();
        assert!(!telemetry.flush(Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_flush_returns_once_the_last_state_was_posted() {
        // A server that answers each post 50 ms late, 200 OK.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&posted);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        counter.fetch_add(1, Ordering::SeqCst);
                        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(ok.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let telemetry = Telemetry::with_budget(None, None, 1 << 20, QUEUE_LEN);
        telemetry.set_url(Some(format!("http://{addr}")));
        telemetry.export(|| trace("last", 10));
        assert!(telemetry.flush(Duration::from_secs(10)).await);
        assert_eq!(telemetry.sent(), 1);
        assert_eq!(posted.load(Ordering::SeqCst), 1);
        // Nothing queued: at once.
        assert!(telemetry.flush(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_big_response_body_is_not_read() {
        // A server answering 200 with a body that never ends: the post still counts as sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                        .await;
                    let chunk = vec![b'x'; 64 * 1024];
                    while stream.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        let telemetry = Telemetry::new(None, None);
        telemetry.set_url(Some(format!("http://{addr}")));
        telemetry.export(|| trace("t", 10));
        tokio::time::timeout(Duration::from_secs(5), async {
            while telemetry.sent() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("sent without reading the body (nor waiting for it)");
        assert_eq!(telemetry.dropped(), 0);
    }
}

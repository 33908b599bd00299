//! Export of traces to a Genkit telemetry server (`POST <url>/api/traces`).
//!
//! Flows must never wait for telemetry: they hand a copy of the trace to a bounded queue and
//! move on. One background task posts the queue in order, so the start post of a trace always
//! reaches the server before its end post (the server merges posts; the last one wins). When
//! the queue is full or the server fails, the trace is dropped and counted, and a warning is
//! logged once, not once per run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::trace::{TraceData, lock};

/// How many posts may wait; beyond that they are dropped rather than buffered without bound.
const QUEUE: usize = 1024;
/// A telemetry server is a local helper: if it does not answer fast, it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable the `genkit` CLI sets for the runtime it starts.
pub(crate) const ENV_VAR: &str = "GENKIT_TELEMETRY_SERVER";

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    dropped: AtomicU64,
    warned_full: AtomicBool,
    warned_failed: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct Telemetry {
    /// The URL came from the environment; `/api/notify` must not override it.
    from_env: bool,
    url: RwLock<Option<String>>,
    /// Started on first use, inside whatever tokio runtime runs flows; replaced if that
    /// runtime went away.
    queue: Mutex<Option<mpsc::Sender<(String, TraceData)>>>,
    stats: Arc<Stats>,
    /// The registry's runtime, preferred over the caller's (see `Registry::runtime`).
    runtime: Option<tokio::runtime::Handle>,
}

impl Telemetry {
    pub(crate) fn new(env_url: Option<String>, runtime: Option<tokio::runtime::Handle>) -> Self {
        let env_url = env_url.and_then(normalize);
        Self {
            from_env: env_url.is_some(),
            url: RwLock::new(env_url),
            queue: Mutex::new(None),
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

    /// Queues one post of `trace`, if a telemetry server is known. Never blocks.
    pub(crate) fn export(&self, trace: &TraceData) {
        let Some(url) = self.url() else { return };
        let mut queue = lock(&self.queue);
        if queue.as_ref().is_none_or(mpsc::Sender::is_closed) {
            *queue = self.spawn_poster();
        }
        let Some(tx) = queue.as_ref() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send((url, trace.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.stats.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!("telemetry export queue is full; dropping traces (warned once)");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn spawn_poster(&self) -> Option<mpsc::Sender<(String, TraceData)>> {
        // Outside a runtime there is nowhere to post from; the caller drops the trace.
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => tokio::runtime::Handle::try_current().ok()?,
        };
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
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        runtime.spawn(post_all(rx, client, Arc::clone(&self.stats)));
        Some(tx)
    }
}

/// Posts queued traces one after the other until every sender is gone.
async fn post_all(
    mut rx: mpsc::Receiver<(String, TraceData)>,
    client: reqwest::Client,
    stats: Arc<Stats>,
) {
    while let Some((url, trace)) = rx.recv().await {
        let endpoint = format!("{url}/api/traces");
        let outcome = match client.post(&endpoint).json(&trace).send().await {
            // Reading the (tiny) body lets the connection be reused for the next post.
            Ok(response) if response.status().is_success() => {
                response.bytes().await.map(drop).map_err(|e| e.to_string())
            }
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !stats.warned_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%endpoint, %error, "telemetry export failed; dropping traces (warned once)");
                } else {
                    tracing::debug!(%endpoint, %error, "telemetry export failed");
                }
            }
        }
    }
}

/// Trims and strips a trailing `/`; an empty URL means "none".
fn normalize(url: String) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    (!url.is_empty()).then(|| url.to_owned())
}

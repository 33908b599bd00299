//! The registry: flow definitions, starting runs, cancelling them, and the trace feed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::FlowError;
use crate::record::{LiveRecord, Outcome, RunRecord, SpanRecord};
use crate::run::{FlowContext, FlowRun, RunShared};
use crate::telemetry::{self, Telemetry};
use crate::trace::{
    TRACE_STORE_BYTES, TraceData, TraceStore, json_text, lock, new_span_id, new_trace_id,
    truncate_text,
};

/// How many finished or running traces stay in memory.
pub const TRACE_HISTORY: usize = 100;
/// Chunks a streaming flow may run ahead of its reader before `send_chunk` waits.
const CHUNK_BUFFER: usize = 16;
/// Trace updates a slow subscriber may lag behind before it misses some. The feed carries
/// trace ids, not traces: a broadcast ring keeps every slot's value until it is overwritten,
/// and 1024 whole traces would be a store beside the store, with no byte budget.
const TRACE_FEED: usize = 1024;

/// One registered action as Genkit's `GET /api/actions` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionDesc {
    /// `/flow/<name>`.
    pub key: String,
    /// The flow name.
    pub name: String,
    /// The action kind: `flow`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the flow does.
    pub description: String,
    /// Draft-07 JSON Schema of the input.
    pub input_schema: Option<Value>,
    /// Draft-07 JSON Schema of the output.
    pub output_schema: Option<Value>,
    /// Free-form metadata (an object).
    pub metadata: Value,
}

/// How to run a flow.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The request's `context` object, handed to the flow as is ([`FlowContext::context`]).
    pub context: Value,
    /// Whether the caller reads chunks ([`FlowRun::next_chunk`]).
    pub stream: bool,
    /// Telemetry labels, recorded as attributes of the root span.
    pub labels: BTreeMap<String, String>,
}

impl RunOptions {
    /// The options of a `runAction` (v1's body, v2's params): its `context`, whether to
    /// stream, and its `telemetryLabels`, whose values Genkit's tools send as strings
    /// (`flow:batchRun --label`): a string as is, anything else as its JSON.
    pub fn of_request(
        context: Value,
        stream: bool,
        telemetry_labels: Option<BTreeMap<String, Value>>,
    ) -> Self {
        let labels = telemetry_labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| json_text(&v), str::to_owned)))
            .collect();
        RunOptions {
            context,
            stream,
            labels,
        }
    }
}

/// A type-erased flow: checks and parses the input, then yields the run.
type Prepare = dyn Fn(&Value) -> Result<Job, FlowError> + Send + Sync;
/// A parsed-input flow, ready to run with its context.
type Job = Box<dyn FnOnce(FlowContext) -> BoxFuture<'static, Result<Value, FlowError>> + Send>;

struct FlowEntry {
    desc: ActionDesc,
    prepare: Arc<Prepare>,
    /// The flow's name, and its root span's `genkit:path`, made once: shared by every run's
    /// record, not copied into each.
    name: Arc<str>,
    root_path: Arc<str>,
}

/// The flows of this process, their running instances and their recent traces.
///
/// Create one with [`Registry::new`] and share the `Arc` with every server.
pub struct Registry {
    flows: RwLock<BTreeMap<String, FlowEntry>>,
    /// Cancellation handles of runs still going, by trace id.
    running: Mutex<HashMap<Arc<str>, CancellationToken>>,
    traces: TraceStore,
    stats: crate::stats::Stats,
    feed: broadcast::Sender<Arc<str>>,
    telemetry: Telemetry,
    /// The runtime flows run on: the one `new` was called in, when there was one. A server
    /// with runtimes of its own (actix runs one per worker thread) then still runs flows on
    /// the process's main runtime, where a stopping worker cannot take them down.
    runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field(
                "flows",
                &self
                    .flows
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .collect::<Vec<_>>(),
            )
            .field("running", &lock(&self.running).len())
            .field("telemetry", &self.telemetry)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry. Reads `GENKIT_TELEMETRY_SERVER` once, here: when it is set, traces
    /// are exported there and [`set_telemetry_server`](Self::set_telemetry_server) is ignored.
    pub fn new() -> Arc<Registry> {
        Self::with_env_telemetry(std::env::var(telemetry::ENV_VAR).ok())
    }

    pub(crate) fn with_env_telemetry(env_url: Option<String>) -> Arc<Registry> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new(Registry {
            flows: RwLock::default(),
            running: Mutex::default(),
            traces: TraceStore::new(TRACE_HISTORY, TRACE_STORE_BYTES),
            stats: crate::stats::Stats::default(),
            feed: broadcast::channel(TRACE_FEED).0,
            telemetry: Telemetry::new(env_url, runtime.clone()),
            runtime,
        })
    }

    /// Registers the flow `name` under the key `/flow/<name>`, with JSON Schemas (draft-07)
    /// derived from `I` and `O`.
    ///
    /// Defining a name twice replaces the first definition (and logs a warning): runs already
    /// started keep the old one.
    pub fn define_flow<I, O, F, Fut>(&self, name: &str, description: &str, f: F)
    where
        I: serde::de::DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + JsonSchema + Send + 'static,
        F: Fn(I, FlowContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, FlowError>> + Send + 'static,
    {
        let key = format!("/flow/{name}");
        let desc = ActionDesc {
            key: key.clone(),
            name: name.to_owned(),
            kind: "flow".into(),
            description: description.to_owned(),
            input_schema: Some(schema_for::<I>()),
            output_schema: Some(schema_for::<O>()),
            metadata: json!({}),
        };
        let f = Arc::new(f);
        let prepare = move |input: &Value| -> Result<Job, FlowError> {
            let input: I = serde_path_to_error::deserialize(input).map_err(invalid_input)?;
            let f = Arc::clone(&f);
            Ok(Box::new(move |ctx| {
                Box::pin(async move {
                    let output = f(input, ctx).await?;
                    serde_json::to_value(output).map_err(|e| {
                        FlowError::internal(format!("flow output cannot be encoded as JSON: {e}"))
                    })
                })
            }))
        };
        let entry = FlowEntry {
            name: Arc::from(name),
            root_path: Arc::from(format!("/{{{name},t:action,s:flow}}")),
            desc,
            prepare: Arc::new(prepare),
        };
        let mut flows = self.flows.write().unwrap_or_else(|e| e.into_inner());
        if flows.insert(key.clone(), entry).is_some() {
            tracing::warn!(%key, "flow defined twice; the later definition wins");
        }
    }

    /// Every registered action, sorted by key.
    pub fn actions(&self) -> Vec<ActionDesc> {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        flows.values().map(|e| e.desc.clone()).collect()
    }

    /// Every registered action keyed by its key, each as Genkit lists it: the body of
    /// `GET /api/actions` (v1) and the `actions` of `listActions` (v2).
    pub fn actions_by_key(&self) -> serde_json::Map<String, Value> {
        self.actions()
            .into_iter()
            .map(|action| {
                let value = serde_json::to_value(&action).unwrap_or(Value::Null);
                (action.key, value)
            })
            .collect()
    }

    /// The action with this key (`/flow/<name>`), if registered.
    pub fn action(&self, key: &str) -> Option<ActionDesc> {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        flows.get(key).map(|e| e.desc.clone())
    }

    /// Starts the flow `key` on `input`, polls it once (see the crate's doc: a flow that does
    /// not wait is done when this returns), and returns the run with its trace id.
    ///
    /// The input is checked by deserializing it into the flow's input type. Input that does not
    /// fit still gives `Ok`: a [`FlowRun`] whose [`result`](FlowRun::result) is the
    /// `INVALID_ARGUMENT` error, with a failed trace recorded, so callers always have a trace
    /// id to show (as Genkit does).
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` when no action has that key; no trace is recorded then.
    ///
    /// # Panics
    ///
    /// When the registry was made outside a tokio runtime, `start` is called outside one too,
    /// and the flow waits (it is spawned then; one that does not wait needs no runtime).
    pub fn start(
        self: &Arc<Self>,
        key: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<FlowRun, FlowError> {
        let (name, root_path, prepare) = {
            let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
            let entry = flows
                .get(key)
                .ok_or_else(|| FlowError::not_found(format!("action '{key}' not found")))?;
            (
                Arc::clone(&entry.name),
                Arc::clone(&entry.root_path),
                Arc::clone(&entry.prepare),
            )
        };
        let trace_id = new_trace_id();
        let span_id = new_span_id();

        let mut labels = options.labels;
        for value in labels.values_mut() {
            *value = truncate_text(std::mem::take(value));
        }
        let mut record = RunRecord::new(
            trace_id.clone(),
            labels,
            truncate_text(json_text(&input)),
            SpanRecord::open(span_id.clone(), name, root_path),
        );

        let job = match prepare(&input) {
            Ok(job) => job,
            Err(error) => {
                // The flow never runs: record one finished, failed trace right away.
                let error = error.with_trace_id(&*trace_id);
                record.root.close(Outcome::of(Err(&error.message)));
                self.count_run(&record);
                let record: LiveRecord = Arc::new(Mutex::new(record));
                self.publish(&record, &lock(&record), true);
                return Ok(FlowRun::failed(trace_id, span_id, error));
            }
        };

        let (chunk_tx, chunk_rx) = if options.stream {
            let (tx, rx) = mpsc::channel(CHUNK_BUFFER);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let shared = Arc::new(RunShared {
            registry: Arc::clone(self),
            trace_id: trace_id.clone(),
            context: options.context,
            cancel: std::sync::OnceLock::new(),
            record: Arc::new(Mutex::new(record)),
        });

        // Most flows do their work and return without waiting on anything: polled once here,
        // such a run costs no task, no hop to another thread and back, and one published
        // state instead of two. The poll happens in the registry's runtime's context, so what
        // the flow creates (timers, tasks, sockets) belongs to that runtime as it would in a
        // task there. A flow that waits goes on as a task, whose first poll registers the
        // wakers this one could not (its waker is a no-op).
        let ctx = FlowContext::new(Arc::clone(&shared), chunk_tx);
        // A panic inside the flow becomes INTERNAL instead of a silently dead task.
        let mut flow = AssertUnwindSafe(job(ctx)).catch_unwind();
        let first = {
            let _context = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
            Pin::new(&mut flow).poll(&mut Context::from_waker(Waker::noop()))
        };
        if let Poll::Ready(caught) = first {
            // The flow (and with it the FlowContext's chunk sender) goes first, so readers
            // see the end of the chunk stream before the result.
            drop(flow);
            let outcome = shared.outcome_of(caught);
            shared.finish(&outcome);
            shared.announce();
            return Ok(FlowRun::finished(trace_id, span_id, chunk_rx, outcome));
        }
        shared.announce();

        let cancel = shared.cancel().clone();
        let done = CancellationToken::new();
        let (result_tx, result_rx) = oneshot::channel();
        let task_done = done.clone();
        let task = async move {
            let caught = tokio::select! {
                // Checked first so that a cancelled run ends even if the flow is always ready.
                biased;
                () = shared.cancel().cancelled() => None,
                caught = &mut flow => Some(caught),
            };
            drop(flow);
            let outcome = match caught {
                Some(caught) => shared.outcome_of(caught),
                None => shared.outcome_of(Ok(Err(FlowError::cancelled()))),
            };
            shared.finish(&outcome);
            task_done.cancel();
            // The caller may have gone away; then nobody wants the result.
            let _ = result_tx.send(outcome);
        };
        // Only a run that goes on can be cancelled by id (one done in the poll above is not
        // worth a map entry).
        lock(&self.running).insert(trace_id.clone(), cancel.clone());
        match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        };

        Ok(FlowRun::running(
            trace_id, span_id, chunk_rx, done, result_rx, cancel,
        ))
    }

    /// Cancels the running flow with this trace id. Returns whether one was running.
    ///
    /// The run ends promptly with `CANCELLED` ("Action was cancelled"), even if the flow
    /// never looks at [`FlowContext::is_cancelled`]: its future is dropped at its next await.
    pub fn cancel(&self, trace_id: &str) -> bool {
        match lock(&self.running).get(trace_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The last [`TRACE_HISTORY`] traces, newest first (by when each was announced: the end of
    /// its run's first poll), running ones included, at most
    /// [`TRACE_STORE_BYTES`](crate::TRACE_STORE_BYTES) of them (oldest evicted first).
    pub fn recent_traces(&self) -> Vec<TraceData> {
        self.traces.recent()
    }

    /// One of the recent traces.
    pub fn trace(&self, trace_id: &str) -> Option<TraceData> {
        self.traces.get(trace_id)
    }

    /// A feed of trace updates: the id of a trace at each run's start, each step's start and
    /// end, and the run's end (a run that finished inside [`start`](Self::start) is announced
    /// once, finished); its state then is [`trace`](Self::trace) (`None` once evicted).
    /// A subscriber that lags far behind misses updates
    /// ([`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe_traces(&self) -> broadcast::Receiver<Arc<str>> {
        self.feed.subscribe()
    }

    /// Adopts the telemetry server a tool announced (`POST /api/notify`), or forgets it with
    /// `None`. Ignored when `GENKIT_TELEMETRY_SERVER` was set at [`new`](Self::new).
    pub fn set_telemetry_server(&self, url: Option<String>) {
        self.telemetry.set_url(url);
    }

    /// Where traces are exported, if anywhere.
    pub fn telemetry_server(&self) -> Option<String> {
        self.telemetry.url()
    }

    /// Waits until every trace state queued for the telemetry server has been posted (or its
    /// post failed), for at most `timeout`: at exit, so the last run's final state reaches the
    /// tools (the genkit CLI stops the runtime as soon as it has the result). Returns whether
    /// the queue emptied.
    pub async fn flush_telemetry(&self, timeout: std::time::Duration) -> bool {
        self.telemetry.flush(timeout).await
    }

    /// How many trace posts reached the telemetry server.
    pub fn telemetry_sent(&self) -> u64 {
        self.telemetry.sent()
    }

    /// How many trace posts were dropped: the export queue over its byte budget
    /// ([`TELEMETRY_QUEUE_BYTES`](crate::TELEMETRY_QUEUE_BYTES)) or count, no runtime to post
    /// from, or the server down or failing. A queued state replaced by a newer state of the
    /// same trace is not a drop (the newer one carries everything).
    pub fn telemetry_dropped(&self) -> u64 {
        self.telemetry.dropped()
    }

    /// Bytes of trace JSON waiting in the export queue now.
    pub fn telemetry_queued_bytes(&self) -> usize {
        self.telemetry.queued_bytes()
    }

    /// Every flow's runs, errors and durations since start, by flow name (flows that have
    /// not ended a run yet are absent).
    pub fn flow_stats(&self) -> BTreeMap<String, crate::FlowStats> {
        self.stats.snapshot()
    }

    /// Bytes of the traces kept in memory now, as the store budgets them (their strings plus a
    /// fixed cost per span and attribute).
    pub fn trace_store_bytes(&self) -> usize {
        self.traces.bytes()
    }

    /// Stores, broadcasts and exports one state of a run's trace. `new` puts it at the front
    /// of the history; otherwise it replaces the stored state.
    ///
    /// `state` is what `record` holds now: the caller holds its lock, so states are published
    /// in the order they happened.
    pub(crate) fn publish(&self, record: &LiveRecord, state: &RunRecord, new: bool) {
        if new {
            self.traces.insert(record, state);
        } else {
            self.traces.update(record, state);
        }
        // No subscribers is fine: the feed is for whoever listens now.
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Arc::clone(&state.trace_id));
        }
        // The document is built only for a telemetry server that wants it.
        self.telemetry.export(|| state.to_trace());
    }

    /// Counts a run that just ended in the flow statistics (once per run).
    pub(crate) fn count_run(&self, record: &RunRecord) {
        self.stats.record(record);
    }

    pub(crate) fn forget_running(&self, trace_id: &str) {
        let mut running = lock(&self.running);
        // Runs done inside `start` were never entered; most are such.
        if !running.is_empty() {
            running.remove(trace_id);
        }
    }
}

/// The draft-07 JSON Schema of `T`, as Genkit's tools expect.
fn schema_for<T: JsonSchema>() -> Value {
    SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Words the problem like Genkit's own schema errors, naming where in the input it is.
fn invalid_input(error: serde_path_to_error::Error<serde_json::Error>) -> FlowError {
    let path = error.path().to_string();
    let at = if path == "." { "(root)" } else { &path };
    FlowError::invalid_argument(format!(
        "Schema validation failed. Parse Errors:\n\n- {at}: {}",
        error.inner()
    ))
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("flow panicked");
    format!("flow panicked: {text}")
}

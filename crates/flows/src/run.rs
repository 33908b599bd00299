//! One run of a flow: the caller's handle ([`FlowRun`]) and the flow's side ([`FlowContext`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::FlowError;
use crate::record::{LiveRecord, Outcome, RunRecord, SpanRecord};
use crate::registry::Registry;
use crate::trace::{json_text, lock, new_span_id};

/// The caller's handle on a started run: its ids, its chunks, its result.
///
/// Dropping it before [`result`](Self::result) has returned cancels the flow: the client
/// went away, so nobody wants the answer.
pub struct FlowRun {
    /// The run's trace id (32 lower-case hex digits).
    pub trace_id: Arc<str>,
    /// The root span's id (16 lower-case hex digits).
    pub span_id: String,
    chunks: Option<mpsc::Receiver<Value>>,
    /// Fires once the flow has finished (its result is on the way); `None` when it had
    /// finished before `start` returned.
    done: Option<CancellationToken>,
    result: ResultSlot,
    cancel: Option<CancellationToken>,
    /// The input was rejected: the flow never ran.
    rejected: bool,
}

enum ResultSlot {
    Ready(Option<Result<Value, FlowError>>),
    Pending(oneshot::Receiver<Result<Value, FlowError>>),
}

impl fmt::Debug for FlowRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowRun")
            .field("trace_id", &self.trace_id)
            .field("span_id", &self.span_id)
            .field("streaming", &self.chunks.is_some())
            .field(
                "finished",
                &self
                    .done
                    .as_ref()
                    .is_none_or(CancellationToken::is_cancelled),
            )
            .finish_non_exhaustive()
    }
}

impl FlowRun {
    pub(crate) fn running(
        trace_id: Arc<str>,
        span_id: String,
        chunks: Option<mpsc::Receiver<Value>>,
        done: CancellationToken,
        result: oneshot::Receiver<Result<Value, FlowError>>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            chunks,
            done: Some(done),
            result: ResultSlot::Pending(result),
            cancel: Some(cancel),
            rejected: false,
        }
    }

    /// A run that finished inside `start` (its chunks, if it streamed, are buffered).
    pub(crate) fn finished(
        trace_id: Arc<str>,
        span_id: String,
        chunks: Option<mpsc::Receiver<Value>>,
        outcome: Result<Value, FlowError>,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            chunks,
            done: None,
            result: ResultSlot::Ready(Some(outcome)),
            cancel: None,
            rejected: false,
        }
    }

    /// A run that ended before it began (its input was rejected).
    pub(crate) fn failed(trace_id: Arc<str>, span_id: String, error: FlowError) -> Self {
        let mut run = Self::finished(trace_id, span_id, None, Err(error));
        run.rejected = true;
        run
    }

    /// The error, when the run was rejected before it began (input that does not fit the
    /// flow's type): lets an HTTP server answer 400 instead of starting a stream.
    pub fn rejected(&self) -> Option<&FlowError> {
        match &self.result {
            ResultSlot::Ready(Some(Err(err))) if self.rejected => Some(err),
            _ => None,
        }
    }

    /// The next chunk the flow streamed, in order; `None` once the flow has finished and every
    /// chunk was read, and always `None` when the run is not streaming.
    ///
    /// # Cancellation safety
    ///
    /// Cancel-safe: dropping the future loses no chunk.
    pub async fn next_chunk(&mut self) -> Option<Value> {
        let chunks = self.chunks.as_mut()?;
        // Finished before `start` returned: what it sent is buffered.
        let Some(done) = &self.done else {
            return chunks.try_recv().ok();
        };
        tokio::select! {
            // Chunks first: everything sent before the flow finished is delivered.
            biased;
            chunk = chunks.recv() => chunk,
            // The flow is done but a clone of its context outlived it (say, in a task it
            // spawned) and keeps the channel open: take what is buffered, then stop.
            () = done.cancelled() => chunks.try_recv().ok(),
        }
    }

    /// The flow's output or error without waiting, when it has finished already (a flow that
    /// does not wait finishes inside [`Registry::start`](crate::Registry::start)); `None` while
    /// it is going, and always for a streaming run (its chunks come first). Lets a server send
    /// a whole answer instead of starting a stream. Once taken, [`result`](Self::result) has
    /// nothing left to give.
    pub fn try_result(&mut self) -> Option<Result<Value, FlowError>> {
        if self.chunks.is_some() {
            return None;
        }
        let outcome = match &mut self.result {
            ResultSlot::Ready(outcome) => outcome.take(),
            ResultSlot::Pending(rx) => rx.try_recv().ok(),
        }?;
        // Taken: a received channel must not be polled again (tokio panics), and finished,
        // there is nothing to cancel on drop.
        self.result = ResultSlot::Ready(None);
        self.cancel = None;
        Some(outcome)
    }

    /// Waits for the flow's output, or its error (which carries the trace id).
    ///
    /// Chunks not read yet are discarded, and a streaming flow no longer waits for a reader.
    ///
    /// # Cancellation safety
    ///
    /// Dropping this future drops the run, which cancels the flow.
    pub async fn result(mut self) -> Result<Value, FlowError> {
        self.chunks = None;
        match &mut self.result {
            ResultSlot::Ready(outcome) => outcome.take().unwrap_or_else(|| {
                Err(FlowError::internal("result already taken").with_trace_id(&*self.trace_id))
            }),
            ResultSlot::Pending(rx) => rx.await.unwrap_or_else(|_| {
                // Only when the runtime dropped the task (shutting down).
                Err(
                    FlowError::internal("the flow's task ended without a result")
                        .with_trace_id(&*self.trace_id),
                )
            }),
        }
    }
}

impl Drop for FlowRun {
    fn drop(&mut self) {
        // After the flow finished this is a no-op; before, it is the "client went away" case.
        if let Some(cancel) = &self.cancel {
            cancel.cancel();
        }
    }
}

/// State one run shares between its task (when it has one) and its [`FlowContext`]s.
pub(crate) struct RunShared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) trace_id: Arc<str>,
    pub(crate) context: Value,
    /// Made when first asked for: a run done in its first poll, most are, can never be
    /// cancelled, and skips the token's allocation (see [`Self::cancel`]).
    pub(crate) cancel: std::sync::OnceLock<CancellationToken>,
    /// The run as it stands; every change is published while this lock is held, so the
    /// history, the feed and the telemetry server see the states in order.
    pub(crate) record: LiveRecord,
}

impl RunShared {
    /// The run's cancellation token.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        self.cancel.get_or_init(CancellationToken::new)
    }

    /// Whether the run was cancelled (never, before its token exists).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Makes the run visible: its current state goes into the history and out to the feed
    /// and the telemetry server, and every later change is published. Until then (the run's
    /// first poll, inside `start`) changes are only recorded, so a run that finishes there is
    /// published once, finished.
    pub(crate) fn announce(&self) {
        let mut record = lock(&self.record);
        self.registry.publish(&self.record, &record, true);
        record.announced = true;
    }

    fn update<R>(&self, change: impl FnOnce(&mut RunRecord) -> R) -> R {
        self.update_if(|record| (change(record), true))
    }

    /// [`update`](Self::update), publishing only when `change` says the state is worth it.
    fn update_if<R>(&self, change: impl FnOnce(&mut RunRecord) -> (R, bool)) -> R {
        let mut record = lock(&self.record);
        let (changed, publish) = change(&mut record);
        if publish && record.announced {
            self.registry.publish(&self.record, &record, false);
        }
        changed
    }

    /// What the caller gets from the flow's (caught) result: a panic becomes INTERNAL, and
    /// every error carries the run's trace id.
    pub(crate) fn outcome_of(
        &self,
        caught: std::thread::Result<Result<Value, FlowError>>,
    ) -> Result<Value, FlowError> {
        let outcome = caught.unwrap_or_else(|panic| {
            Err(FlowError::internal(crate::registry::panic_message(
                panic.as_ref(),
            )))
        });
        outcome.map_err(|mut e| {
            e.trace_id.get_or_insert_with(|| self.trace_id.to_string());
            e
        })
    }

    /// Closes the root span (and any step the flow was still in) and forgets the run.
    pub(crate) fn finish(&self, outcome: &Result<Value, FlowError>) {
        let output = match outcome {
            Ok(value) => Ok(json_text(value)),
            Err(error) => Err(error.message.as_str()),
        };
        self.update(|record| {
            let message = match &output {
                Ok(_) => "flow ended while this step was running",
                Err(message) => message,
            };
            record.close_open_steps(|| Outcome::of(Err(message)));
            record.root.close(Outcome::of(output));
        });
        // Counted here, once: a step a clone of the context runs after the end publishes the
        // finished trace again.
        self.registry.count_run(&lock(&self.record));
        self.registry.forget_running(&self.trace_id);
    }
}

/// What a flow function gets besides its input: the request context, chunk streaming,
/// cancellation, and traced steps.
///
/// Cheap to clone; clones talk about the same run.
#[derive(Clone)]
pub struct FlowContext {
    shared: Arc<RunShared>,
    chunks: Option<mpsc::Sender<Value>>,
}

impl fmt::Debug for FlowContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowContext")
            .field("trace_id", &self.shared.trace_id)
            .field("streaming", &self.chunks.is_some())
            .field("cancelled", &self.shared.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl FlowContext {
    pub(crate) fn new(shared: Arc<RunShared>, chunks: Option<mpsc::Sender<Value>>) -> Self {
        Self { shared, chunks }
    }

    /// The request's `context` object (`Null` when it had none).
    pub fn context(&self) -> &Value {
        &self.shared.context
    }

    /// Whether the caller reads chunks; a flow may skip producing them when not.
    pub fn is_streaming(&self) -> bool {
        self.chunks.is_some()
    }

    /// Sends one chunk to the caller. Does nothing when the run is not streaming, when the
    /// caller stopped reading, or when the chunk cannot be encoded as JSON (logged).
    ///
    /// The channel is bounded: when the caller is slow, this waits (backpressure), until there
    /// is room or the run is cancelled. The chunk is encoded before the future is returned,
    /// so `T` need not be `Send`.
    pub fn send_chunk<T: Serialize>(&self, chunk: T) -> impl Future<Output = ()> + Send + '_ {
        let encoded = match &self.chunks {
            Some(_) => serde_json::to_value(&chunk)
                .inspect_err(|error| tracing::warn!(%error, "chunk dropped: not JSON"))
                .ok(),
            None => None,
        };
        async move {
            let (Some(tx), Some(chunk)) = (&self.chunks, encoded) else {
                return;
            };
            tokio::select! {
                // A send error means the reader is gone; the flow goes on regardless.
                _ = tx.send(chunk) => {}
                () = self.shared.cancel().cancelled() => {}
            }
        }
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.shared.is_cancelled()
    }

    /// Resolves once the run is cancelled. A flow need not watch for this (its future is
    /// dropped on cancellation anyway); it is for cleanup that must happen first, or for work
    /// handed to other tasks.
    pub async fn cancelled(&self) {
        self.shared.cancel().cancelled().await;
    }

    /// The run's trace id.
    pub fn trace_id(&self) -> &str {
        &self.shared.trace_id
    }

    /// Runs `step` as a traced step: a span named `step_name` under the flow's root span
    /// (`genkit:type` = `flowStep`) that records the step's output or error.
    ///
    /// # Errors
    ///
    /// The step's own error, unchanged.
    pub async fn run<T, Fut>(&self, step_name: &str, step: Fut) -> Result<T, FlowError>
    where
        T: Serialize,
        Fut: Future<Output = Result<T, FlowError>>,
    {
        let span_id = new_span_id();
        // A step not recorded changes only a count, which the next published state shows:
        // publishing the whole record for it would cost a document per step past the budget.
        let index = self.shared.update_if(|record| {
            let path = format!("{}/{{{step_name},t:flowStep}}", record.root.path);
            let index = record.open_step(SpanRecord::open(span_id, step_name.into(), path.into()));
            (index, index.is_some())
        });

        let outcome = step.await;

        // Past the run's budget the step ran unrecorded: nothing to close.
        let Some(index) = index else {
            return outcome;
        };
        let recorded = match &outcome {
            Ok(value) => Ok(serde_json::to_string(value)
                .unwrap_or_else(|e| format!("<output cannot be encoded as JSON: {e}>"))),
            Err(error) => Err(error.message.as_str()),
        };
        self.shared.update(|record| {
            // Steps are only ever added, so the index still names this one.
            record.close_step(index, Outcome::of(recorded));
        });
        outcome
    }
}

//! Genkit's TraceData shape, id generation, and the in-memory store of recent traces.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One trace in Genkit's `TraceData` shape, as the telemetry server and Dev UI read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceData {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The root span's name: the flow name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub start_time: f64,
    /// Milliseconds since the Unix epoch; 0 while the run is going on.
    #[serde(default)]
    pub end_time: f64,
    /// Every span of the trace, keyed by span id.
    pub spans: BTreeMap<String, SpanData>,
}

impl TraceData {
    /// The span without a parent, if it is there.
    pub fn root_span(&self) -> Option<&SpanData> {
        self.spans.values().find(|s| s.parent_span_id.is_none())
    }

    /// Whether the run has ended (its end time is set).
    pub fn is_finished(&self) -> bool {
        self.end_time > 0.0
    }
}

/// One span in Genkit's `SpanData` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanData {
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The trace this span belongs to.
    pub trace_id: String,
    /// Absent on the root span (Genkit's schema has it optional, not nullable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub start_time: f64,
    /// Milliseconds since the Unix epoch; 0 while the span is open.
    pub end_time: f64,
    /// `genkit:*` attributes (and the run's telemetry labels on the root span).
    pub attributes: BTreeMap<String, Value>,
    /// The flow or step name.
    pub display_name: String,
    /// Always `{name: "genkit-tracer", version: "v1"}` here.
    pub instrumentation_library: InstrumentationLibrary,
    /// Always `"INTERNAL"` here.
    pub span_kind: String,
    /// Absent while the span is open; `{code: 0}` on success, `{code: 2, message}` on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SpanStatus>,
}

/// Who produced a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentationLibrary {
    /// Library name.
    pub name: String,
    /// Library version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl InstrumentationLibrary {
    fn genkit() -> Self {
        Self {
            name: "genkit-tracer".into(),
            version: Some("v1".into()),
        }
    }
}

/// An OpenTelemetry span status: code 0 unset/ok, 2 error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanStatus {
    /// 0 = ok, 2 = error.
    pub code: u32,
    /// The error message, on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl SpanStatus {
    pub(crate) fn ok() -> Self {
        Self {
            code: 0,
            message: None,
        }
    }

    pub(crate) fn error(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: Some(message.into()),
        }
    }
}

impl SpanData {
    /// A fresh, open span with Genkit's fixed fields filled in.
    pub(crate) fn open(
        trace_id: &str,
        span_id: String,
        parent_span_id: Option<String>,
        display_name: &str,
        attributes: BTreeMap<String, Value>,
    ) -> Self {
        Self {
            span_id,
            trace_id: trace_id.to_owned(),
            parent_span_id,
            start_time: now_ms(),
            end_time: 0.0,
            attributes,
            display_name: display_name.to_owned(),
            instrumentation_library: InstrumentationLibrary::genkit(),
            span_kind: "INTERNAL".into(),
            status: None,
        }
    }

    /// Closes the span with `genkit:state` and a status matching the outcome.
    pub(crate) fn close(&mut self, outcome: Result<&str, &str>) {
        self.end_time = now_ms().max(self.start_time);
        match outcome {
            Ok(output_json) => {
                self.attributes
                    .insert("genkit:output".into(), Value::String(output_json.into()));
                self.attributes
                    .insert("genkit:state".into(), Value::String("success".into()));
                self.status = Some(SpanStatus::ok());
            }
            Err(message) => {
                self.attributes
                    .insert("genkit:state".into(), Value::String("error".into()));
                self.status = Some(SpanStatus::error(message));
            }
        }
    }
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
pub(crate) fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A W3C trace id: 32 lower-case hex digits, never all zero (all-zero is "invalid").
pub(crate) fn new_trace_id() -> String {
    let id: u128 = loop {
        let id = rand::random::<u128>();
        if id != 0 {
            break id;
        }
    };
    format!("{id:032x}")
}

/// A W3C span id: 16 lower-case hex digits, never all zero.
pub(crate) fn new_span_id() -> String {
    let id: u64 = loop {
        let id = rand::random::<u64>();
        if id != 0 {
            break id;
        }
    };
    format!("{id:016x}")
}

/// The last `capacity` traces, newest (by start) first.
#[derive(Debug)]
pub(crate) struct TraceStore {
    capacity: usize,
    traces: Mutex<VecDeque<TraceData>>,
}

impl TraceStore {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            traces: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Adds a new trace at the front, evicting the oldest beyond capacity.
    pub(crate) fn insert(&self, trace: TraceData) {
        let mut traces = lock(&self.traces);
        traces.push_front(trace);
        traces.truncate(self.capacity);
    }

    /// Replaces a trace in place (keeping its position). A trace already evicted by newer runs
    /// stays evicted: re-adding it would push out a newer one.
    pub(crate) fn update(&self, trace: &TraceData) {
        let mut traces = lock(&self.traces);
        if let Some(slot) = traces.iter_mut().find(|t| t.trace_id == trace.trace_id) {
            slot.clone_from(trace);
        }
    }

    pub(crate) fn recent(&self) -> Vec<TraceData> {
        lock(&self.traces).iter().cloned().collect()
    }

    pub(crate) fn get(&self, trace_id: &str) -> Option<TraceData> {
        lock(&self.traces)
            .iter()
            .find(|t| t.trace_id == trace_id)
            .cloned()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here only swaps plain data, so a
/// panic elsewhere cannot leave it half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! Genkit's TraceData shape, id generation, and the in-memory store of recent traces.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most bytes one recorded value may keep: a span's `genkit:input` / `genkit:output` JSON
/// text, any other string attribute, and an error message.
///
/// Inputs come from anonymous requests: without a cap, a 1 MB request body is stored (and
/// cloned into the export queue) as a 1 MB attribute per state of its trace. 16 KiB still
/// shows any realistic prompt or answer in the Dev UI. A longer value is cut (at a character
/// boundary) and ends with the marker `…[truncated N bytes]`, N being how many bytes were cut;
/// it stays a string, so the trace keeps Genkit's schema.
pub const TRACE_VALUE_BYTES: usize = 16 * 1024;

/// The most bytes (of serialized `TraceData` JSON) the recent-traces store keeps, besides its
/// count limit ([`TRACE_HISTORY`](crate::TRACE_HISTORY)); the oldest traces are evicted first.
///
/// The count alone does not bound memory: 100 traces of large values are hundreds of MB, and
/// the process runs under container limits of a few hundred MB. 8 MiB keeps the full history
/// of ordinary runs (a few KiB each), and still a few hundred of the largest possible values.
/// The newest trace is always kept, even alone over budget, so a running flow stays visible.
pub const TRACE_STORE_BYTES: usize = 8 * 1024 * 1024;

/// The marker that ends a truncated value, with the number of bytes cut.
pub(crate) fn truncated_marker(cut: usize) -> String {
    format!("…[truncated {cut} bytes]")
}

/// Cuts `text` to [`TRACE_VALUE_BYTES`] (at a character boundary) and appends the marker.
pub(crate) fn truncate_text(mut text: String) -> String {
    if text.len() <= TRACE_VALUE_BYTES {
        return text;
    }
    let mut keep = TRACE_VALUE_BYTES;
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = text.len() - keep;
    text.truncate(keep);
    // Give the megabyte back instead of keeping it as spare capacity.
    text.shrink_to_fit();
    let _ = write!(text, "{}", truncated_marker(cut));
    text
}

/// [`truncate_text`] on a string value; other values are stored as they are (the attributes
/// here are strings, booleans and numbers), except that a large array or object becomes its
/// truncated JSON text.
pub(crate) fn truncate_value(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(truncate_text(text)),
        Value::Array(_) | Value::Object(_) if json_size(&value) > TRACE_VALUE_BYTES => {
            Value::String(truncate_text(value.to_string()))
        }
        other => other,
    }
}

/// The length of `value`'s JSON serialization, counted without building it.
pub(crate) fn json_size<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing these types cannot fail (string keys only); a failure counts what was written.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

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
        let attributes = attributes
            .into_iter()
            .map(|(k, v)| (k, truncate_value(v)))
            .collect();
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
                self.attributes.insert(
                    "genkit:output".into(),
                    Value::String(truncate_text(output_json.to_owned())),
                );
                self.attributes
                    .insert("genkit:state".into(), Value::String("success".into()));
                self.status = Some(SpanStatus::ok());
            }
            Err(message) => {
                self.attributes
                    .insert("genkit:state".into(), Value::String("error".into()));
                self.status = Some(SpanStatus::error(truncate_text(message.to_owned())));
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

/// The last `capacity` traces, newest (by start) first, at most `budget` bytes in all.
#[derive(Debug)]
pub(crate) struct TraceStore {
    capacity: usize,
    budget: usize,
    inner: Mutex<Stored>,
}

#[derive(Debug, Default)]
struct Stored {
    /// Each trace with its serialized size, computed when it was stored.
    traces: VecDeque<(TraceData, usize)>,
    /// The sum of those sizes.
    bytes: usize,
}

impl Stored {
    /// Evicts the oldest beyond the count, then while over the byte budget (keeping the newest).
    fn evict(&mut self, capacity: usize, budget: usize) {
        while self.traces.len() > capacity || (self.bytes > budget && self.traces.len() > 1) {
            match self.traces.pop_back() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }
}

impl TraceStore {
    pub(crate) fn new(capacity: usize, budget: usize) -> Self {
        Self {
            capacity,
            budget,
            inner: Mutex::new(Stored {
                traces: VecDeque::with_capacity(capacity),
                bytes: 0,
            }),
        }
    }

    /// Adds a new trace at the front, evicting the oldest beyond capacity or budget.
    pub(crate) fn insert(&self, trace: TraceData) {
        let size = json_size(&trace);
        let mut inner = lock(&self.inner);
        inner.traces.push_front((trace, size));
        inner.bytes += size;
        inner.evict(self.capacity, self.budget);
    }

    /// Replaces a trace in place (keeping its position). A trace already evicted by newer runs
    /// stays evicted: re-adding it would push out a newer one.
    pub(crate) fn update(&self, trace: &TraceData) {
        let size = json_size(trace);
        let mut inner = lock(&self.inner);
        let Some(slot) = inner
            .traces
            .iter_mut()
            .find(|(t, _)| t.trace_id == trace.trace_id)
        else {
            return;
        };
        slot.0.clone_from(trace);
        let old = std::mem::replace(&mut slot.1, size);
        inner.bytes = inner.bytes - old + size;
        inner.evict(self.capacity, self.budget);
    }

    pub(crate) fn recent(&self) -> Vec<TraceData> {
        lock(&self.inner)
            .traces
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub(crate) fn get(&self, trace_id: &str) -> Option<TraceData> {
        lock(&self.inner)
            .traces
            .iter()
            .find(|(t, _)| t.trace_id == trace_id)
            .map(|(t, _)| t.clone())
    }

    /// The serialized size of every stored trace, summed.
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here only swaps plain data, so a
/// panic elsewhere cannot leave it half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_of(bytes: usize) -> TraceData {
        let trace_id = new_trace_id();
        let span_id = new_span_id();
        // Built directly (not through `open`), to control the size exactly.
        let mut span = SpanData::open(&trace_id, span_id.clone(), None, "t", BTreeMap::new());
        span.attributes
            .insert("pad".into(), Value::String("p".repeat(bytes)));
        TraceData {
            trace_id,
            display_name: Some("t".into()),
            start_time: span.start_time,
            end_time: 0.0,
            spans: BTreeMap::from([(span_id, span)]),
        }
    }

    #[test]
    fn truncation_cuts_at_a_char_boundary_and_says_how_much() {
        let short = "é".repeat(10);
        assert_eq!(truncate_text(short.clone()), short);
        let long = "é".repeat(TRACE_VALUE_BYTES); // 2 bytes each
        let cut = truncate_text(long);
        let kept = cut
            .strip_suffix(&truncated_marker(TRACE_VALUE_BYTES))
            .unwrap();
        assert_eq!(kept.len(), TRACE_VALUE_BYTES);
        // An odd budget boundary falls inside a char: one byte less is kept.
        let long = format!("a{}", "é".repeat(TRACE_VALUE_BYTES));
        let cut = truncate_text(long.clone());
        let kept = cut
            .strip_suffix(&truncated_marker(long.len() - (TRACE_VALUE_BYTES - 1)))
            .unwrap();
        assert_eq!(kept.len(), TRACE_VALUE_BYTES - 1);
        // Structured values over budget become their (truncated) JSON text.
        let big = Value::Array(vec![Value::from(12_345); TRACE_VALUE_BYTES]);
        assert!(
            truncate_value(big)
                .as_str()
                .unwrap()
                .starts_with("[12345,12345")
        );
        assert_eq!(truncate_value(Value::Bool(true)), Value::Bool(true));
    }

    #[test]
    fn open_and_close_truncate_attributes_output_and_error() {
        let huge = "z".repeat(1 << 20);
        let attributes = BTreeMap::from([("genkit:input".into(), Value::String(huge.clone()))]);
        let mut span = SpanData::open("t", "s".into(), None, "n", attributes);
        assert!(span.attributes["genkit:input"].as_str().unwrap().len() < TRACE_VALUE_BYTES + 64);
        span.close(Ok(&huge));
        assert!(
            span.attributes["genkit:output"]
                .as_str()
                .unwrap()
                .ends_with(&truncated_marker((1 << 20) - TRACE_VALUE_BYTES))
        );
        span.close(Err(&huge));
        let message = span.status.unwrap().message.unwrap();
        assert!(message.ends_with(&truncated_marker((1 << 20) - TRACE_VALUE_BYTES)));
    }

    #[test]
    fn json_size_is_the_serialized_length() {
        let trace = trace_of(1234);
        assert_eq!(json_size(&trace), serde_json::to_vec(&trace).unwrap().len());
    }

    #[test]
    fn the_store_stays_within_its_byte_budget_evicting_the_oldest() {
        let one = json_size(&trace_of(10_000));
        let budget = one * 5 + one / 2; // room for five
        let store = TraceStore::new(100, budget);
        let traces: Vec<_> = (0..20).map(|_| trace_of(10_000)).collect();
        for trace in &traces {
            store.insert(trace.clone());
            assert!(store.bytes() <= budget);
        }
        let kept: Vec<_> = store.recent().into_iter().map(|t| t.trace_id).collect();
        let newest: Vec<_> = traces
            .iter()
            .rev()
            .take(5)
            .map(|t| t.trace_id.clone())
            .collect();
        assert_eq!(kept, newest);
        let sum: usize = store.recent().iter().map(json_size).sum();
        assert_eq!(store.bytes(), sum);

        // A trace growing by update evicts the oldest too, and the sizes stay exact.
        let mut grown = traces[19].clone();
        let span = grown.spans.values_mut().next().unwrap();
        span.attributes
            .insert("more".into(), Value::String("m".repeat(2 * one)));
        store.update(&grown);
        assert!(store.bytes() <= budget);
        let kept = store.recent();
        assert_eq!(kept[0], grown);
        // Five traces of `one` became seven: the oldest two went.
        assert_eq!(kept.len(), 3);
        let sum: usize = kept.iter().map(json_size).sum();
        assert_eq!(store.bytes(), sum);

        // The newest stays even alone over budget; the next insert evicts it.
        let giant = trace_of(budget * 2);
        store.insert(giant.clone());
        assert_eq!(store.recent(), vec![giant]);
        store.insert(trace_of(10));
        assert_eq!(store.recent().len(), 1);
        assert!(store.bytes() <= budget);
    }

    #[test]
    fn the_store_still_bounds_the_count() {
        let store = TraceStore::new(3, usize::MAX);
        for _ in 0..10 {
            store.insert(trace_of(1));
        }
        assert_eq!(store.recent().len(), 3);
        let sum: usize = store.recent().iter().map(json_size).sum();
        assert_eq!(store.bytes(), sum);
    }
}

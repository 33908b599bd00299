//! Genkit's TraceData shape, id generation, and the in-memory store of recent traces.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::record::{LiveRecord, RunRecord};
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

/// The most bytes the recent-traces store keeps (each run's strings plus a fixed cost per span
/// and attribute), besides its count limit ([`TRACE_HISTORY`](crate::TRACE_HISTORY)); the
/// oldest traces are evicted first.
///
/// The count alone does not bound memory: 100 traces of large values are hundreds of MB, and
/// the process runs under container limits of a few hundred MB. 8 MiB keeps the full history
/// of ordinary runs (a few KiB each), and still a few hundred of the largest possible values.
/// The newest trace is always kept, even alone over budget, so a running flow stays visible.
pub const TRACE_STORE_BYTES: usize = 8 * 1024 * 1024;

/// The most one run's record weighs (counted as [`TRACE_STORE_BYTES`] counts), plus the root
/// span's end (the run's output, and the count of steps not recorded): a flow that loops over
/// [`FlowContext::run`](crate::FlowContext::run) records its steps up to here, then only counts
/// the rest (the root span's `multi-server:stepsNotRecorded`); a step that ends with no room
/// left for its output (steps run side by side are let in while they are open) records a
/// marker instead. A run's record lives as long as the run, evicted from the store or not, so
/// the store's budget alone would not bound it. 1 MiB holds some 1,300 steps with short
/// outputs, or 60 of the longest.
pub const TRACE_RUN_BYTES: usize = 1024 * 1024;

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

/// `value` as JSON text. `serde_json::to_string`, not `Value`'s `Display`, which writes
/// through a `fmt::Formatter` a piece at a time (a run records its input and its output).
pub(crate) fn json_text(value: &Value) -> String {
    // A `Value` always serializes (its keys are strings).
    serde_json::to_string(value).unwrap_or_default()
}

/// The length of `value`'s JSON serialization, counted without building it.
#[cfg(test)]
pub(crate) fn json_size<T: Serialize + ?Sized>(value: &T) -> usize {
    use std::io;
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

/// What a span costs in memory besides its strings and attributes: the struct, the times,
/// the map node holding it, the allocations' headers. Also more than the JSON field names and
/// punctuation of a span, so an ordinary trace counts at least its JSON size (a test holds
/// it).
pub(crate) const SPAN_OVERHEAD: usize = 256;
/// What an attribute costs besides its key's and value's bytes (its map slot, the two
/// allocations' headers; in JSON, quotes, colon and comma).
pub(crate) const ATTRIBUTE_OVERHEAD: usize = 64;
/// What a number, boolean or null attribute costs besides its key: the size of a `Value`.
pub(crate) const SCALAR_BYTES: usize = 24;

/// The bytes a trace holds in memory, about: every string's length, plus a fixed cost per span
/// and per attribute. The JSON text of an ordinary trace is a little smaller; escapes can make
/// it larger (a quote is two bytes in JSON), but memory holds the unescaped text, and memory is
/// what the budget bounds. The store counts a run's record with `RunRecord::stored_bytes`,
/// without building the document (serializing one to count it cost ~6,000 instructions per
/// state of a one-span trace); tests check the two agree.
#[cfg(test)]
pub(crate) fn stored_bytes(trace: &TraceData) -> usize {
    let spans: usize = trace
        .spans
        .iter()
        .map(|(key, span)| {
            let attributes: usize = span
                .attributes
                .iter()
                .map(|(key, value)| ATTRIBUTE_OVERHEAD + key.len() + value_bytes(value))
                .sum();
            SPAN_OVERHEAD
                + key.len()
                + span.span_id.len()
                + span.trace_id.len()
                + span.parent_span_id.as_ref().map_or(0, String::len)
                + span.display_name.len()
                + span.instrumentation_library.name.len()
                + span
                    .instrumentation_library
                    .version
                    .as_ref()
                    .map_or(0, String::len)
                + span.span_kind.len()
                + span
                    .status
                    .as_ref()
                    .and_then(|status| status.message.as_ref())
                    .map_or(0, String::len)
                + attributes
        })
        .sum();
    trace.trace_id.len() + trace.display_name.as_ref().map_or(0, String::len) + spans
}

/// A value's bytes: a string's length; a number, boolean or null as a `Value`'s size; an array
/// or object as its JSON length.
#[cfg(test)]
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        Value::Array(_) | Value::Object(_) => json_size(value),
        Value::Null | Value::Bool(_) | Value::Number(_) => SCALAR_BYTES,
    }
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
    /// The name of Genkit's tracer, which every span here names as its library.
    pub(crate) const GENKIT_NAME: &str = "genkit-tracer";
    /// The version of Genkit's tracer.
    pub(crate) const GENKIT_VERSION: &str = "v1";

    pub(crate) fn genkit() -> Self {
        Self {
            name: Self::GENKIT_NAME.into(),
            version: Some(Self::GENKIT_VERSION.into()),
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

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
pub(crate) fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A W3C trace id: 32 lower-case hex digits, never all zero (all-zero is "invalid").
pub(crate) fn new_trace_id() -> Arc<str> {
    let id: u128 = loop {
        let id = rand::random::<u128>();
        if id != 0 {
            break id;
        }
    };
    Arc::from(hex_into(&id.to_be_bytes(), &mut [0; 32]))
}

/// A W3C span id: 16 lower-case hex digits, never all zero.
pub(crate) fn new_span_id() -> String {
    let id: u64 = loop {
        let id = rand::random::<u64>();
        if id != 0 {
            break id;
        }
    };
    hex(&id.to_be_bytes())
}

/// Lower-case hex of `bytes`, two digits each: what `format!("{id:032x}")` gives.
fn hex(bytes: &[u8]) -> String {
    hex_into(bytes, &mut [0; 32]).to_owned()
}

/// [`hex`] of at most 16 bytes, written into `text`: without the formatting machinery (a
/// run's two ids, random draws included, went from 1,499 instructions to 858, callgrind), and
/// as bytes checked once rather than a `char` pushed at a time.
fn hex_into<'a>(bytes: &[u8], text: &'a mut [u8; 32]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let text = &mut text[..2 * bytes.len()];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    std::str::from_utf8(text).expect("hex digits are ASCII")
}

/// The last `capacity` traces, newest first (by when each was announced: the end of its
/// run's first poll), at most `budget` bytes in all.
///
/// It keeps each run's live record, and builds a trace's document when one is read.
///
/// Lock order: a record's lock, then the store's. Publishing holds the first while it tells
/// the store the new size; readers take a record's lock only after letting go of the store's.
#[derive(Debug)]
pub(crate) struct TraceStore {
    capacity: usize,
    budget: usize,
    inner: Mutex<Stored>,
}

#[derive(Debug, Default)]
struct Stored {
    traces: VecDeque<StoredTrace>,
    /// The sum of their sizes.
    bytes: usize,
}

#[derive(Debug)]
struct StoredTrace {
    /// The trace's id, kept here so finding one takes no record's lock.
    trace_id: Arc<str>,
    record: LiveRecord,
    /// The `RunRecord::stored_bytes` of the state last published.
    size: usize,
}

impl Stored {
    /// Evicts the oldest beyond the count, then while over the byte budget (keeping the newest).
    fn evict(&mut self, capacity: usize, budget: usize) {
        while self.traces.len() > capacity || (self.bytes > budget && self.traces.len() > 1) {
            match self.traces.pop_back() {
                Some(evicted) => self.bytes -= evicted.size,
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

    /// Adds a new run at the front, evicting the oldest beyond capacity or budget. `state` is
    /// what `record` holds now (its lock is the caller's).
    pub(crate) fn insert(&self, record: &LiveRecord, state: &RunRecord) {
        let size = state.stored_bytes();
        let mut inner = lock(&self.inner);
        inner.traces.push_front(StoredTrace {
            trace_id: state.trace_id.clone(),
            record: Arc::clone(record),
            size,
        });
        inner.bytes += size;
        inner.evict(self.capacity, self.budget);
    }

    /// Accounts for a new state of a stored run. A run already evicted by newer runs stays
    /// evicted: re-adding it would push out a newer one.
    pub(crate) fn update(&self, record: &LiveRecord, state: &RunRecord) {
        let size = state.stored_bytes();
        let mut inner = lock(&self.inner);
        let Some(slot) = inner
            .traces
            .iter_mut()
            .find(|stored| Arc::ptr_eq(&stored.record, record))
        else {
            return;
        };
        let old = std::mem::replace(&mut slot.size, size);
        inner.bytes = inner.bytes - old + size;
        inner.evict(self.capacity, self.budget);
    }

    pub(crate) fn recent(&self) -> Vec<TraceData> {
        let records: Vec<LiveRecord> = lock(&self.inner)
            .traces
            .iter()
            .map(|stored| Arc::clone(&stored.record))
            .collect();
        records
            .iter()
            .map(|record| lock(record).to_trace())
            .collect()
    }

    pub(crate) fn get(&self, trace_id: &str) -> Option<TraceData> {
        let record = lock(&self.inner)
            .traces
            .iter()
            .find(|stored| *stored.trace_id == *trace_id)
            .map(|stored| Arc::clone(&stored.record))?;
        Some(lock(&record).to_trace())
    }

    /// The sizes of every stored run, summed.
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
    use crate::record::{Outcome, SpanRecord};

    /// An open run whose input is `bytes` long.
    fn record_of(bytes: usize) -> RunRecord {
        RunRecord::new(
            new_trace_id(),
            BTreeMap::new(),
            "p".repeat(bytes),
            SpanRecord::open(new_span_id(), "t".into(), "/{t,t:action,s:flow}".into()),
        )
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
    }

    #[test]
    fn outputs_errors_and_long_names_are_cut_in_the_document() {
        let huge = "z".repeat(1 << 20);
        let marker = truncated_marker((1 << 20) - TRACE_VALUE_BYTES);
        let Outcome::Success(output) = Outcome::of(Ok(huge.clone())) else {
            panic!("not a success")
        };
        assert!(output.ends_with(&marker));
        let Outcome::Failure(message) = Outcome::of(Err(&huge)) else {
            panic!("not a failure")
        };
        assert!(message.ends_with(&marker));

        let mut record = record_of(1);
        record.root.name = huge.clone().into();
        record.root.close(Outcome::of(Err(&huge)));
        let trace = record.to_trace();
        let root = trace.root_span().unwrap();
        assert!(
            root.attributes["genkit:name"]
                .as_str()
                .unwrap()
                .ends_with(&marker)
        );
        assert!(
            root.status
                .as_ref()
                .unwrap()
                .message
                .as_ref()
                .unwrap()
                .ends_with(&marker)
        );
        assert_eq!(
            root.display_name, huge,
            "the display name is the name itself"
        );
    }

    #[test]
    fn ids_are_lower_case_hex_of_their_width() {
        assert_eq!(
            hex(&0x0123_4567_89ab_cdef_u64.to_be_bytes()),
            "0123456789abcdef"
        );
        assert_eq!(hex(&1u128.to_be_bytes()), format!("{:032x}", 1u128));
        let (trace, span) = (new_trace_id(), new_span_id());
        assert_eq!((trace.len(), span.len()), (32, 16));
        assert!(
            (trace.to_string() + &span)
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn json_size_is_the_serialized_length() {
        let trace = record_of(1234).to_trace();
        assert_eq!(json_size(&trace), serde_json::to_vec(&trace).unwrap().len());
    }

    #[test]
    fn a_record_weighs_what_its_document_holds_and_at_least_its_json() {
        let mut record = record_of(1234);
        record.labels.insert("batch".into(), "b7".into());
        let open = record.stored_bytes();
        assert_eq!(open, stored_bytes(&record.to_trace()));
        let step = record
            .open_step(SpanRecord::open(
                new_span_id(),
                "compose".into(),
                "/{t}/{compose}".into(),
            ))
            .unwrap();
        // Kept as the steps change, it still equals the weight of the whole document.
        assert_eq!(record.stored_bytes(), stored_bytes(&record.to_trace()));
        record.close_step(step, Outcome::of(Err("no luck")));
        assert_eq!(record.stored_bytes(), stored_bytes(&record.to_trace()));
        record
            .root
            .close(Outcome::of(Ok("\"a result\"".to_owned())));
        let done = record.stored_bytes();
        let trace = record.to_trace();
        assert_eq!(done, stored_bytes(&trace));
        assert!(done > open + SPAN_OVERHEAD);
        assert!(json_size(&trace) <= done, "{} > {done}", json_size(&trace));
        assert!(done < json_size(&trace) + 1024);
    }

    #[test]
    fn a_label_named_like_a_root_attribute_gives_way_to_it_and_weighs_nothing() {
        let mut record = record_of(10);
        for (key, value) in [("genkit:type", "x"), ("genkit:output", "y"), ("team", "t")] {
            record.labels.insert(key.into(), value.into());
        }
        let open = record.to_trace();
        let attributes = &open.root_span().unwrap().attributes;
        assert_eq!(attributes["genkit:type"], "action");
        assert_eq!(
            attributes["genkit:output"], "y",
            "the root has no output yet"
        );
        assert_eq!(attributes["team"], "t");
        assert_eq!(record.stored_bytes(), stored_bytes(&open));

        record.root.close(Outcome::of(Ok("1".to_owned())));
        let done = record.to_trace();
        assert_eq!(done.root_span().unwrap().attributes["genkit:output"], "1");
        assert_eq!(record.stored_bytes(), stored_bytes(&done));
    }

    /// Stores `record` as a new live run, as a run's start does.
    fn insert(store: &TraceStore, record: RunRecord) -> LiveRecord {
        let live = Arc::new(Mutex::new(record));
        store.insert(&live, &lock(&live));
        live
    }

    #[test]
    fn the_store_stays_within_its_byte_budget_evicting_the_oldest() {
        let one = record_of(10_000).stored_bytes();
        let budget = one * 5 + one / 2; // room for five
        let store = TraceStore::new(100, budget);
        let records: Vec<_> = (0..20).map(|_| record_of(10_000)).collect();
        let mut live = Vec::new();
        for record in &records {
            live.push(insert(&store, record.clone()));
            assert!(store.bytes() <= budget);
        }
        let kept: Vec<_> = store.recent().into_iter().map(|t| t.trace_id).collect();
        let newest: Vec<_> = records
            .iter()
            .rev()
            .take(5)
            .map(|r| r.trace_id.to_string())
            .collect();
        assert_eq!(kept, newest);
        let sum: usize = store.recent().iter().map(stored_bytes).sum();
        assert_eq!(store.bytes(), sum);

        // A run growing by update evicts the oldest too, and the sizes stay exact.
        let grown = {
            let mut record = lock(&live[19]);
            record.input.push_str(&"m".repeat(2 * one));
            store.update(&live[19], &record);
            record.to_trace()
        };
        assert!(store.bytes() <= budget);
        let kept = store.recent();
        assert_eq!(kept[0], grown);
        // Five runs of `one` became seven: the oldest two went.
        assert_eq!(kept.len(), 3);
        let sum: usize = kept.iter().map(stored_bytes).sum();
        assert_eq!(store.bytes(), sum);

        // An evicted run's update does not bring it back.
        let evicted = &live[0];
        store.update(evicted, &lock(evicted));
        assert_eq!(store.recent().len(), 3);
        assert!(store.get(&records[0].trace_id).is_none());

        // The newest stays even alone over budget; the next insert evicts it.
        let giant = record_of(budget * 2);
        insert(&store, giant.clone());
        assert_eq!(store.recent(), vec![giant.to_trace()]);
        insert(&store, record_of(10));
        assert_eq!(store.recent().len(), 1);
        assert!(store.bytes() <= budget);
    }

    #[test]
    fn the_store_still_bounds_the_count() {
        let store = TraceStore::new(3, usize::MAX);
        for _ in 0..10 {
            insert(&store, record_of(1));
        }
        assert_eq!(store.recent().len(), 3);
        let sum: usize = store.recent().iter().map(stored_bytes).sum();
        assert_eq!(store.bytes(), sum);
    }
}

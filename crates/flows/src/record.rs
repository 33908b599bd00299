//! What a run records as it goes, and Genkit's `TraceData` built from it when someone reads it.
//!
//! A run's trace changes at its start, at each step's start and end, and at its end; it is read
//! far less often (the Dev UI and the tools ask for some traces, the telemetry server gets each
//! state only when one is known). So a run records plain facts (ids, times, the input and
//! output text, the outcome) and the document, a map of string attributes per span, is built
//! only when asked for (a poem `runAction` went from 82 allocations to 63, callgrind).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::trace::{
    InstrumentationLibrary, SpanData, SpanStatus, TRACE_RUN_BYTES, TRACE_VALUE_BYTES, TraceData,
    now_ms, truncate_text,
};

/// A run's record as it keeps changing, shared by the run and the store: publishing a new
/// state copies nothing, and readers build the document of the state they find.
pub(crate) type LiveRecord = Arc<Mutex<RunRecord>>;

/// How a span ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Its output, as JSON text (cut to [`TRACE_VALUE_BYTES`]).
    Success(String),
    /// Its error message (cut to [`TRACE_VALUE_BYTES`]).
    Failure(String),
}

impl Outcome {
    /// The outcome of a span that produced `output` (JSON text) or failed with a message.
    pub(crate) fn of(output: Result<String, &str>) -> Self {
        match output {
            Ok(json) => Outcome::Success(truncate_text(json)),
            Err(message) => Outcome::Failure(truncate_text(message.to_owned())),
        }
    }
}

/// One span: the run's root, or one of its steps.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    /// 16 lower-case hex digits.
    pub(crate) span_id: String,
    /// The flow's or the step's name (shared: a flow's root spans all have the same).
    pub(crate) name: Arc<str>,
    /// Genkit's `genkit:path` of the span.
    pub(crate) path: Arc<str>,
    /// Milliseconds since the Unix epoch.
    pub(crate) start_time: f64,
    /// Milliseconds since the Unix epoch; 0 while the span is open.
    pub(crate) end_time: f64,
    /// `None` while the span is open.
    pub(crate) outcome: Option<Outcome>,
}

impl SpanRecord {
    /// A span opening now.
    pub(crate) fn open(span_id: String, name: Arc<str>, path: Arc<str>) -> Self {
        Self {
            span_id,
            name,
            path,
            start_time: now_ms(),
            end_time: 0.0,
            outcome: None,
        }
    }

    /// Closes the span now (never before it began), with `outcome`.
    pub(crate) fn close(&mut self, outcome: Outcome) {
        self.end_time = now_ms().max(self.start_time);
        self.outcome = Some(outcome);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.outcome.is_none()
    }
}

/// One run: its root span and its steps, in the order they began.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    /// 32 lower-case hex digits.
    pub(crate) trace_id: Arc<str>,
    /// The run's telemetry labels (values cut to [`TRACE_VALUE_BYTES`]), attributes of its
    /// root span.
    pub(crate) labels: BTreeMap<String, String>,
    /// The input as JSON text (cut to [`TRACE_VALUE_BYTES`]).
    pub(crate) input: String,
    pub(crate) root: SpanRecord,
    /// Every span is a child of the root: steps started inside steps too, as Genkit's own
    /// runtimes record flow steps. Changed only by [`open_step`](Self::open_step) and
    /// [`close_step`](Self::close_step), which keep `steps_bytes`.
    steps: Vec<SpanRecord>,
    /// What `steps` weigh in the store's budget, kept as they change: weighing a record that
    /// grows by a step at a time costs no walk over its steps.
    steps_bytes: usize,
    /// Steps begun once the record weighed [`TRACE_RUN_BYTES`]: they ran, unrecorded.
    steps_unrecorded: u64,
    /// Recorded steps not closed yet: each keeps room for its end ([`END_ROOM`]).
    steps_open: usize,
    /// Whether the run has been made visible (`RunShared::announce`): from then on, every
    /// change is published. Kept in the locked record, so a change and the question whether
    /// to publish it are read together.
    pub(crate) announced: bool,
}

/// The most a step's weight grows when it ends with [`NOT_RECORDED`] for its output or error:
/// the room each open step keeps, so that the record never passes [`TRACE_RUN_BYTES`] however
/// many steps end together.
const END_ROOM: usize = 2 * crate::trace::ATTRIBUTE_OVERHEAD
    + "genkit:output".len()
    + "genkit:state".len()
    + "success".len()
    + NOT_RECORDED.len()
    + 2;

/// The root attribute counting a run's unrecorded steps, once there are any (reserved: a
/// telemetry label of that name is not recorded).
pub const STEPS_NOT_RECORDED: &str = "multi-server:stepsNotRecorded";

/// What a step's output (as a JSON string) or error says when the run's record had no room
/// left for it.
pub(crate) const NOT_RECORDED: &str = "…[not recorded: the run's trace is full]";

/// An attribute's value, as the document will hold it.
enum Attribute<'a> {
    Text(Cow<'a, str>),
    Flag(bool),
    Count(u64),
}

impl<'a> Attribute<'a> {
    fn text(text: &'a str) -> Self {
        Attribute::Text(Cow::Borrowed(text))
    }
}

impl RunRecord {
    /// A run's record as it begins: no steps yet.
    pub(crate) fn new(
        trace_id: Arc<str>,
        labels: BTreeMap<String, String>,
        input: String,
        root: SpanRecord,
    ) -> Self {
        RunRecord {
            trace_id,
            labels,
            input,
            root,
            steps: Vec::new(),
            steps_bytes: 0,
            steps_unrecorded: 0,
            steps_open: 0,
            announced: false,
        }
    }

    /// Records `step` as begun, and returns its index for [`close_step`](Self::close_step);
    /// `None` once the record weighs [`TRACE_RUN_BYTES`] (the step is only counted, in the
    /// root's [`STEPS_NOT_RECORDED`]).
    pub(crate) fn open_step(&mut self, step: SpanRecord) -> Option<usize> {
        let bytes = self.span_bytes(&step);
        if self.stored_bytes() + bytes + (self.steps_open + 1) * END_ROOM > TRACE_RUN_BYTES {
            self.steps_unrecorded += 1;
            return None;
        }
        self.steps_open += 1;
        self.steps_bytes += bytes;
        self.steps.push(step);
        Some(self.steps.len() - 1)
    }

    /// Closes the step [`open_step`](Self::open_step) gave `index` with `outcome`.
    /// An output or message that would take the record past [`TRACE_RUN_BYTES`] is recorded
    /// as [`NOT_RECORDED`] instead: steps that ran side by side were each let in while open
    /// and small.
    pub(crate) fn close_step(&mut self, index: usize, outcome: Outcome) {
        let before = self.span_bytes(&self.steps[index]);
        // Closed already when the run ended while the step ran (by another task): closed
        // again with what it did, its room given back once.
        if self.steps[index].is_open() {
            self.steps_open -= 1;
        }
        self.steps[index].close(outcome);
        let mut after = self.span_bytes(&self.steps[index]);
        // The other open steps' room stays kept.
        if self.stored_bytes() - before + after + self.steps_open * END_ROOM > TRACE_RUN_BYTES {
            let step = &mut self.steps[index];
            step.outcome = Some(match step.outcome.take() {
                Some(Outcome::Success(_)) => Outcome::Success(format!("\"{NOT_RECORDED}\"")),
                _ => Outcome::Failure(NOT_RECORDED.to_owned()),
            });
            after = self.span_bytes(&self.steps[index]);
        }
        self.steps_bytes = self.steps_bytes - before + after;
    }

    /// Closes every step still open with `outcome`.
    pub(crate) fn close_open_steps(&mut self, outcome: impl Fn() -> Outcome) {
        for index in 0..self.steps.len() {
            if self.steps[index].is_open() {
                self.close_step(index, outcome());
            }
        }
    }

    /// Genkit's `TraceData` of this state: what the Dev UI, the tools and the telemetry server
    /// read.
    pub(crate) fn to_trace(&self) -> TraceData {
        let spans = std::iter::once((&self.root, None))
            .chain(
                self.steps
                    .iter()
                    .map(|step| (step, Some(&self.root.span_id))),
            )
            .map(|(span, parent)| {
                let mut attributes = BTreeMap::new();
                self.each_attribute(span, |key, value| {
                    let value = match value {
                        Attribute::Text(text) => Value::String(text.into_owned()),
                        Attribute::Flag(flag) => Value::Bool(flag),
                        Attribute::Count(count) => Value::from(count),
                    };
                    attributes.insert(key.to_owned(), value);
                });
                let data = SpanData {
                    span_id: span.span_id.clone(),
                    trace_id: self.trace_id.to_string(),
                    parent_span_id: parent.cloned(),
                    start_time: span.start_time,
                    end_time: span.end_time,
                    attributes,
                    display_name: span.name.to_string(),
                    instrumentation_library: InstrumentationLibrary::genkit(),
                    span_kind: SPAN_KIND.to_owned(),
                    status: span.outcome.as_ref().map(|outcome| match outcome {
                        Outcome::Success(_) => SpanStatus::ok(),
                        Outcome::Failure(message) => SpanStatus::error(message.clone()),
                    }),
                };
                (span.span_id.clone(), data)
            })
            .collect();
        TraceData {
            trace_id: self.trace_id.to_string(),
            display_name: Some(self.root.name.to_string()),
            start_time: self.root.start_time,
            end_time: self.root.end_time,
            spans,
        }
    }

    /// What this record weighs in the store's budget: what its document would hold in memory,
    /// about ([`stored_bytes`](crate::trace::stored_bytes) of [`to_trace`](Self::to_trace)),
    /// counted without building it.
    pub(crate) fn stored_bytes(&self) -> usize {
        self.span_bytes(&self.root) + self.steps_bytes + self.trace_id.len() + self.root.name.len()
    }

    /// What one span of this record weighs in its document: the root, or a step (recorded or
    /// about to be).
    fn span_bytes(&self, span: &SpanRecord) -> usize {
        let per_span = crate::trace::SPAN_OVERHEAD
            + self.trace_id.len()
            + InstrumentationLibrary::GENKIT_NAME.len()
            + InstrumentationLibrary::GENKIT_VERSION.len()
            + SPAN_KIND.len();
        let mut attributes = 0;
        self.each_attribute(span, |key, value| {
            attributes += crate::trace::ATTRIBUTE_OVERHEAD
                + key.len()
                + match value {
                    Attribute::Text(text) => text.len(),
                    Attribute::Flag(_) | Attribute::Count(_) => crate::trace::SCALAR_BYTES,
                };
        });
        let parent = if std::ptr::eq(span, &self.root) {
            0
        } else {
            self.root.span_id.len()
        };
        let message = match &span.outcome {
            Some(Outcome::Failure(message)) => message.len(),
            _ => 0,
        };
        // The span id twice: the map's key and the span's field.
        per_span + 2 * span.span_id.len() + parent + span.name.len() + message + attributes
    }

    /// Whether the root span's document sets `key` itself (in its current state).
    fn root_sets(&self, key: &str) -> bool {
        match key {
            "genkit:type"
            | "genkit:metadata:subtype"
            | "genkit:isRoot"
            | "genkit:input"
            | "genkit:name"
            | "genkit:path" => true,
            "genkit:output" => matches!(self.root.outcome, Some(Outcome::Success(_))),
            STEPS_NOT_RECORDED => true,
            "genkit:state" => !self.root.is_open(),
            _ => false,
        }
    }

    /// Calls `f` with every attribute of `span`'s document: the one list both the document and
    /// its weight are made from.
    fn each_attribute(&self, span: &SpanRecord, mut f: impl FnMut(&str, Attribute<'_>)) {
        let is_root = std::ptr::eq(span, &self.root);
        if is_root {
            // A label named like one of the root's own attributes is overwritten by it in the
            // document: not reported, so the document and its weight agree.
            for (key, value) in &self.labels {
                if !self.root_sets(key) {
                    f(key, Attribute::text(value));
                }
            }
            f("genkit:type", Attribute::text("action"));
            f("genkit:metadata:subtype", Attribute::text("flow"));
            f("genkit:isRoot", Attribute::Flag(true));
            f("genkit:input", Attribute::text(&self.input));
            if self.steps_unrecorded > 0 {
                f(STEPS_NOT_RECORDED, Attribute::Count(self.steps_unrecorded));
            }
        } else {
            f("genkit:type", Attribute::text("flowStep"));
        }
        f("genkit:name", Attribute::Text(cut(&span.name)));
        f("genkit:path", Attribute::Text(cut(&span.path)));
        match &span.outcome {
            None => {}
            Some(Outcome::Success(output)) => {
                f("genkit:output", Attribute::text(output));
                f("genkit:state", Attribute::text("success"));
            }
            Some(Outcome::Failure(_)) => f("genkit:state", Attribute::text("error")),
        }
    }
}

/// Every span's `spanKind` here.
const SPAN_KIND: &str = "INTERNAL";

/// A name or path as an attribute: cut to [`TRACE_VALUE_BYTES`] with the marker, as every
/// recorded value is (names come from the program, so this is only a bound).
fn cut(text: &str) -> Cow<'_, str> {
    if text.len() <= TRACE_VALUE_BYTES {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(truncate_text(text.to_owned()))
    }
}

//! The one error type of a flow run, shaped like Genkit's `Status`.

use std::fmt;

use serde_json::{Map, Value, json};

/// A gRPC canonical status code, the `code` of a Genkit `Status`.
///
/// Serializes as its number (`3`, not `"InvalidArgument"`), because that is what Genkit's
/// tools read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusCode {
    /// The run was cancelled: `Registry::cancel`, or the caller went away.
    Cancelled = 1,
    /// The input did not match the flow's input type.
    InvalidArgument = 3,
    /// No action has that key.
    NotFound = 5,
    /// Too much at once (a server's limit of runs in flight).
    ResourceExhausted = 8,
    /// A method or feature the runtime does not have.
    Unimplemented = 12,
    /// Anything else: the flow failed or panicked.
    Internal = 13,
    /// The runtime is shutting down.
    Unavailable = 14,
}

impl StatusCode {
    /// The numeric gRPC code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The canonical name, e.g. `INVALID_ARGUMENT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCELLED",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status a plain JSON API (not the reflection API, which answers 200) answers
    /// it with: 400 bad input, 404 unknown, 409 cancelled, 429, 501, 503, 500 for the rest.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::NotFound => 404,
            Self::Cancelled => 409,
            Self::ResourceExhausted => 429,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

/// Why a flow run (or the attempt to start one) failed.
///
/// Flow functions return it too: build one with [`FlowError::internal`] and friends. The
/// registry fills in [`trace_id`](FlowError::trace_id) of every error that belongs to a run,
/// so a caller can always point at the trace.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FlowError {
    /// The status code; servers map it with [`FlowError::http_status`].
    pub code: StatusCode,
    /// Human-readable reason, shown as is by the `genkit` CLI.
    pub message: String,
    /// The run's trace, when the error came from a run.
    pub trace_id: Option<String>,
    /// Optional stack or location text, sent as `details.stack`.
    pub stack: Option<String>,
}

impl FlowError {
    /// An error with the given code and message and no trace yet.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            trace_id: None,
            stack: None,
        }
    }

    /// `INVALID_ARGUMENT` (3): the input is wrong.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::InvalidArgument, message)
    }

    /// `NOT_FOUND` (5): no such action, or no such thing the flow looked for.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NotFound, message)
    }

    /// `INTERNAL` (13): anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Internal, message)
    }

    /// `CANCELLED` (1) with Genkit's own wording, "Action was cancelled".
    pub fn cancelled() -> Self {
        Self::new(StatusCode::Cancelled, "Action was cancelled")
    }

    /// The same error, tied to a trace.
    #[must_use = "returns a new error; the original is unchanged"]
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// The same error, with stack text.
    #[must_use = "returns a new error; the original is unchanged"]
    pub fn with_stack(mut self, stack: impl Into<String>) -> Self {
        self.stack = Some(stack.into());
        self
    }

    /// Genkit's `Status` object:
    /// `{"code": N, "message": "...", "details": {"traceId": "...", "stack"?: "..."}}`.
    pub fn to_status(&self) -> Value {
        let mut details = Map::new();
        if let Some(trace_id) = &self.trace_id {
            details.insert("traceId".into(), Value::String(trace_id.clone()));
        }
        if let Some(stack) = &self.stack {
            details.insert("stack".into(), Value::String(stack.clone()));
        }
        json!({ "code": self.code, "message": self.message, "details": details })
    }

    /// The HTTP status a plain JSON API should answer it with ([`StatusCode::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

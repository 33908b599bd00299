//! `POST /flow/<name>`: run a registered flow. JSON body = input; JSON answer
//! `{"result": ...}`; streaming as Server-Sent Events (`Accept: text/event-stream`) or NDJSON
//! (`?stream=true`). Errors are JSON with the flow's status code name and the trace id.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT, CONTENT_TYPE, HeaderName};
use actix_web::web::{Bytes, Data, Path, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use edge::Edge;
use flows::{FlowError, FlowRun, Registry, RunOptions};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::middleware::{content_length, reply};

#[derive(Debug, Deserialize)]
pub(crate) struct RunQuery {
    stream: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Whole,
    Sse,
    Ndjson,
}

/// `POST /flow/{name}`: a flow with no resource of its own (see [`resource_of`]).
pub(crate) async fn run_named_flow(
    req: HttpRequest,
    name: Path<String>,
    query: Query<RunQuery>,
    body: Payload,
    registry: Data<Arc<Registry>>,
    edge: Data<Edge>,
) -> HttpResponse {
    let key = format!("/flow/{name}");
    run_flow(req, &key, query, body, registry, edge).await
}

/// The resource of one flow's own path (`key`, `/flow/<name>`), when its name is one that
/// actix's patterns take as text (letters, digits, `-`, `_`, `.`, `~`: what needs no
/// percent-encoding, and no `{` that would make it a pattern).
pub(crate) fn resource_of(key: &str) -> Option<actix_web::Resource> {
    let name = key.strip_prefix("/flow/")?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
    if name.is_empty() || !name.bytes().all(plain) {
        return None;
    }
    let shared_key: Arc<str> = Arc::from(key);
    Some(crate::routes::post(
        key,
        move |req: HttpRequest,
              query: Query<RunQuery>,
              body: Payload,
              registry: Data<Arc<Registry>>,
              edge: Data<Edge>| {
            let key = Arc::clone(&shared_key);
            async move { run_flow(req, &key, query, body, registry, edge).await }
        },
    ))
}

async fn run_flow(
    req: HttpRequest,
    key: &str,
    query: Query<RunQuery>,
    body: Payload,
    registry: Data<Arc<Registry>>,
    edge: Data<Edge>,
) -> HttpResponse {
    let body = match edge::read_body(body, content_length(&req), edge.limits()).await {
        Ok(body) => body,
        Err(err) => return reply(err.reply()),
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(refusal) = edge::errors::non_json_body(content_type, &body) {
        return reply(refusal);
    }
    // An empty body is no input (null): flows that take none accept it, others say why not.
    let input = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(input) => input,
            Err(err) => {
                return reply(edge::errors::error(
                    http::StatusCode::BAD_REQUEST,
                    &format!("invalid JSON body: {err}"),
                ));
            }
        }
    };
    let accepts_sse = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let mode = if accepts_sse {
        Mode::Sse
    } else if query.stream.as_deref() == Some("true") {
        Mode::Ndjson
    } else {
        Mode::Whole
    };
    let options = RunOptions {
        stream: mode != Mode::Whole,
        ..RunOptions::default()
    };
    let run = match registry.start(key, input, options) {
        Ok(run) => run,
        Err(err) => return flow_error(&err),
    };
    // Rejected input is a plain 400, even when a stream was asked for.
    if let Some(err) = run.rejected() {
        return flow_error(err);
    }
    let trace_id = run.trace_id.clone();
    if mode == Mode::Whole {
        return match run.result().await {
            Ok(result) => {
                let body = result_body(&result, &trace_id);
                HttpResponse::Ok()
                    .insert_header((TRACE_ID_HEADER.clone(), &*trace_id))
                    .content_type("application/json")
                    .body(body)
            }
            Err(err) => flow_error(&err),
        };
    }
    // A streamed body: the middleware keeps the request in flight (for drain and logs) until
    // the stream's last event.
    let content_type = if mode == Mode::Sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((TRACE_ID_HEADER.clone(), &*trace_id))
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events(run, mode))
}

// A static name: one given as text is parsed and copied per response.
static TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-genkit-trace-id");

/// `{"result": …, "traceId": …}` as JSON text, from a borrowed struct rather than a `json!`
/// value (which allocates its keys and a map).
fn result_body(result: &Value, trace_id: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Answer<'a> {
        result: &'a Value,
        #[serde(rename = "traceId")]
        trace_id: &'a str,
    }
    // Borrowed text and a `Value` always serialize (string keys only).
    serde_json::to_vec(&Answer { result, trace_id }).unwrap_or_default()
}

/// A flow's error as JSON: `{"error": message, "code": "INVALID_ARGUMENT", "traceId": ...}`.
fn flow_error(err: &FlowError) -> HttpResponse {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(error_body(err))
}

fn error_body(err: &FlowError) -> Value {
    json!({
        "error": err.message,
        "code": err.code.name(),
        "status": err.http_status(),
        "traceId": err.trace_id,
    })
}

/// Chunks as they come, then the result (or the error) as the last event.
fn events(
    run: FlowRun,
    mode: Mode,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    stream::unfold(Some(run), move |state| async move {
        let mut run = state?;
        if let Some(chunk) = run.next_chunk().await {
            let event = match mode {
                Mode::Sse => format!("data: {chunk}\n\n"),
                _ => format!("{}\n", json!({ "chunk": chunk })),
            };
            return Some((Ok(Bytes::from(event)), Some(run)));
        }
        let (kind, body) = match run.result().await {
            Ok(result) => ("result", json!({ "result": result })),
            Err(err) => ("error", error_body(&err)),
        };
        let event = match mode {
            Mode::Sse => format!("event: {kind}\ndata: {body}\n\n"),
            _ => format!("{body}\n"),
        };
        Some((Ok(Bytes::from(event)), None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_body_is_what_its_value_would_serialize_to() {
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        for result in [
            json!("Hello, \"Alice\"!"),
            json!({"a": [1, 2.5, null]}),
            Value::Null,
        ] {
            let expected = json!({ "result": result, "traceId": trace_id });
            assert_eq!(
                result_body(&result, trace_id),
                serde_json::to_vec(&expected).unwrap()
            );
        }
    }
}

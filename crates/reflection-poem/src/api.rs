//! The Reflection API's handlers, shapes and status codes as the genkit CLI expects them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flows::{FlowError, FlowRun, RunOptions, StatusCode as FlowCode};
use futures_util::{FutureExt, stream};
use poem::http::StatusCode;
use poem::http::header::{CONTENT_TYPE, HeaderName};
use poem::web::Query;
use poem::{Body, Endpoint, Request, Response, ResponseParts, Route, get, handler, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::State;

/// The routes' templates (the metrics' `http_route`), as [`routes`] mounts them.
pub(crate) const ROUTES: &[&str] = &[
    "/api/__health",
    "/api/actions",
    "/api/runAction",
    "/api/cancelAction",
    "/api/notify",
    "/api/values",
    "/api/envs",
    "/api/__quitquitquit",
    "/__test/slow",
    "/__test/panic",
    "/__test/echo",
];

pub(crate) fn routes(route: Route, state: &Arc<State>) -> Route {
    route
        .at("/api/__health", get(Answering::new(state, health)))
        .at("/api/actions", get(Answering::new(state, actions)))
        .at("/api/runAction", post(Stateful::new(state, run_action)))
        .at(
            "/api/cancelAction",
            post(Stateful::new(state, cancel_action)),
        )
        .at("/api/notify", post(Stateful::new(state, notify)))
        .at("/api/values", get(values))
        .at("/api/envs", get(envs))
        .at(
            "/api/__quitquitquit",
            get(Answering::new(state, quit)).post(Answering::new(state, quit)),
        )
}

/// A route's handler, given the server's [`State`], the request and its body with each
/// request. Not poem's `Data`: that puts the state into every request's extensions, a map and
/// a box per request (~420 instructions per health check, callgrind).
pub(crate) struct Stateful<F> {
    state: Arc<State>,
    handle: F,
}

impl<F> Stateful<F> {
    pub(crate) fn new(state: &Arc<State>, handle: F) -> Self {
        Stateful {
            state: Arc::clone(state),
            handle,
        }
    }
}

impl<F, Fut> Endpoint for Stateful<F>
where
    F: Fn(Arc<State>, Request, Body) -> Fut + Send + Sync,
    Fut: Future<Output = Response> + Send,
{
    type Output = Response;

    fn call(&self, mut req: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        let body = req.take_body();
        (self.handle)(Arc::clone(&self.state), req, body).map(Ok)
    }
}

/// The JSON answer to an error poem raised on `path` (a 404 or 405 from its router, an
/// extractor's refusal).
pub(crate) fn poem_error(err: &poem::Error, path: &str) -> Response {
    reply(edge::errors::for_status(err.status(), path, allow(path)))
}

/// A [`Stateful`] handler that answers without waiting: given the state by reference, its
/// answer ready at once (no clone of the state, and a smaller future for poem to box).
pub(crate) struct Answering<F> {
    state: Arc<State>,
    answer: F,
}

impl<F> Answering<F> {
    pub(crate) fn new(state: &Arc<State>, answer: F) -> Self {
        Answering {
            state: Arc::clone(state),
            answer,
        }
    }
}

impl<F> Endpoint for Answering<F>
where
    F: Fn(&State, &Request) -> poem::Result<Response> + Send + Sync,
{
    type Output = Response;

    fn call(&self, req: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        std::future::ready((self.answer)(&self.state, &req))
    }
}

/// The methods a path of [`routes`] takes, for the `Allow` header of a 405 (poem answers
/// `HEAD` on every `GET` route).
pub(crate) fn allow(path: &str) -> Option<&'static str> {
    match path {
        "/api/__health" | "/api/actions" | "/api/values" | "/api/envs" => Some("GET, HEAD"),
        "/api/runAction" | "/api/cancelAction" | "/api/notify" => Some("POST"),
        "/api/__quitquitquit" => Some("GET, HEAD, POST"),
        _ => None,
    }
}

/// An answer the edge built, as a poem response.
pub(crate) fn reply(reply: edge::Reply) -> Response {
    let (parts, body) = reply.into_parts();
    let parts = ResponseParts {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        extensions: parts.extensions,
    };
    Response::from_parts(parts, Body::from_bytes(body))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(json_bytes(body))
}

/// `value` as JSON text. `serde_json::to_vec`, not `Value`'s `Display`, which writes through
/// a `fmt::Formatter` a piece at a time.
fn json_bytes(value: &Value) -> Vec<u8> {
    // A `Value` always serializes (its keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

/// Reads the body of a JSON endpoint within the server's limits (else 413 or 408), and, when
/// it is not empty and says its type, `application/json` (else 415). Every refusal is JSON.
async fn read_json_body(state: &State, req: &Request, body: Body) -> Result<Bytes, Response> {
    let declared = edge::content_length(req.headers());
    let bytes = edge::read_body(body.into_bytes_stream(), declared, state.edge.limits())
        .await
        .map_err(|err| reply(err.reply()))?;
    if let Some(refusal) = edge::errors::non_json_body(req.header(CONTENT_TYPE), &bytes) {
        return Err(reply(refusal));
    }
    Ok(bytes)
}

/// Parses a JSON object body, or says (for a 400) what is wrong with it.
///
/// The whole body is parsed first, so fields the endpoint ignores are still checked (UTF-8,
/// number range, nesting depth), and only an object is accepted (serde would take an array
/// for a struct).
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("request body is empty; expected a JSON object".to_owned());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("invalid JSON body: {err}"))?;
    if !value.is_object() {
        return Err("invalid JSON body: expected a JSON object".to_owned());
    }
    serde_json::from_value(value).map_err(|err| format!("invalid JSON body: {err}"))
}

/// 400 with `{"error": message}`, the shape the CLI prints.
fn bad_request(message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

#[derive(Default, Deserialize)]
struct HealthQuery {
    id: Option<String>,
}

fn health(state: &State, req: &Request) -> poem::Result<Response> {
    // Most checks carry no query: no deserializer (~250 instructions a request, callgrind).
    let query: HealthQuery = match req.uri().query() {
        None => HealthQuery::default(),
        Some(_) => req.params()?,
    };
    Ok(match query.id {
        Some(id) if id != state.runtime_id => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": format!("runtime id {id} is not this runtime ({})", state.runtime_id) }),
        ),
        // Fixed bytes: the CLI polls this every 5 s, load balancers more often.
        _ => Response::builder()
            .content_type("application/json")
            .body(r#"{"status":"OK"}"#),
    })
}

fn actions(state: &State, _: &Request) -> poem::Result<Response> {
    Ok(ok(&Value::Object(state.registry.actions_by_key())))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunActionBody {
    key: Option<String>,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    telemetry_labels: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct StreamQuery {
    stream: Option<String>,
}

async fn run_action(state: Arc<State>, req: Request, body: Body) -> Response {
    // A query string that does not parse gets the answer the middleware gives poem's own
    // refusal of it (a JSON 400).
    let query: StreamQuery = match req.params() {
        Ok(query) => query,
        Err(err) => return poem_error(&err.into(), req.uri().path()),
    };
    let body = match read_json_body(&state, &req, body).await {
        Ok(body) => body,
        Err(res) => return res,
    };
    let body: RunActionBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    let Some(key) = body.key.filter(|k| !k.is_empty()) else {
        return bad_request("key is required");
    };
    let stream = query.stream.as_deref() == Some("true");
    let options = RunOptions::of_request(body.context, stream, body.telemetry_labels);
    let mut run = match state.registry.start(&key, body.input, options) {
        Ok(run) => run,
        Err(err) if err.code == FlowCode::NotFound => {
            return json_response(StatusCode::NOT_FOUND, &json!({ "error": err.message }));
        }
        Err(err) => return ok(&json!({ "error": err.to_status() })),
    };
    let trace_id = run.trace_id.clone();
    let span_id = run.span_id.clone();
    let body = match run.try_result() {
        // Done already (the flow did not wait): one whole body, as the stream would have sent.
        Some(outcome) => Body::from_vec(last_object(outcome, &trace_id)),
        // Headers (with the trace id) go out now; the result follows when the flow ends (the
        // middleware keeps the request in flight until the body's last byte).
        None => Body::from_bytes_stream(run_body(run, stream)),
    };
    Response::builder()
        .status(StatusCode::OK)
        .content_type(if stream {
            "text/plain"
        } else {
            "application/json"
        })
        .header(TRACE_ID_HEADER.clone(), &*trace_id)
        .header(SPAN_ID_HEADER.clone(), span_id)
        .body(body)
}

// Static names: a custom name given as text is parsed and copied per response.
static TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-genkit-trace-id");
static SPAN_ID_HEADER: HeaderName = HeaderName::from_static("x-genkit-span-id");

enum Phase {
    Chunks(FlowRun),
    Result(FlowRun),
    Done,
}

/// Each chunk as one `JSON\n` line, then the final object without a newline.
fn run_body(
    run: FlowRun,
    stream: bool,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    let first = if stream {
        Phase::Chunks(run)
    } else {
        Phase::Result(run)
    };
    stream::unfold(first, |phase| async move {
        let run = match phase {
            Phase::Chunks(mut run) => match run.next_chunk().await {
                Some(chunk) => {
                    let mut line = json_bytes(&chunk);
                    line.push(b'\n');
                    return Some((Ok(Bytes::from(line)), Phase::Chunks(run)));
                }
                None => run,
            },
            Phase::Result(run) => run,
            Phase::Done => return None,
        };
        let trace_id = run.trace_id.clone();
        let last = last_object(run.result().await, &trace_id);
        Some((Ok(Bytes::from(last)), Phase::Done))
    })
}

/// The body's final object, as JSON text: `{"result": …, "telemetry": {"traceId": …}}`, or
/// the error as a Genkit Status. The result from a borrowed struct rather than a `json!`
/// value (which allocates four keys and two maps).
fn last_object(outcome: Result<Value, FlowError>, trace_id: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Last<'a> {
        result: &'a Value,
        telemetry: Telemetry<'a>,
    }
    #[derive(Serialize)]
    struct Telemetry<'a> {
        #[serde(rename = "traceId")]
        trace_id: &'a str,
    }
    match outcome {
        Ok(result) => {
            let last = Last {
                result: &result,
                telemetry: Telemetry { trace_id },
            };
            // Borrowed text and a `Value` always serialize (string keys only).
            serde_json::to_vec(&last).unwrap_or_default()
        }
        Err(err) => json_bytes(&json!({ "error": err.to_status() })),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelBody {
    trace_id: Option<String>,
}

async fn cancel_action(state: Arc<State>, req: Request, body: Body) -> Response {
    let body = match read_json_body(&state, &req, body).await {
        Ok(body) => body,
        Err(res) => return res,
    };
    let body: CancelBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    let Some(trace_id) = body.trace_id.filter(|t| !t.is_empty()) else {
        return bad_request("traceId is required");
    };
    if state.registry.cancel(&trace_id) {
        ok(&json!({ "message": "Action cancelled" }))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "Action not found or already completed" }),
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyBody {
    telemetry_server_url: Option<String>,
    reflection_api_spec_version: Option<Value>,
}

async fn notify(state: Arc<State>, req: Request, body: Body) -> Response {
    let body = match read_json_body(&state, &req, body).await {
        Ok(body) => body,
        Err(res) => return res,
    };
    let body: NotifyBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    if let Some(url) = body.telemetry_server_url {
        // Every trace (inputs and outputs of every server) goes where this says: a loopback
        // telemetry server (the genkit CLI's), unless the operator allowed any host.
        if let Err(refusal) = edge::policy::refuse_telemetry_url(&url) {
            return reply(edge::errors::error(StatusCode::FORBIDDEN, &refusal));
        }
        state.registry.set_telemetry_server(Some(url));
    }
    let version = body.reflection_api_spec_version.and_then(|v| v.as_u64());
    if version != Some(u64::from(crate::REFLECTION_API_SPEC_VERSION)) {
        tracing::warn!(
            server = state.edge.ctx().name(),
            theirs = ?version,
            ours = crate::REFLECTION_API_SPEC_VERSION,
            "the genkit tools speak another reflection API version; some features may not work"
        );
    }
    ok(&json!({}))
}

#[derive(Deserialize)]
struct ValuesQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[handler]
fn values(Query(query): Query<ValuesQuery>) -> Response {
    match query.kind {
        Some(_) => ok(&json!({})),
        None => bad_request("Query parameter \"type\" is required."),
    }
}

#[handler]
fn envs() -> Response {
    ok(&json!(["dev"]))
}

/// `GET|POST /api/__quitquitquit`, the Reflection API's own quit: the same graceful shutdown,
/// under the same rule, as the edge's `POST /__quitquitquitz` (a loopback peer, never
/// cross-site).
fn quit(state: &State, req: &Request) -> poem::Result<Response> {
    let peer = req.remote_addr().as_socket_addr().map(SocketAddr::ip);
    let head = edge::RequestHead::of(req.method(), req.uri(), req.headers(), peer);
    Ok(reply(edge::admin::quit(state.edge.ctx(), &head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_object_is_what_its_value_would_serialize_to() {
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        for result in [
            json!("Hello, \"Alice\"!"),
            json!({"a": [1, 2.5, null]}),
            Value::Null,
        ] {
            let expected = json!({ "result": result, "telemetry": { "traceId": trace_id } });
            assert_eq!(last_object(Ok(result), trace_id), json_bytes(&expected));
        }
        let error = flows::FlowError::invalid_argument("no").with_trace_id(trace_id);
        let expected = json!({ "error": error.to_status() });
        assert_eq!(last_object(Err(error), trace_id), json_bytes(&expected));
    }
}

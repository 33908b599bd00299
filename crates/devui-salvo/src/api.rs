//! The page, its assets, the JSON API under `/api/`, and the admin endpoints.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use flows::{FlowRun, RunOptions};
use manager::GuardCell;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use salvo::http::{ParseError, StatusCode};
use salvo::{Depot, Request, Response, Router, handler};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::events;
use crate::example::example_from_schema;
use crate::server::State;

/// The largest body `POST /api/flows/<name>/run` accepts (1 MiB, as the flows API's); a
/// larger one is a 413 with a JSON error.
pub const MAX_BODY: usize = 1 << 20;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Everything is same-origin; no CDN, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn router() -> Router {
    Router::new()
        .get(index)
        .head(index)
        .push(Router::with_path("assets/app.js").get(app_js))
        .push(Router::with_path("assets/app.css").get(app_css))
        .push(Router::with_path("api/servers").get(servers))
        .push(Router::with_path("api/flows").get(flow_list))
        .push(Router::with_path("api/flows/{name}/run").post(run_flow))
        .push(Router::with_path("api/runs/{trace_id}/cancel").post(cancel_run))
        .push(Router::with_path("api/traces").get(trace_list))
        .push(Router::with_path("api/traces/{trace_id}").get(trace_one))
        .push(Router::with_path("api/events").get(events::events))
        .push(Router::with_path("api/readiness/fail").post(readiness_fail))
        .push(Router::with_path("api/readiness/ok").post(readiness_ok))
        .push(Router::with_path("api/quit").post(quit))
        .push(Router::with_path("__healthz").get(healthz))
        .push(Router::with_path("__readyz").get(readyz))
        .push(Router::with_path("__serverz").get(serverz))
        .push(Router::with_path("__quitquitquitz").post(quit))
}

pub(crate) fn state(depot: &Depot) -> Arc<State> {
    Arc::clone(
        depot
            .get_typed::<Arc<State>>()
            .expect("the Track middleware injects State"),
    )
}

/// Writes `body` as the JSON answer with `status`.
pub(crate) fn json_body(res: &mut Response, status: StatusCode, body: &Value) {
    res.status_code(status);
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res.replace_body(body.to_string().into());
}

/// `{"error": message, "status": N}`, the error shape of every managed server.
pub(crate) fn json_error(res: &mut Response, status: StatusCode, message: &str) {
    json_body(
        res,
        status,
        &manager::admin::error_body(status.as_u16(), message),
    );
}

fn ok(res: &mut Response, body: &Value) {
    json_body(res, StatusCode::OK, body);
}

fn asset(res: &mut Response, content_type: &'static str, body: &'static str) {
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    res.replace_body(Bytes::from_static(body.as_bytes()).into());
}

#[handler]
async fn index(res: &mut Response) {
    asset(res, "text/html; charset=utf-8", INDEX_HTML);
}

#[handler]
async fn app_js(res: &mut Response) {
    asset(res, "text/javascript; charset=utf-8", APP_JS);
}

#[handler]
async fn app_css(res: &mut Response) {
    asset(res, "text/css; charset=utf-8", APP_CSS);
}

/// The servers snapshot: `/__serverz` data plus readiness, as `GET /api/servers` and the
/// event stream's `servers` events carry it.
pub(crate) fn snapshot(state: &State) -> Value {
    let manager = state.ctx.manager();
    json!({
        "process": manager.server_info(),
        "readiness": manager.readiness(),
        "self": state.ctx.name(),
    })
}

#[handler]
async fn servers(depot: &mut Depot, res: &mut Response) {
    ok(res, &snapshot(&state(depot)));
}

#[handler]
async fn flow_list(depot: &mut Depot, res: &mut Response) {
    let flows: Vec<Value> = state(depot)
        .registry
        .actions()
        .into_iter()
        .map(|action| {
            let example = action
                .input_schema
                .as_ref()
                .map_or(Value::Null, example_from_schema);
            let mut value = serde_json::to_value(&action).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert("example".into(), example);
            }
            value
        })
        .collect();
    ok(res, &json!({ "flows": flows }));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    input: Value,
}

#[handler]
async fn run_flow(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let state = state(depot);
    let name: String = req.param("name").unwrap_or_default();
    let key = format!("/flow/{name}");
    if state.registry.action(&key).is_none() {
        return json_error(
            res,
            StatusCode::NOT_FOUND,
            &format!("no flow named '{name}'"),
        );
    }
    let body = match req.payload_with_max_size(MAX_BODY).await {
        Ok(body) => body.clone(),
        Err(ParseError::EmptyBody) => Bytes::new(),
        Err(ParseError::PayloadTooLarge) => {
            return json_error(
                res,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {MAX_BODY} bytes"),
            );
        }
        Err(err) => {
            return json_error(
                res,
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {err}"),
            );
        }
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(refusal) = manager::admin::non_json_body(content_type, &body) {
        return json_error(res, StatusCode::UNSUPPORTED_MEDIA_TYPE, &refusal);
    }
    let input = match serde_json::from_slice::<RunRequest>(&body) {
        Ok(request) => request.input,
        Err(err) => {
            let why = if body.is_empty() {
                "the body is empty".to_owned()
            } else {
                err.to_string()
            };
            return json_error(
                res,
                StatusCode::BAD_REQUEST,
                &format!("expected a JSON object {{\"input\": ...}}: {why}"),
            );
        }
    };
    let options = RunOptions {
        stream: true,
        ..RunOptions::default()
    };
    let run = match state.registry.start(&key, input, options) {
        Ok(run) => run,
        Err(err) => {
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return json_error(res, status, &err.message);
        }
    };
    if let Some(err) = run.rejected() {
        // Input that does not fit the schema: a 400 before any stream starts.
        let mut body = manager::admin::error_body(400, &err.message);
        body["code"] = json!(err.code.name());
        body["traceId"] = json!(run.trace_id);
        return json_body(res, StatusCode::BAD_REQUEST, &body);
    }
    let guard = depot
        .get_typed::<Arc<GuardCell>>()
        .ok()
        .and_then(|c| c.take());
    if let Ok(value) = HeaderValue::from_str(&run.trace_id) {
        res.headers_mut().insert("x-genkit-trace-id", value);
    }
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res.status_code(StatusCode::OK);
    res.stream(ndjson(run, guard));
}

/// The run as NDJSON lines: `start`, every `chunk`, then `result` or `error`. The request's
/// guard rides along, so the request is in flight until the last line; dropped early (the
/// client went away, which also cancels the run), it is logged as aborted.
fn ndjson(
    run: FlowRun,
    guard: Option<manager::RequestGuard>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    enum Step {
        Start(FlowRun),
        Chunks(FlowRun),
        Done,
    }
    let line = |value: Value| Ok(Bytes::from(format!("{value}\n")));
    futures_util::stream::unfold((Step::Start(run), guard), move |(step, guard)| async move {
        match step {
            Step::Start(run) => {
                let start = json!({ "type": "start", "traceId": run.trace_id });
                Some((line(start), (Step::Chunks(run), guard)))
            }
            Step::Chunks(mut run) => match run.next_chunk().await {
                Some(chunk) => Some((
                    line(json!({ "type": "chunk", "chunk": chunk })),
                    (Step::Chunks(run), guard),
                )),
                None => {
                    let trace_id = run.trace_id.clone();
                    let last = match run.result().await {
                        Ok(result) => {
                            json!({ "type": "result", "result": result, "traceId": trace_id })
                        }
                        Err(err) => json!({
                            "type": "error",
                            "error": {
                                "message": err.message,
                                "code": err.code.name(),
                                "status": err.http_status(),
                            },
                            "traceId": trace_id,
                        }),
                    };
                    if let Some(guard) = guard {
                        guard.finish(200);
                    }
                    Some((line(last), (Step::Done, None)))
                }
            },
            Step::Done => None,
        }
    })
}

#[handler]
async fn cancel_run(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let trace_id: String = req.param("trace_id").unwrap_or_default();
    if state(depot).registry.cancel(&trace_id) {
        ok(res, &json!({ "cancelled": true, "traceId": trace_id }));
    } else {
        json_error(
            res,
            StatusCode::NOT_FOUND,
            &format!("no running flow has trace id '{trace_id}'"),
        );
    }
}

#[handler]
async fn trace_list(depot: &mut Depot, res: &mut Response) {
    ok(
        res,
        &json!({ "traces": state(depot).registry.recent_traces() }),
    );
}

#[handler]
async fn trace_one(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let trace_id: String = req.param("trace_id").unwrap_or_default();
    match state(depot).registry.trace(&trace_id) {
        Some(trace) => ok(res, &json!(trace)),
        None => json_error(
            res,
            StatusCode::NOT_FOUND,
            &format!("no recent trace has id '{trace_id}'"),
        ),
    }
}

fn set_readiness(depot: &Depot, res: &mut Response, fail: bool) {
    let state = state(depot);
    let manager = state.ctx.manager();
    manager.force_readiness_fail(fail);
    tracing::warn!(
        server = state.ctx.name(),
        fail,
        "readiness {} from the Developer UI",
        if fail { "forced to fail" } else { "restored" }
    );
    ok(res, &json!(manager.readiness()));
}

#[handler]
async fn readiness_fail(depot: &mut Depot, res: &mut Response) {
    set_readiness(depot, res, true);
}

#[handler]
async fn readiness_ok(depot: &mut Depot, res: &mut Response) {
    set_readiness(depot, res, false);
}

#[handler]
async fn quit(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let state = state(depot);
    let Some(peer) = req.remote_addr().clone().into_std() else {
        return json_error(res, StatusCode::FORBIDDEN, "peer address unknown");
    };
    match state.ctx.manager().quit(peer.ip(), state.ctx.name()) {
        Ok(()) => ok(res, &json!({ "status": "OK" })),
        Err(refused) => json_error(res, StatusCode::FORBIDDEN, &refused.to_string()),
    }
}

#[handler]
async fn healthz(depot: &mut Depot, res: &mut Response) {
    ok(res, &json!(state(depot).ctx.manager().health()));
}

#[handler]
async fn readyz(depot: &mut Depot, res: &mut Response) {
    let readiness = state(depot).ctx.manager().readiness();
    let status =
        StatusCode::from_u16(readiness.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    json_body(res, status, &json!(readiness));
}

#[handler]
async fn serverz(depot: &mut Depot, res: &mut Response) {
    ok(res, &json!(state(depot).ctx.manager().server_info()));
}

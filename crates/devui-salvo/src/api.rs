//! The page, its assets and the JSON API under `/api/` (the edge answers the admin
//! endpoints).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use edge::errors;
use flows::{FlowRun, RunOptions};
use http_body_util::BodyDataStream;
use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use salvo::{Depot, Request, Response, Router, handler};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::events;
use crate::example::example_from_schema;
use crate::server::{State, reply};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Everything is same-origin; no CDN, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes' templates (the metrics' `http_route`), as [`router`] mounts them.
pub(crate) const ROUTES: &[&str] = &[
    "/",
    "/assets/app.js",
    "/assets/app.css",
    "/api/servers",
    "/api/flows",
    "/api/flows/{name}/run",
    "/api/runs/{trace_id}/cancel",
    "/api/traces",
    "/api/traces/{trace_id}",
    "/api/events",
    "/api/history",
    "/api/readiness/fail",
    "/api/readiness/ok",
    "/api/quit",
    "/__test/slow",
    "/__test/panic",
    "/__test/echo",
];

pub(crate) fn router() -> Router {
    // The admin endpoints are the edge's (the middleware answers them before any handler);
    // routed first all the same, because a path salvo's router does not find costs it a
    // second pass over every route (to tell 404 from 405), and probes call these often.
    let admin = edge::admin::PATHS
        .iter()
        .fold(Router::new(), |router, path| {
            router.push(Router::with_path(&path[1..]).goal(answered_by_the_edge))
        });
    admin
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
        .push(Router::with_path("api/history").get(history))
        .push(Router::with_path("api/readiness/fail").post(readiness_fail))
        .push(Router::with_path("api/readiness/ok").post(readiness_ok))
        .push(Router::with_path("api/quit").post(quit))
}

/// Never reached: the middleware answers the admin endpoints itself.
#[handler]
async fn answered_by_the_edge(req: &mut Request, res: &mut Response) {
    crate::server::reply(res, edge::errors::not_found(req.uri().path()));
}

pub(crate) fn state(depot: &Depot) -> Arc<State> {
    Arc::clone(
        depot
            .get_typed::<Arc<State>>()
            .expect("the Track middleware injects State"),
    )
}

/// `{"error": message, "status": N}`, the error shape of every managed server.
pub(crate) fn json_error(res: &mut Response, status: StatusCode, message: &str) {
    reply(res, errors::error(status, message));
}

pub(crate) fn ok(res: &mut Response, body: &Value) {
    reply(res, errors::json(StatusCode::OK, body));
}

/// Reads the request body within the server's limits; on failure the error is answered
/// (413, 408 or 400) and `None` returned.
pub(crate) async fn read_body(
    req: &mut Request,
    limits: &edge::Limits,
    res: &mut Response,
) -> Option<Bytes> {
    let length = edge::content_length(req.headers());
    let body = BodyDataStream::new(req.take_body());
    match edge::read_body(body, length, limits).await {
        Ok(body) => Some(body),
        Err(err) => {
            reply(res, err.reply());
            None
        }
    }
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
    let manager = state.ctx().manager();
    json!({
        "process": manager.server_info(),
        "readiness": manager.readiness(),
        "self": state.ctx().name(),
    })
}

#[handler]
async fn servers(depot: &mut Depot, res: &mut Response) {
    ok(res, &snapshot(&state(depot)));
}

/// `GET /api/history[?since=<ms>]`: the charts' samples after `since` (all of the last five
/// minutes without it), oldest first.
#[handler]
async fn history(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let since = req.query::<f64>("since").unwrap_or(0.0);
    ok(
        res,
        &json!({
            "interval_ms": crate::history::INTERVAL.as_millis() as u64,
            "capacity": crate::history::SAMPLES,
            "samples": state(depot).history.since(since),
        }),
    );
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
    let Some(body) = read_body(req, state.edge.limits(), res).await else {
        return;
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(refused) = errors::non_json_body(content_type, &body) {
        return reply(res, refused);
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
        let mut body = errors::error_body(StatusCode::BAD_REQUEST, &err.message);
        body["code"] = json!(err.code.name());
        body["traceId"] = json!(&*run.trace_id);
        return reply(res, errors::json(StatusCode::BAD_REQUEST, &body));
    }
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
    res.stream(ndjson(run));
}

/// The run as NDJSON lines: `start`, every `chunk`, then `result` or `error`. Dropped early
/// (the client went away), the run is cancelled; the middleware keeps the request in flight
/// until the last line.
fn ndjson(
    run: FlowRun,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    enum Step {
        Start(FlowRun),
        Chunks(FlowRun),
        Done,
    }
    let line = |value: Value| Ok(Bytes::from(format!("{value}\n")));
    futures_util::stream::unfold(Step::Start(run), move |step| async move {
        match step {
            Step::Start(run) => {
                let start = json!({ "type": "start", "traceId": &*run.trace_id });
                Some((line(start), Step::Chunks(run)))
            }
            Step::Chunks(mut run) => match run.next_chunk().await {
                Some(chunk) => Some((
                    line(json!({ "type": "chunk", "chunk": chunk })),
                    Step::Chunks(run),
                )),
                None => {
                    let trace_id = run.trace_id.clone();
                    let last = match run.result().await {
                        Ok(result) => {
                            json!({ "type": "result", "result": result, "traceId": &*trace_id })
                        }
                        Err(err) => json!({
                            "type": "error",
                            "error": {
                                "message": err.message,
                                "code": err.code.name(),
                                "status": err.http_status(),
                            },
                            "traceId": &*trace_id,
                        }),
                    };
                    Some((line(last), Step::Done))
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

fn set_readiness(req: &Request, depot: &Depot, res: &mut Response, fail: bool) {
    let state = state(depot);
    let head = crate::server::head(req);
    crate::server::reply(
        res,
        edge::admin::force_readiness_fail(state.ctx(), &head, fail),
    );
}

#[handler]
async fn readiness_fail(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    set_readiness(req, depot, res, true);
}

#[handler]
async fn readiness_ok(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    set_readiness(req, depot, res, false);
}

/// `POST /api/quit`: a graceful shutdown of the whole process. The edge already refused
/// it unless it came from a loopback peer and not from another site.
#[handler]
async fn quit(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let state = state(depot);
    crate::server::reply(
        res,
        edge::admin::quit(state.ctx(), &crate::server::head(req)),
    );
}

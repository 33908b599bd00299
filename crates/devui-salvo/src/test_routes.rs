//! Routes only tests need (feature `test-routes`), added with
//! `DevUi::new(..).routes(test_routes::mount)`. They pass through the same middleware as
//! every route:
//! - `GET /__test/slow?ms=N`: sleeps N ms, then 200 `{"slept_ms": N}`; a bad `ms` is a 400;
//! - `GET /__test/panic`: the handler panics (the middleware answers a JSON 500);
//! - `POST /__test/echo`: reads the body within the server's limits, 200 `{"bytes": N}`
//!   (413 above the body limit, 408 slower than the body deadline).

use std::time::Duration;

use salvo::http::StatusCode;
use salvo::{Depot, Request, Response, Router, handler};
use serde_json::json;

use crate::api::{json_error, ok, read_body, state};

/// Adds the test routes to `router`.
pub fn mount(router: Router) -> Router {
    router
        .push(Router::with_path("__test/slow").get(slow))
        .push(Router::with_path("__test/panic").get(panic))
        .push(Router::with_path("__test/echo").post(echo))
}

#[handler]
async fn slow(req: &mut Request, res: &mut Response) {
    let ms = match req.query::<String>("ms").map(|ms| ms.parse::<u64>()) {
        Some(Ok(ms)) => ms,
        Some(Err(err)) => {
            return json_error(res, StatusCode::BAD_REQUEST, &format!("invalid ms: {err}"));
        }
        None => return json_error(res, StatusCode::BAD_REQUEST, "missing field `ms`"),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ok(res, &json!({ "slept_ms": ms }));
}

#[handler]
async fn panic() {
    panic!("test route asked to panic")
}

#[handler]
async fn echo(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let state = state(depot);
    if let Some(body) = read_body(req, state.edge.limits(), res).await {
        ok(res, &json!({ "bytes": body.len() }));
    }
}

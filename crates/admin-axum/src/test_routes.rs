//! Routes only the end-to-end tests need, mounted by the binary with
//! `AdminApi::new().routes(admin_axum::test_routes::mount)`: `GET /__test/slow?ms=N`,
//! `GET /__test/panic`, `POST /__test/echo` (reads the body within the limits).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edge::Edge;
use serde_json::json;

/// Adds the test routes to `router`.
pub fn mount(router: Router) -> Router {
    router
        .route("/__test/slow", get(slow))
        .route("/__test/panic", get(panic))
        .route("/__test/echo", post(echo))
}

#[derive(serde::Deserialize)]
struct Slow {
    ms: u64,
}

fn reply(reply: edge::Reply) -> Response {
    reply.map(Body::from).into_response()
}

async fn slow(query: Result<Query<Slow>, QueryRejection>) -> Response {
    match query {
        Ok(Query(Slow { ms })) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Json(json!({ "slept_ms": ms })).into_response()
        }
        Err(rejection) => reply(edge::errors::error(
            StatusCode::BAD_REQUEST,
            &rejection.body_text(),
        )),
    }
}

async fn panic() -> Response {
    panic!("test route asked to panic")
}

async fn echo(Extension(edge): Extension<Edge>, req: Request) -> Response {
    let length = edge::content_length(req.headers());
    let stream = req.into_body().into_data_stream();
    match edge::read_body(stream, length, edge.limits()).await {
        Ok(body) => Json(json!({ "bytes": body.len() })).into_response(),
        Err(err) => reply(err.reply()),
    }
}

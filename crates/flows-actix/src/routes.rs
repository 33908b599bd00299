//! Handlers: the public routes, the admin endpoints, and JSON errors.

use actix_web::http::StatusCode;
use actix_web::http::header::ALLOW;
use actix_web::{HttpRequest, HttpResponse, web};
use manager::ServeContext;
use serde_json::json;

/// Every route of the server, mounted in one place so `configure` can also be used by tests.
pub(crate) fn mount(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/greet", greet))
        .service(get("/flow/run", flow_run))
        .service(
            web::resource("/flow/{name}")
                .route(web::post().to(crate::flows::run_flow))
                .default_service(web::to(|| async { method_not_allowed("POST") })),
        )
        .service(get("/__healthz", healthz))
        .service(get("/__readyz", readyz))
        .service(get("/__serverz", serverz))
        .service(
            web::resource("/__quitquitquitz")
                .route(web::post().to(quit))
                .default_service(web::to(|| async { method_not_allowed("POST") })),
        );
    #[cfg(feature = "test-routes")]
    cfg.service(get("/__test/slow", test_routes::slow))
        .service(get("/__test/panic", test_routes::panic))
        .service(
            web::resource("/__test/crash")
                .route(web::post().to(test_routes::crash))
                .default_service(web::to(|| async { method_not_allowed("POST") })),
        );
}

/// A GET-only resource whose other methods get a JSON 405.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async { method_not_allowed("GET") }))
}

async fn greet() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "greeting": "Hello from greeting endpoints app!" }))
}

async fn flow_run() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "flow": "Running flow endpoint!" }))
}

async fn healthz(ctx: web::Data<ServeContext>) -> HttpResponse {
    HttpResponse::Ok().json(ctx.manager().health())
}

async fn readyz(ctx: web::Data<ServeContext>) -> HttpResponse {
    let readiness = ctx.manager().readiness();
    let status = StatusCode::from_u16(readiness.http_status()).unwrap_or(StatusCode::OK);
    HttpResponse::build(status).json(readiness)
}

async fn serverz(ctx: web::Data<ServeContext>) -> HttpResponse {
    HttpResponse::Ok().json(ctx.manager().server_info())
}

async fn quit(req: HttpRequest, ctx: web::Data<ServeContext>) -> HttpResponse {
    let Some(peer) = req.peer_addr() else {
        return json_error(StatusCode::FORBIDDEN, "peer address unknown");
    };
    match ctx.manager().quit(peer.ip(), ctx.name()) {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "OK" })),
        Err(refused) => json_error(StatusCode::FORBIDDEN, &refused.to_string()),
    }
}

/// The JSON error every route answers with.
pub(crate) fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(manager::admin::error_body(status.as_u16(), message))
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut res = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    res.headers_mut().insert(
        ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    res
}

pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "error": "not found",
        "status": 404,
        "path": req.path(),
    }))
}

/// Turns actix's extractor errors (bad JSON, bad query, too large) into JSON 4xx answers.
pub(crate) fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|err, _req| {
            let status = match &err {
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                actix_web::error::JsonPayloadError::ContentType => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            let message = err.to_string();
            actix_web::error::InternalError::from_response(err, json_error(status, &message)).into()
        })
}

pub(crate) fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let message = err.to_string();
        actix_web::error::InternalError::from_response(
            err,
            json_error(StatusCode::BAD_REQUEST, &message),
        )
        .into()
    })
}

/// Largest JSON body accepted; larger ones get 413.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

#[cfg(feature = "test-routes")]
pub(crate) mod test_routes {
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::{HttpResponse, web};
    use serde::Deserialize;
    use serde_json::json;
    use tokio::sync::Notify;

    #[derive(Deserialize)]
    pub(super) struct Slow {
        ms: u64,
    }

    pub(super) async fn slow(query: web::Query<Slow>) -> HttpResponse {
        tokio::time::sleep(Duration::from_millis(query.ms)).await;
        HttpResponse::Ok().json(json!({ "slept_ms": query.ms }))
    }

    pub(super) async fn panic() -> HttpResponse {
        panic!("test route asked to panic")
    }

    /// Set by `POST /__test/crash`: the server's serve future then returns an error, as a
    /// server that dies while running would.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Crash(pub(crate) Arc<Notify>);

    pub(super) async fn crash(crash: web::Data<Crash>) -> HttpResponse {
        // A stored permit: the serve future sees it even if it polls later.
        crash.0.notify_one();
        HttpResponse::Accepted().json(json!({ "crashing": true }))
    }
}

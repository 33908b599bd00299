//! The one middleware every request passes: accounting and logging through the manager's
//! request guard, panic → JSON 500, and `Connection: close` while draining.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use futures_util::FutureExt;
use manager::{GuardCell, ServeContext};

use crate::routes::{BODY_LIMIT, json_error};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let ctx = req
        .app_data::<web::Data<ServeContext>>()
        .expect("ServeContext is registered as app data")
        .clone();
    let guard = ctx.begin_request(req.method().as_str(), req.path());
    let id = guard.id();
    // Parked in the request so a streaming handler can carry it into its body.
    let cell = Arc::new(GuardCell::new(guard));
    req.extensions_mut().insert(Arc::clone(&cell));
    let finish = |status: u16| {
        if let Some(guard) = cell.take() {
            guard.finish(status);
        }
    };

    // No clone of the request may be held across `next.call`: actix routes by mutating it in
    // place. Errors are therefore returned as `Err`, and actix renders them.
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(Ok(res)) => {
            let mut res = json_for_errors(res);
            if let Ok(id) = HeaderValue::from_str(&id.to_string()) {
                res.headers_mut().insert(REQUEST_ID.clone(), id);
            }
            if ctx.requests().is_draining() {
                res.response_mut()
                    .head_mut()
                    .set_connection_type(ConnectionType::Close);
            }
            finish(res.status().as_u16());
            Ok(res)
        }
        Ok(Err(err)) => {
            finish(err.error_response().status().as_u16());
            Err(err)
        }
        Err(panic) => {
            let message = manager::admin::panic_message(&*panic);
            tracing::error!(server = ctx.name(), id, panic = message, "handler panicked");
            finish(500);
            let body = json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            Err(InternalError::from_response("handler panicked", body).into())
        }
    }
}

/// An error actix answered itself (an extractor's 413, 400...) comes with a plain-text body;
/// give it the JSON body every other error has.
fn json_for_errors<B>(res: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let message = match res.response().error() {
        Some(err) if !is_json => err.to_string(),
        _ => return res.map_into_left_body(),
    };
    let status = res.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "request body is larger than the {} KiB (1 MiB) limit",
            BODY_LIMIT / 1024
        )
    } else {
        message
    };
    res.into_response(json_error(status, &message))
        .map_into_right_body()
}

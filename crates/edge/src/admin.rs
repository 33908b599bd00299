//! The admin endpoints every server answers, from the manager's data: `GET /__healthz`,
//! `GET /__readyz`, `GET /__serverz`, `POST /__quitquitquitz` (a loopback peer, never
//! cross-site).

use http::StatusCode;
use manager::{ServeContext, ShutdownReason};
use serde_json::json;

use crate::errors::{self, Reply};
use crate::policy::{RequestHead, refuse_change};

/// The admin endpoints' paths (the edge answers them before any route).
pub const PATHS: [&str; 4] = ["/__healthz", "/__readyz", "/__serverz", "/__quitquitquitz"];

/// The answer to an admin endpoint, or `None` when `head` is not one.
pub fn answer(ctx: &ServeContext, head: &RequestHead<'_>) -> Option<Reply> {
    let manager = ctx.manager();
    let get = |body: &dyn Fn() -> Reply| {
        if matches!(head.method, "GET" | "HEAD") {
            body()
        } else {
            errors::method_not_allowed("GET, HEAD")
        }
    };
    let reply = match head.path {
        "/__healthz" => get(&|| errors::json(StatusCode::OK, &manager.health())),
        "/__readyz" => get(&|| {
            let readiness = manager.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            errors::json(status, &readiness)
        }),
        "/__serverz" => get(&|| errors::json(StatusCode::OK, &manager.server_info())),
        "/__quitquitquitz" if head.method != "POST" => errors::method_not_allowed("POST"),
        "/__quitquitquitz" => quit(ctx, head),
        _ => return None,
    };
    Some(reply)
}

/// A quit endpoint's answer (`POST /__quitquitquitz`, or a framework's own, such as Genkit's
/// `/api/__quitquitquit`): a graceful shutdown of the whole process, if the request may ask for
/// one (a loopback peer, never cross-site), else 403. The method is the caller's to check.
pub fn quit(ctx: &ServeContext, head: &RequestHead<'_>) -> Reply {
    if let Some(refusal) = refuse_change(head) {
        tracing::warn!(server = ctx.name(), peer = ?head.peer, refusal, "quit refused");
        return errors::error(StatusCode::FORBIDDEN, &refusal);
    }
    ctx.manager().request_shutdown(ShutdownReason::Quit {
        server: ctx.name().to_owned(),
    });
    errors::json(StatusCode::OK, &json!({ "status": "OK" }))
}

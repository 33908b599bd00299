//! One JSON error shape for every server: `{"error": "...", "status": N}` (404s add `"path"`),
//! `Content-Type: application/json`, and `Allow` on a 405.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

/// An answer the edge builds: status, headers, and the whole body.
pub type Reply = Response<Bytes>;

/// The JSON body of an error: `{"error": message, "status": N}`.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({ "error": message, "status": status.as_u16() })
}

/// A JSON answer with `status`. Serialized straight to bytes (no `Value` built on the way):
/// the admin endpoints answer probes many times a second.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    json_bytes(
        status,
        serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec()),
    )
}

/// `status` with `body`, already JSON.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `{"error": message, "status": N}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &error_body(status, message))
}

/// 404 `{"error": "not found", "status": 404, "path": path}`.
pub fn not_found(path: &str) -> Reply {
    json(
        StatusCode::NOT_FOUND,
        &json!({ "error": "not found", "status": 404, "path": path }),
    )
}

/// 405 with the methods the resource takes in `Allow` (e.g. `"GET"`, `"GET, POST"`).
pub fn method_not_allowed(allow: &str) -> Reply {
    let mut res = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    if let Ok(allow) = HeaderValue::from_str(allow) {
        res.headers_mut().insert(ALLOW, allow);
    }
    res
}

/// 413 naming the limit.
pub fn payload_too_large(limit: usize) -> Reply {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "request body is larger than the {} limit ({limit} bytes)",
            human_bytes(limit)
        ),
    )
}

/// `1 MiB`, `64 KiB`, `1000 bytes`.
fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// 415 for a body whose declared type is not JSON.
pub fn unsupported_media_type(content_type: &str) -> Reply {
    error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &format!("content type must be application/json, not {content_type}"),
    )
}

/// 500 `internal error`: what a handler panic answers (the panic itself is logged, never sent).
pub fn internal_error() -> Reply {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The JSON answer for an error status a framework produced without a body (its router's
/// 404 and 405, its parser's 413 and 431...): the same shape as every other error.
pub fn for_status(status: StatusCode, path: &str, allow: Option<&str>) -> Reply {
    match status {
        StatusCode::NOT_FOUND => not_found(path),
        StatusCode::METHOD_NOT_ALLOWED => match allow {
            Some(allow) => method_not_allowed(allow),
            None => error(status, "method not allowed"),
        },
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            error(status, "request header fields too large")
        }
        StatusCode::INTERNAL_SERVER_ERROR => internal_error(),
        _ => error(status, status.canonical_reason().unwrap_or("error")),
    }
}

/// Why a request body is refused with 415, if it is: a non-empty body whose declared content
/// type is not JSON. A body without a declared type is taken as JSON: the parser then says
/// what is wrong with it, if anything.
pub fn non_json_body(content_type: Option<&str>, body: &[u8]) -> Option<Reply> {
    let content_type = content_type.unwrap_or("");
    (!body.is_empty() && !content_type.is_empty() && !content_type.starts_with("application/json"))
        .then(|| unsupported_media_type(content_type))
}

/// Logs a handler panic (server, request id, message) and answers it: a 500 for that request
/// only.
pub fn panicked(server: &str, id: u64, payload: &(dyn std::any::Any + Send)) -> Reply {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic");
    tracing::error!(server, id, panic = message, "handler panicked");
    internal_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(reply.body()).unwrap()
    }

    #[test]
    fn errors_are_json_with_their_status() {
        let res = not_found("/x");
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body(&res),
            json!({"error": "not found", "status": 404, "path": "/x"})
        );
        let res = method_not_allowed("POST");
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()[ALLOW], "POST");
        assert_eq!(
            body(&for_status(StatusCode::from_u16(431).unwrap(), "/", None))["status"],
            431
        );
        assert_eq!(body(&payload_too_large(1024))["status"], 413);
    }

    #[test]
    fn only_a_declared_non_json_type_on_a_body_is_refused() {
        assert!(non_json_body(Some("application/json; charset=utf-8"), b"{}").is_none());
        assert!(non_json_body(None, b"{}").is_none());
        assert!(non_json_body(Some("text/plain"), b"").is_none());
        let refused = non_json_body(Some("text/plain"), b"x").unwrap();
        assert_eq!(
            body(&refused)["error"],
            "content type must be application/json, not text/plain"
        );
    }

    #[test]
    fn a_panic_is_a_500_that_does_not_show_the_message() {
        let res = panicked("t", 1, &"secret detail");
        assert_eq!(res.status(), 500);
        assert_eq!(body(&res)["error"], "internal error");
    }
}

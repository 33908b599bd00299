//! Routes only the end-to-end tests need, mounted by the binary with
//! `ReflectionApi::new(registry).with_test_routes()`:
//! `GET /__test/slow?ms=N`, `GET /__test/panic`, `POST /__test/echo` (reads the body within
//! the server's limits). They pass through the same middleware as every route.

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::Query;
use poem::{Body, Request, Response, Route, get, handler, post};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Stateful, reply};
use crate::server::State;

impl crate::ReflectionApi {
    /// Mounts the test routes next to the Reflection API's.
    pub fn with_test_routes(mut self) -> Self {
        self.extra.push(Arc::new(mount));
        self
    }
}

fn mount(route: Route, state: &Arc<State>) -> Route {
    route
        .at("/__test/slow", get(slow))
        .at("/__test/panic", get(panic))
        .at("/__test/echo", post(Stateful::new(state, echo)))
}

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

fn json(body: &serde_json::Value) -> Response {
    reply(edge::errors::json(StatusCode::OK, body))
}

/// Sleeps `ms` milliseconds; a missing or non-numeric `ms` is a 400 saying why.
#[handler]
async fn slow(query: poem::Result<Query<Slow>>) -> Response {
    match query {
        Ok(Query(Slow { ms })) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json(&json!({ "slept_ms": ms }))
        }
        Err(err) => reply(edge::errors::error(
            StatusCode::BAD_REQUEST,
            &err.to_string(),
        )),
    }
}

#[handler]
fn panic() -> Response {
    panic!("test route asked to panic")
}

/// Reads the whole body within the limits and says how long it was.
async fn echo(state: Arc<State>, req: Request, body: Body) -> Response {
    let declared = edge::content_length(req.headers());
    match edge::read_body(body.into_bytes_stream(), declared, state.edge.limits()).await {
        Ok(body) => json(&json!({ "bytes": body.len() })),
        Err(err) => reply(err.reply()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edge::Limits;
    use flows::Registry;
    use manager::ShutdownReason;
    use serde_json::Value;

    use crate::ReflectionApi;
    use crate::server::tests::{addr_of, header, raw, start, temp_root};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_panic_and_echo_behave_behind_the_middleware() {
        let root = temp_root("test-routes");
        let limits = Limits {
            body_bytes: 8,
            body_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let api = ReflectionApi::new(Registry::new())
            .discovery_root(&root)
            .limits(limits)
            .with_test_routes();
        let (handle, run) = start(api).await;
        let addr = addr_of(&handle);
        let ask = |method: &str, path: &str, extra: &str, body: &str| {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n{body}"
            )
        };
        for (request, status, needle) in [
            (
                ask("GET", "/__test/slow?ms=20", "", ""),
                200,
                r#""slept_ms":20"#,
            ),
            (
                ask("GET", "/__test/slow?ms=soon", "", ""),
                400,
                "invalid digit",
            ),
            (
                ask("GET", "/__test/panic", "", ""),
                500,
                r#""error":"internal error""#,
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 4\r\n", "abcd"),
                200,
                r#""bytes":4"#,
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 9\r\n", "abcdefghi"),
                413,
                "(8 bytes)",
            ),
            (
                ask("POST", "/__test/echo", "Content-Length: 4\r\n", "ab"),
                408,
                "not received",
            ),
        ] {
            let (got, headers, body) = raw(&addr, request.clone()).await;
            assert_eq!(got, status, "{request}: {body}");
            assert!(body.contains(needle), "{request}: {body}");
            assert!(header(&headers, "x-request-id").is_some(), "{request}");
            let json: Value = serde_json::from_str(&body).unwrap();
            assert!(json.is_object(), "{body}");
        }
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        let _ = run.await;
        let _ = std::fs::remove_dir_all(&root);
    }
}

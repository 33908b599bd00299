//! The public routes, and the JSON errors of actix's own extractors. (The admin endpoints are
//! the edge's: the middleware answers them before any route.)

use actix_web::{HttpRequest, HttpResponse, web};

use crate::middleware::reply;

/// The routes' templates (the metrics' `http_route`): what [`mount`] mounts (a flow's own
/// resource is labelled `/flow/{name}`, as the edge matches text), and the test routes.
pub(crate) const ROUTES: &[&str] = &[
    "/greet",
    "/flow/run",
    "/flow/{name}",
    "/__test/slow",
    "/__test/panic",
    "/__test/echo",
    "/__test/crash",
];

/// Every route of the server, mounted in one place so `configure` can also be used by tests.
/// Each flow of `flow_keys` (the registry's when the server is built) gets a resource of its
/// own path, which actix matches by comparing text; `/flow/{name}` takes the rest, such as
/// flows defined later. (Its regex, `Path` extractor and key built with `format!` cost ~3,500
/// instructions a flow run, callgrind.)
pub(crate) fn mount(cfg: &mut web::ServiceConfig, flow_keys: &[String]) {
    cfg.service(get("/greet", greet))
        .service(get("/flow/run", flow_run));
    for key in flow_keys {
        if let Some(route) = crate::flows::resource_of(key) {
            cfg.service(route);
        }
    }
    cfg.service(post("/flow/{name}", crate::flows::run_named_flow));
}

/// A GET-only resource whose other methods get a JSON 405.
pub(crate) fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async {
            reply(edge::errors::method_not_allowed("GET"))
        }))
}

/// A POST-only resource whose other methods get a JSON 405.
pub(crate) fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|| async {
            reply(edge::errors::method_not_allowed("POST"))
        }))
}

/// Fixed answers are fixed bytes: building a `json!` value and serializing it made the
/// handler cost ~3,000 instructions a request instead of ~1,150 (callgrind).
async fn greet() -> HttpResponse {
    json_bytes(r#"{"greeting":"Hello from greeting endpoints app!"}"#)
}

async fn flow_run() -> HttpResponse {
    json_bytes(r#"{"flow":"Running flow endpoint!"}"#)
}

fn json_bytes(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    reply(edge::errors::not_found(req.path()))
}

/// A query string that does not parse is a JSON 400 saying why.
pub(crate) fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let answer = edge::errors::error(http::StatusCode::BAD_REQUEST, &err.to_string());
        actix_web::error::InternalError::from_response(err, reply(answer)).into()
    })
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test};

    /// Which resource actix routes each flow run to: a flow defined before the routes were
    /// mounted has its own, the rest go through `/flow/{name}`.
    #[actix_web::test]
    async fn flows_defined_at_mount_have_their_own_resource() {
        let registry = flows::Registry::new();
        let echo = |input: String, _ctx| async move { Ok::<_, flows::FlowError>(input) };
        registry.define_flow("early", "defined before the mount", echo);
        registry.define_flow("odd{name}", "a name a pattern cannot hold", echo);
        let keys: Vec<String> = registry.actions().into_iter().map(|a| a.key).collect();
        let app = test::init_service(App::new().configure(|cfg| super::mount(cfg, &keys))).await;
        registry.define_flow("late", "defined after the mount", echo);
        for (path, pattern) in [
            ("/flow/early", "/flow/early"),
            ("/flow/%65arly", "/flow/early"),
            ("/flow/late", "/flow/{name}"),
            ("/flow/odd%7Bname%7D", "/flow/{name}"),
            ("/flow/missing", "/flow/{name}"),
        ] {
            let req = test::TestRequest::post().uri(path).to_request();
            // The handlers' app data is not there: only the routing is looked at.
            let res = test::call_service(&app, req).await;
            assert_eq!(
                res.request().match_pattern().as_deref(),
                Some(pattern),
                "{path}"
            );
        }
    }
}

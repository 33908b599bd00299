//! `AdminApi`: the axum router, and how it runs under the manager.

use std::net::TcpListener;
use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json, Router};
use edge::hyper::Edged;
use edge::{Edge, EdgeConfig, Limits};
use hyper_util::service::TowerToHyperService;
use manager::{BoxFuture, ServeContext, Server};
use serde_json::{Value, json};

type Mount = Arc<dyn Fn(Router) -> Router + Send + Sync>;

/// Its routes' templates (the metrics' `http_route`), besides the edge's admin endpoints.
const ROUTES: &[&str] = &["/", "/__test/slow", "/__test/panic", "/__test/echo"];

/// The operations server. See the crate docs.
#[derive(Clone, Default)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct AdminApi {
    limits: Limits,
    extra: Vec<Mount>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("limits", &self.limits)
            .field("extra_routes", &self.extra.len())
            .finish()
    }
}

impl AdminApi {
    /// The admin endpoints and the index, with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a client may send, and how slowly.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Mounts more routes next to the index (behind the same edge). Each call adds to the
    /// previous ones.
    pub fn routes(mut self, mount: impl Fn(Router) -> Router + Send + Sync + 'static) -> Self {
        self.extra.push(Arc::new(mount));
        self
    }

    fn router(&self, edge: &Edge) -> Router {
        let router = Router::new().route("/", get(index));
        let router = self
            .extra
            .iter()
            .fold(router, |router, mount| mount(router));
        // Handlers that read bodies find the limits (and the rest of the edge) here.
        router.layer(Extension(edge.clone()))
    }
}

/// `GET /`: what this listener serves.
async fn index(Extension(edge): Extension<Edge>) -> Json<Value> {
    Json(json!({
        "server": edge.ctx().name(),
        "endpoints": edge::admin::ENDPOINTS
            .iter()
            .map(|e| (format!("{} {}", e.method(), e.path), json!(e.about)))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

impl Server for AdminApi {
    fn framework(&self) -> &'static str {
        "axum"
    }

    /// What the kernel queued before the stop is accepted and served, not reset.
    fn accept_stop_lag(&self) -> std::time::Duration {
        edge::ACCEPT_STOP_LAG
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            // Bound on loopback (the default), it is for this machine only: loopback Host
            // names, so a DNS-rebinding page can neither read /__serverz nor quit. Bound
            // elsewhere (--admin-host 0.0.0.0), probes reach it by pod IP or service name.
            let config = EdgeConfig::new().limits(self.limits).routes(ROUTES);
            let config = if ctx.local_addr().ip().is_loopback() {
                config.loopback_hosts()
            } else {
                config
            };
            let edge = Edge::new(ctx.clone(), config);
            let router = self.router(&edge);
            edge::hyper::serve(listener, &ctx, &self.limits, |peer| {
                Edged::new(edge.clone(), peer, TowerToHyperService::new(router.clone()))
            })
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use manager::{Outcome, ShutdownReason};
    use tokio::sync::Notify;

    use super::*;

    /// A request held open by a `Notify` when shutdown starts still completes with 200, and
    /// the server stops as soon as it has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_request_completes_during_shutdown() {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (e, r) = (Arc::clone(&entered), Arc::clone(&release));
        let api = AdminApi::new().routes(move |router| {
            let (e, r) = (Arc::clone(&e), Arc::clone(&r));
            router.route(
                "/hold",
                get(move || async move {
                    e.notify_one();
                    r.notified().await;
                    "released"
                }),
            )
        });
        let edge::testing::Started { handle, run, .. } = edge::testing::start("admin", api).await;
        let url = handle.server_info().servers[0].url.clone().unwrap();
        let health = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                ureq::get(format!("{url}/__healthz"))
                    .call()
                    .unwrap()
                    .status()
                    .as_u16()
            })
            .await
            .unwrap()
        };
        assert_eq!(health, 200);

        let request = tokio::task::spawn_blocking(move || {
            let mut res = ureq::get(format!("{url}/hold")).call().unwrap();
            let close = res
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                res.status().as_u16(),
                close,
                res.body_mut().read_to_string().unwrap(),
            )
        });
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .unwrap();
        handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!run.is_finished(), "must wait for the held request");
        release.notify_one();

        let (status, close, body) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "released"));
        assert_eq!(close.as_deref(), Some("close"), "draining answers close");
        let report = edge::testing::report_soon(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 2);
    }
}

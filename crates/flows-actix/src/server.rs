//! `FlowsApi`: the actix-web server and how it maps the manager's shutdown onto actix.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use flows::Registry;
use manager::{BoxFuture, ServeContext, Server};

use crate::middleware::track;
use crate::routes;

/// How long to wait for actix's worker threads to drop the requests a forced stop cut. Less
/// than the manager's grace after the deadline.
const WORKER_UNWIND: Duration = Duration::from_millis(400);

/// See the stopper in `serve`.
const ACCEPT_THREAD_SETTLE: Duration = Duration::from_millis(10);

type Configure = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// The flows API server. See the crate docs.
#[derive(Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct FlowsApi {
    registry: Arc<Registry>,
    workers: usize,
    extra_routes: Option<Configure>,
}

impl std::fmt::Debug for FlowsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowsApi")
            .field("workers", &self.workers)
            .field("extra_routes", &self.extra_routes.is_some())
            .finish()
    }
}

impl FlowsApi {
    /// One worker per CPU, the standard routes, the flows of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        FlowsApi {
            registry,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            extra_routes: None,
        }
    }

    /// How many actix worker threads serve requests (at least one).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Mounts more routes next to the standard ones (behind the same middleware).
    pub fn routes(
        mut self,
        configure: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        self.extra_routes = Some(Arc::new(configure));
        self
    }

    /// Builds the actix server. A plain function on purpose: actix's builder is not `Send`,
    /// so it must not live across an `.await` in the serve future.
    fn build(
        &self,
        listener: TcpListener,
        ctx: &ServeContext,
        #[cfg(feature = "test-routes")] crash: &routes::test_routes::Crash,
    ) -> std::io::Result<actix_web::dev::Server> {
        let data = web::Data::new(ctx.clone());
        #[cfg(feature = "test-routes")]
        let crash = web::Data::new(crash.clone());
        let registry = web::Data::new(Arc::clone(&self.registry));
        let extra = self.extra_routes.clone();
        // actix counts whole seconds; the manager enforces the exact deadline itself.
        let deadline_secs = ctx.drain_deadline().as_secs().max(1);
        let server = HttpServer::new(move || {
            let extra = extra.clone();
            let app = App::new();
            #[cfg(feature = "test-routes")]
            let app = app.app_data(crash.clone());
            app.app_data(data.clone())
                .app_data(registry.clone())
                .app_data(routes::json_config())
                .app_data(web::PayloadConfig::new(routes::BODY_LIMIT))
                .app_data(routes::query_config())
                .configure(move |cfg| {
                    if let Some(extra) = &extra {
                        extra(cfg);
                    }
                })
                .configure(routes::mount)
                .default_service(web::to(routes::not_found))
                .wrap(from_fn(track))
        })
        .workers(self.workers)
        // The manager owns signals; actix's own handler would turn Ctrl+C into a forced stop.
        .disable_signals()
        .shutdown_timeout(deadline_secs)
        .listen(listener)?
        .run();
        Ok(server)
    }
}

impl Server for FlowsApi {
    fn framework(&self) -> &'static str {
        "actix-web"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            #[cfg(feature = "test-routes")]
            let crash = routes::test_routes::Crash::default();
            let server = self.build(
                listener,
                &ctx,
                #[cfg(feature = "test-routes")]
                &crash,
            )?;
            let handle = server.handle();
            #[cfg(feature = "test-routes")]
            let crash_handle = server.handle();
            let requests = Arc::clone(ctx.requests());
            // actix checks a graceful stop's progress once a second and counts idle keep-alive
            // connections as busy. Instead: stop accepting, wait until the manager's count of
            // in-flight requests is zero (or the deadline passed), then close what is left.
            let stopper = tokio::spawn(async move {
                ctx.shutdown().cancelled().await;
                handle.pause().await;
                // `pause` returns once the command is sent; give actix's accept thread a
                // moment to take it before the socket stops listening under it.
                tokio::time::sleep(ACCEPT_THREAD_SETTLE).await;
                ctx.stop_listening();
                ctx.drained().await;
                handle.stop(false).await;
            });
            #[cfg(not(feature = "test-routes"))]
            let result = server.await;
            #[cfg(feature = "test-routes")]
            let result = {
                let mut server = std::pin::pin!(server);
                tokio::select! {
                    result = &mut server => result,
                    () = crash.0.notified() => {
                        // Let the crash request's answer go out, then die as a broken server.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        stopper.abort();
                        // The command is sent at once; the server future carries it out.
                        drop(crash_handle.stop(false));
                        let _ = server.await;
                        anyhow::bail!("injected crash (POST /__test/crash)");
                    }
                }
            };
            stopper.abort();
            // A forced stop returns before the worker threads have dropped the requests they
            // cut; wait (briefly) for those drops, so each cut request is logged before exit.
            let _ = tokio::time::timeout(WORKER_UNWIND, requests.wait_idle()).await;
            result.map_err(Into::into)
        })
    }

    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(server = ctx.name(), addr = %ctx.local_addr(), workers = self.workers, "startup hook");
            Ok(())
        })
    }

    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(
                server = ctx.name(),
                served = ctx.requests().served(),
                "shutdown hook"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use manager::{Outcome, ServerConfig, ServerManager, ShutdownReason};
    use tokio::sync::Notify;

    use super::*;

    /// A request held open by a `Notify` when shutdown starts still completes with 200, and
    /// the server stops as soon as it has (not a second later).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_request_completes_during_shutdown() {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (e, r) = (Arc::clone(&entered), Arc::clone(&release));
        let api = FlowsApi::new(Registry::new())
            .workers(1)
            .routes(move |cfg| {
                let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                cfg.route(
                    "/hold",
                    web::get().to(move || {
                        let (e, r) = (Arc::clone(&e), Arc::clone(&r));
                        async move {
                            e.notify_one();
                            r.notified().await;
                            "released"
                        }
                    }),
                );
            });
        let mut manager = ServerManager::new()
            .handle_signals(false)
            .drain_deadline(Duration::from_secs(5));
        manager.add_server(ServerConfig::new("flows"), api);
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), handle.wait_live())
                .await
                .unwrap(),
            manager::ProcessState::Live
        );
        let url = handle.server_info().servers[0].url.clone().unwrap();

        let request = tokio::task::spawn_blocking(move || {
            let mut res = ureq::get(format!("{url}/hold")).call().unwrap();
            (
                res.status().as_u16(),
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

        let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "released"));
        let started = std::time::Instant::now();
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "stopped {:?} after idle",
            started.elapsed()
        );
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.servers[0].requests.served, 1);
    }
}

//! `ReflectionApi`: the poem server, its middleware, and the discovery file's lifecycle.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flows::Registry;
use manager::{BoxFuture, GuardCell, ServeContext, Server};
use poem::http::header::{CONNECTION, HeaderName, HeaderValue};
use poem::listener::TcpAcceptor;
use poem::middleware::{CatchPanic, Cors};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};

use crate::api;
use crate::discovery::{RuntimeFile, discovery_root};
use crate::head_deadline::{HEAD_TIMEOUT, HeadDeadlineAcceptor};

/// The reflection server. See the crate docs.
#[derive(Debug, Clone)]
#[must_use = "a server does nothing until it is added to a ServerManager"]
pub struct ReflectionApi {
    registry: Arc<Registry>,
    name: Option<String>,
    root: Option<PathBuf>,
    runtime_file: Arc<Mutex<Option<PathBuf>>>,
}

impl ReflectionApi {
    /// A reflection server for the flows of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        ReflectionApi {
            registry,
            name: None,
            root: None,
            runtime_file: Arc::default(),
        }
    }

    /// The runtime's display name in the discovery file.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where `.genkit/runtimes/` goes, instead of the CLI's rule applied to the working
    /// directory.
    pub fn discovery_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// The discovery file written at startup, until it is removed at shutdown.
    pub fn runtime_file(&self) -> Option<PathBuf> {
        self.runtime_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What every handler can reach, as poem request data.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Arc<Registry>,
    pub(crate) ctx: ServeContext,
    pub(crate) runtime_id: String,
}

static GENKIT_VERSION_HEADER: HeaderName = HeaderName::from_static("x-genkit-version");

fn app(state: Arc<State>) -> impl Endpoint<Output = Response> {
    let cors =
        Cors::new().expose_headers(["X-Genkit-Trace-Id", "X-Genkit-Span-Id", "x-genkit-version"]);
    let ctx = state.ctx.clone();
    api::routes(Route::new())
        .with(CatchPanic::new().with_handler(on_panic))
        .with(cors)
        .data(state)
        .around(move |ep, mut req: Request| {
            let ctx = ctx.clone();
            async move {
                let path = req.uri().path().to_owned();
                let slot = Arc::new(GuardCell::new(
                    ctx.begin_request(req.method().as_str(), &path),
                ));
                req.extensions_mut().insert(Arc::clone(&slot));
                // poem hands 404/405 to middleware as errors; answer them as JSON here.
                let mut res = match ep.call(req).await {
                    Ok(res) => res.into_response(),
                    Err(err) => api::error_response(err.status(), &path),
                };
                let headers = res.headers_mut();
                headers.insert(
                    GENKIT_VERSION_HEADER.clone(),
                    HeaderValue::from_static(crate::GENKIT_VERSION),
                );
                if ctx.requests().is_draining() {
                    headers.insert(CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some(guard) = slot.take() {
                    guard.finish(res.status().as_u16());
                }
                Ok(res)
            }
        })
}

impl Server for ReflectionApi {
    fn framework(&self) -> &'static str {
        "poem"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let state = Arc::new(State {
                registry: Arc::clone(&self.registry),
                runtime_id: runtime_id(&ctx),
                ctx: ctx.clone(),
            });
            let acceptor = HeadDeadlineAcceptor::new(
                TcpAcceptor::from_std(listener)?,
                HEAD_TIMEOUT,
                ctx.shutdown().clone(),
            );
            // The acceptor stops on the shutdown token itself, so the socket can stop
            // listening at once; poem is told to close idle connections a moment later.
            let stop = {
                let ctx = ctx.clone();
                async move {
                    ctx.shutdown().cancelled().await;
                    ctx.stop_listening();
                    ctx.close_idle().cancelled().await;
                }
            };
            poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app(state), stop, Some(ctx.drain_deadline()))
                .await?;
            Ok(())
        })
    }

    /// The socket already listens here, so the CLI's first health check finds it.
    fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let root = match &self.root {
                Some(root) => root.clone(),
                None => discovery_root(&std::env::current_dir()?),
            };
            let file = RuntimeFile::new(ctx.local_addr().port(), self.name.clone());
            let path = file.write(&root).map_err(|err| {
                anyhow::anyhow!(
                    "cannot write the runtime file under {}: {err}",
                    root.display()
                )
            })?;
            tracing::info!(server = ctx.name(), path = %path.display(), "runtime file written");
            *self.runtime_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
            Ok(())
        })
    }

    fn on_shutdown<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let path = self
                .runtime_file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(path) = path {
                RuntimeFile::remove_if_ours(&path)?;
                tracing::info!(server = ctx.name(), path = %path.display(), "runtime file removed");
            }
            Ok(())
        })
    }
}

fn on_panic(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    api::json_error(
        poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    )
}

fn runtime_id(ctx: &ServeContext) -> String {
    format!("{}-{}", std::process::id(), ctx.local_addr().port())
}

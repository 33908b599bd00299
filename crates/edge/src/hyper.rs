//! The serve loop of a server built on hyper 1 (plain hyper, axum), keeping the manager's
//! contract: accept until told to stop, close idle connections when told, return once every
//! connection has finished or the drain deadline has passed.

use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use manager::ServeContext;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Begun, Edge, Limits, RequestScope, errors};

/// Serves HTTP/1.1 on `listener` until the manager's stop sequence has run, one service per
/// connection from `make_service(peer)`.
///
/// A request head (and a keep-alive connection's next one) must arrive within
/// [`Limits::head_timeout`] (hyper's own timer; a head larger than hyper's buffer is a 431);
/// at most [`Limits::connections`] connections are open at once (one more is answered 503).
/// Once told to stop, it serves what the kernel had queued: the `Server` must return
/// [`ACCEPT_STOP_LAG`](crate::ACCEPT_STOP_LAG) from `accept_stop_lag` for that to happen.
///
/// # Errors
/// When the listener cannot be registered with tokio.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    ctx: &ServeContext,
    limits: &Limits,
    make_service: M,
) -> std::io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that none outlives `serve`: at the drain deadline what is
    // left is dropped (its requests logged as cut) before `serve` returns.
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    let limit = crate::ConnectionLimit::new(limits.connections);
    loop {
        // Once told to stop, only what the kernel already queued (the manager then stops
        // the socket listening, and an accept racing that would fail).
        let (stream, peer) = match crate::accept_or_done(ctx, listener.accept()).await {
            None => break,
            Some(Ok(accepted)) => accepted,
            // Out of file descriptors and the like: wait, don't spin.
            Some(Err(err)) => {
                crate::accept_failed(ctx, err).await;
                continue;
            }
        };
        let Some(stream) = limit.admit(ctx.name(), stream) else {
            continue;
        };
        let conn = builder.serve_connection(TokioIo::new(stream), make_service(peer));
        let conn = graceful.watch(conn);
        let cut = cut.clone();
        connections.spawn(async move {
            tokio::select! {
                // A client hanging up is not the server's error.
                _ = conn => {}
                () = cut.cancelled() => {}
            }
        });
    }
    drop(listener);
    connections.close();
    ctx.close_idle().cancelled().await;
    // Idle connections close now; busy ones after their answer (with `Connection: close`).
    if tokio::time::timeout(ctx.drain_deadline(), graceful.shutdown())
        .await
        .is_err()
    {
        cut.cancel();
        let _ = tokio::time::timeout(Duration::from_millis(100), connections.wait()).await;
    }
    Ok(())
}

/// Puts the edge in front of a hyper service: every request begins a scope; what the edge
/// answers (admin endpoints, refusals) is answered; the rest goes to `inner`, whose panics
/// become a 500 for that request only and whose bodiless error answers get the JSON error
/// body; every answer carries the scope's headers; a streamed body keeps the scope open to
/// its last byte.
///
/// The peer's address comes from the connection (see [`serve`]).
#[derive(Debug, Clone)]
pub struct Edged<S> {
    edge: Edge,
    peer: SocketAddr,
    inner: S,
}

impl<S> Edged<S> {
    /// `inner` behind `edge`, for one connection from `peer`.
    pub fn new(edge: Edge, peer: SocketAddr, inner: S) -> Self {
        Edged { edge, peer, inner }
    }
}

impl<S, B> Service<Request<Incoming>> for Edged<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<EdgeBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let head = self
            .edge
            .head_of(req.method(), req.uri(), req.headers(), Some(self.peer.ip()));
        let scope = match self.edge.begin(&head) {
            Begun::Answered(scope, reply) => {
                let res = reply.map(|bytes| EdgeBody::Reply(Some(bytes)));
                return Box::pin(std::future::ready(Ok(stamped(scope, res))));
            }
            Begun::Route(scope) => scope,
        };
        // hyper sends no body for HEAD and never polls it: finished at the head.
        let head_only = req.method() == http::Method::HEAD;
        let answer = AssertUnwindSafe(self.inner.call(req)).catch_unwind();
        Box::pin(async move {
            let res = match answer.await {
                Ok(Ok(res)) => res,
                // hyper sends nothing and closes the connection: the scope, dropped, logs
                // the request as aborted.
                Ok(Err(err)) => return Err(err),
                Err(panic) => {
                    let reply = errors::panicked(scope.server(), scope.id(), &*panic);
                    let res = reply.map(|bytes| EdgeBody::Reply(Some(bytes)));
                    return Ok(stamped(scope, res));
                }
            };
            let status = res.status();
            if status.as_u16() >= 400 && res.body().size_hint().exact() == Some(0) {
                let allow = res
                    .headers()
                    .get(http::header::ALLOW)
                    .and_then(|a| a.to_str().ok());
                let reply = errors::for_status(status, scope.path(), allow);
                // The inner answer's headers stay (`WWW-Authenticate`, `Retry-After`...); the
                // body and its type are the edge's.
                let (mut parts, _) = res.into_parts();
                let (reply_parts, bytes) = reply.into_parts();
                parts.headers.remove(http::header::CONTENT_LENGTH);
                parts.headers.extend(reply_parts.headers);
                let res = Response::from_parts(parts, EdgeBody::Reply(Some(bytes)));
                return Ok(stamped(scope, res));
            }
            let res = res.map(|body| EdgeBody::Inner { body, scope: None });
            if head_only {
                let mut res = res;
                scope.stamp(res.headers_mut());
                scope.finish(res.status().as_u16());
                return Ok(res);
            }
            Ok(stamped(scope, res))
        })
    }
}

/// Stamps the scope's headers on `res` and finishes the scope: now, or, for a streamed body,
/// at its last byte.
fn stamped<B: Body>(scope: RequestScope, mut res: Response<EdgeBody<B>>) -> Response<EdgeBody<B>> {
    scope.stamp(res.headers_mut());
    let status = res.status().as_u16();
    match res.body_mut() {
        EdgeBody::Inner { body, scope: slot } if body.size_hint().exact().is_none() => {
            *slot = Some((scope, status));
        }
        _ => scope.finish(status),
    }
    res
}

/// The body of an answer through [`Edged`]: the edge's own reply, or the inner service's
/// body carrying the request's scope until its last frame.
#[derive(Debug)]
pub enum EdgeBody<B> {
    /// An answer the edge built.
    Reply(Option<Bytes>),
    /// The inner service's body.
    Inner {
        /// The body.
        body: B,
        /// The scope and status, while a streamed body runs.
        scope: Option<(RequestScope, u16)>,
    },
}

impl<B> Body for EdgeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            EdgeBody::Reply(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            EdgeBody::Inner { body, scope } => {
                let mut body = Pin::new(body);
                let polled = body.as_mut().poll_frame(cx);
                // hyper stops polling once a body says it has ended (or after trailers): the
                // last frame, not only `None`, finishes the request.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || body.is_end_stream(),
                    _ => false,
                };
                if ended && let Some((scope, status)) = scope.take() {
                    scope.finish(status);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Reply(bytes) => bytes.is_none(),
            EdgeBody::Inner { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Reply(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            EdgeBody::Inner { body, .. } => body.size_hint(),
        }
    }
}

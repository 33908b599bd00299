//! The one middleware every request passes, and the conversions between actix-web (on `http`
//! 0.2) and the edge (on `http` 1.x). The edge does the work: it begins the request's scope,
//! answers the admin endpoints, builds the JSON errors; this file hands it the request head,
//! sends what it answered, puts the scope's headers on every answer, and keeps a streamed
//! answer's scope open until its last byte.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BodyStream, BoxBody, MessageBody};
use actix_web::dev::{Service, Transform};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{Error, HttpRequest, HttpResponse, web};
use bytes::Bytes;
use edge::{Begun, Edge, RequestHead, RequestScope};
use futures_util::{FutureExt, Stream};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The middleware, as `App::wrap(Track(edge))` with the server's [`Edge`] (also its app
/// data, for the routes).
///
/// Written out rather than `middleware::from_fn`: that one boxes its future and the inner
/// service's, and clones two `Rc`s per request (this saved ~140 instructions per `/greet`
/// and ~730 per flow run, callgrind).
pub(crate) struct Track(pub(crate) web::Data<Edge>);

impl<S> Transform<S, ServiceRequest> for Track
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse;
    type Error = Error;
    type Transform = TrackService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<TrackService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(TrackService {
            service,
            edge: Rc::new(Edge::clone(&self.0)),
        }))
    }
}

pub(crate) struct TrackService<S> {
    service: S,
    /// The worker's own (actix builds a service per worker thread): each request's future
    /// holds a clone, and the `Arc` every worker shares would move its count's cache line
    /// between the cores twice a request (perf, `wrk` on two cores).
    edge: Rc<Edge>,
}

impl<S> Service<ServiceRequest> for TrackService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse;
    type Error = Error;
    type Future = Tracked<S::Future>;

    actix_web::dev::forward_ready!(service);

    /// The routes' answer as it was (its body already actix's `BoxBody`, so nothing is
    /// re-wrapped per request: ~90 instructions, callgrind), an answer the edge built, or a
    /// streamed body that finishes the request's scope at its last byte.
    fn call(&self, req: ServiceRequest) -> Self::Future {
        let edge = Rc::clone(&self.edge);
        let scope = match edge.begin(&head(&edge, &req)) {
            Begun::Route(scope) => scope,
            Begun::Answered(scope, answer) => {
                let res = finished(scope, reply(answer));
                return Tracked::Done(Some(Ok(ServiceResponse::new(req.into_parts().0, res))));
            }
        };
        // No clone of the request may be held across the call: actix routes by mutating it
        // in place. What goes wrong past this point is therefore returned as `Err` carrying
        // its (stamped) answer, which actix sends as it is.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.service.call(req))) {
            Ok(routed) => Tracked::Routed {
                routed: AssertUnwindSafe(routed).catch_unwind(),
                edge,
                scope: Some(scope),
            },
            Err(panic) => Tracked::Done(Some(Err(panicked(&edge, scope, &*panic)))),
        }
    }
}

/// [`TrackService`]'s future: the routes' answer, kept to the edge's rules.
pub(crate) enum Tracked<F> {
    /// Answered already (by the edge, or a panic while routing); taken when polled.
    Done(Option<Result<ServiceResponse, Error>>),
    Routed {
        routed: futures_util::future::CatchUnwind<AssertUnwindSafe<F>>,
        edge: Rc<Edge>,
        /// Taken when the answer is.
        scope: Option<RequestScope>,
    },
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<ServiceResponse, Error>> + Unpin,
{
    type Output = Result<ServiceResponse, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Tracked::Done(done) => {
                Poll::Ready(done.take().expect("Tracked polled after it answered"))
            }
            Tracked::Routed {
                routed,
                edge,
                scope,
            } => {
                let caught = std::task::ready!(Pin::new(routed).poll(cx));
                let scope = scope.take().expect("Tracked polled after it answered");
                Poll::Ready(match caught {
                    Ok(Ok(res)) => Ok(answered(edge, scope, res)),
                    Ok(Err(err)) => {
                        let res = err.error_response();
                        let res = match json_error_for(edge, &res, None) {
                            Some(json) => reply(json),
                            None => res,
                        };
                        Err(InternalError::from_response(err, finished(scope, res)).into())
                    }
                    Err(panic) => Err(panicked(edge, scope, &*panic)),
                })
            }
        }
    }
}

/// A handler's (or the routing's) panic: a 500 for this request only, as JSON.
fn panicked(edge: &Edge, scope: RequestScope, panic: &(dyn std::any::Any + Send)) -> Error {
    let answer = edge::errors::panicked(edge.ctx().name(), scope.id(), panic);
    let res = finished(scope, reply(answer));
    InternalError::from_response("handler panicked", res).into()
}

/// The request facts the edge looks at, borrowed from actix's request.
fn head<'a>(edge: &Edge, req: &'a ServiceRequest) -> RequestHead<'a> {
    edge.head(
        req.method().as_str(),
        req.path(),
        req.peer_addr().map(|addr| addr.ip()),
        || {
            req.headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
        },
        || req.uri().authority().map(|a| a.as_str()),
    )
}

/// The routes' answer, made to keep the edge's rules: a JSON body on an error actix answered
/// itself, the scope's headers, and the scope finished on the head or, for a streamed body,
/// at its last byte. Inline: the answer and the scope are then not copied into a call and
/// the answer back out of it (~40 instructions, callgrind).
#[inline(always)]
fn answered(edge: &Edge, scope: RequestScope, mut res: ServiceResponse) -> ServiceResponse {
    if let Some(json) = json_error_for(edge, res.response(), Some(res.request())) {
        return res.into_response(finished(scope, reply(json)));
    }
    stamp(&scope, res.response_mut());
    let status = res.status().as_u16();
    if !matches!(res.response().body().size(), BodySize::Stream) {
        scope.finish(status);
        return res;
    }
    // A streamed answer (a flow run's SSE or NDJSON) stays in flight until its last byte.
    res.map_body(|_, body| {
        let body = scope.finish_at_end(status, Chunks(Box::pin(body)));
        BoxBody::new(BodyStream::new(body))
    })
}

/// The JSON error for an error answer that has none: an error actix answered itself (an
/// extractor's, with a plain-text body) or one with an empty body. `None` for every other
/// answer. `req` (for a 404's path) is there when the request survived.
fn json_error_for<B: MessageBody>(
    edge: &Edge,
    res: &HttpResponse<B>,
    req: Option<&HttpRequest>,
) -> Option<edge::Reply> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return None;
    }
    let code = http::StatusCode::from_u16(status.as_u16()).ok()?;
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Some(edge::errors::payload_too_large(edge.limits().body_bytes));
    }
    if let Some(err) = res.error() {
        return Some(edge::errors::error(code, &err.to_string()));
    }
    if !matches!(res.body().size(), BodySize::None | BodySize::Sized(0)) {
        return None;
    }
    let allow = res
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok());
    Some(edge::errors::for_status(
        code,
        req.map_or("", HttpRequest::path),
        allow,
    ))
}

/// `res` stamped with the scope's headers, its scope finished with its status.
fn finished(scope: RequestScope, mut res: HttpResponse) -> HttpResponse {
    stamp(&scope, &mut res);
    scope.finish(res.status().as_u16());
    res
}

/// The headers every answer carries: `x-request-id`, and `Connection: close` once the server
/// drains (actix's own way, so that it also closes the connection after the answer).
fn stamp<B>(scope: &RequestScope, res: &mut HttpResponse<B>) {
    let id = HeaderValue::from_maybe_shared(scope.request_id_digits())
        .expect("digits are a valid value");
    res.headers_mut().insert(REQUEST_ID.clone(), id);
    if scope.closes_connection() {
        res.head_mut().set_connection_type(ConnectionType::Close);
    }
}

/// An answer the edge built (`http` 1.x) as an actix-web response.
pub(crate) fn reply(reply: edge::Reply) -> HttpResponse {
    let (parts, body) = reply.into_parts();
    let status =
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, body).map_into_boxed_body();
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            res.headers_mut().append(name, value);
        }
    }
    res
}

/// The declared `Content-Length` of a request, for [`edge::read_body`].
pub(crate) fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An actix body as the stream of chunks [`edge::Streamed`] wraps.
struct Chunks<B>(Pin<Box<B>>);

impl<B: MessageBody> Stream for Chunks<B> {
    type Item = Result<Bytes, B::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

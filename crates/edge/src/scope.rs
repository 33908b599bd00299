//! One request's scope: begun when the head arrives, finished on the response head (or, for a
//! streamed body, at its last byte), aborted when dropped unfinished.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::header::{CONNECTION, HeaderName, HeaderValue};
use manager::requests::RequestGuard;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One request in flight: counted by the manager (in flight, served, 5xx, latency), logged
/// once when it finishes, and logged as aborted (client gone, or cut by the drain deadline)
/// when it is dropped unfinished.
#[derive(Debug)]
#[must_use = "a scope dropped at once logs the request as aborted"]
pub struct RequestScope {
    guard: RequestGuard,
}

impl RequestScope {
    pub(crate) fn new(guard: RequestGuard) -> Self {
        RequestScope { guard }
    }

    /// The process-unique request id (sent back as `x-request-id`).
    pub fn id(&self) -> u64 {
        self.guard.id()
    }

    /// The request's path, without the query (kept by the scope, so a middleware need not
    /// keep the request's URI for its error answers).
    pub fn path(&self) -> &str {
        self.guard.path()
    }

    /// The `x-request-id` value.
    pub fn request_id(&self) -> HeaderValue {
        let mut buffer = itoa::Buffer::new();
        HeaderValue::from_str(buffer.format(self.guard.id())).expect("digits are a valid value")
    }

    /// Whether the response must carry `Connection: close` (the server is draining).
    pub fn closes_connection(&self) -> bool {
        self.guard.closes_connection()
    }

    /// Puts the headers every response carries on `headers`: `x-request-id`, and
    /// `Connection: close` once the server drains.
    pub fn stamp(&self, headers: &mut http::HeaderMap) {
        headers.insert(REQUEST_ID.clone(), self.request_id());
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }

    /// The request is answered with `status`: count and log it.
    pub fn finish(self, status: u16) {
        self.guard.finish(status);
    }

    /// The request is answered with `status` once `body` has yielded its last item: until
    /// then it stays in flight (the drain waits for it); dropped before that (the client went
    /// away, or the drain deadline cut it), it is logged as aborted.
    pub fn finish_at_end<S>(self, status: u16, body: S) -> Streamed<S> {
        Streamed {
            body,
            scope: Some((self, status)),
        }
    }
}

/// A streamed body that keeps its request's scope open until the last item. See
/// [`RequestScope::finish_at_end`].
#[derive(Debug)]
pub struct Streamed<S> {
    body: S,
    scope: Option<(RequestScope, u16)>,
}

impl<S, E> Stream for Streamed<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_next(cx);
        if let Poll::Ready(None) = polled
            && let Some((scope, status)) = this.scope.take()
        {
            scope.finish(status);
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.body.size_hint()
    }
}

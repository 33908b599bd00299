//! One request's scope: begun when the head arrives, finished on the response head (or, for a
//! streamed body, at its last byte), aborted when dropped unfinished.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::header::{CONNECTION, HeaderName, HeaderValue};
use manager::requests::RequestGuard;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bytes of the blocks request ids are cut from: ids of up to 20 digits, ~500 of today's.
const ID_BLOCK: usize = 4096;

/// See [`RequestScope::request_id_digits`].
fn id_digits(id: u64) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(id).as_bytes();
    ID_DIGITS.with_borrow_mut(|block| {
        if block.capacity() < digits.len() {
            *block = bytes::BytesMut::with_capacity(ID_BLOCK);
        }
        block.extend_from_slice(digits);
        block.split().freeze()
    })
}

thread_local! {
    static ID_DIGITS: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

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

    /// The name of the server it came to (for its error answers, as [`path`](Self::path)).
    pub fn server(&self) -> &str {
        self.guard.server()
    }

    /// The `x-request-id` value.
    pub fn request_id(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.request_id_digits()).expect("digits are a valid value")
    }

    /// The id's digits, for a framework on other `http` types. Cut from a per-thread block
    /// shared by many ids, where a value of their own costs each answer an allocation and a
    /// free (~130 instructions a request on actix, callgrind); a block lives while a value cut
    /// from it does, so a value kept for long keeps [`ID_BLOCK`] bytes.
    pub fn request_id_digits(&self) -> Bytes {
        id_digits(self.guard.id())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids cut from one block and across blocks keep their own digits, also while earlier
    /// ones are held.
    #[test]
    fn request_id_digits_are_each_ids_own() {
        let ids: Vec<u64> = (0..3 * ID_BLOCK as u64)
            .map(|n| n * 7919)
            .chain([u64::MAX])
            .collect();
        let held: Vec<Bytes> = ids.iter().map(|&id| id_digits(id)).collect();
        for (id, digits) in ids.iter().zip(&held) {
            assert_eq!(digits, id.to_string().as_bytes());
        }
        let value = HeaderValue::from_maybe_shared(id_digits(42)).unwrap();
        assert_eq!(value, "42");
    }
}

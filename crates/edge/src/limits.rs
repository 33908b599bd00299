//! The limits every server enforces, as one config, and the pieces that enforce them where a
//! framework does not: a bounded, timed body read and a request-head deadline on connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::errors::{self, Reply};

/// What a client may send and how slowly. Every server gets the same values (the binary sets
/// them once); each framework crate maps them onto its framework's own knobs where it has one
/// and onto the edge's pieces ([`read_body`], [`HeadDeadline`]) where it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body read, in bytes (413 above it; a declared `Content-Length`
    /// over it is refused before any of the body is read).
    pub body_bytes: usize,
    /// How long a client may take to send a request head, from connecting or from the end of
    /// the previous answer; a keep-alive connection waiting that long for its next request is
    /// closed too (on poem, through [`HeadDeadline::idle_unless`], only at a moment the
    /// server has no request in flight: a server kept busy keeps its idle connections, up to
    /// [`Limits::connections`]).
    pub head_timeout: Duration,
    /// How long reading a request body may take once it started (408 after it).
    pub body_timeout: Duration,
    /// How many connections a server keeps open at once; one more is answered `503` and
    /// closed ([`ConnectionLimit`](crate::ConnectionLimit); actix, which accepts on threads
    /// of its own, instead leaves it in the listen backlog until a connection closes).
    pub connections: usize,
}

impl Default for Limits {
    /// 1 MiB bodies, 10 s for a head, 10 s for a body, 1024 connections.
    fn default() -> Self {
        Limits {
            body_bytes: 1 << 20,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            connections: 1024,
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// Larger than [`Limits::body_bytes`] (declared or sent).
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not complete within [`Limits::body_timeout`].
    TooSlow {
        /// The limit.
        timeout: Duration,
    },
    /// The connection failed while reading.
    Broken {
        /// What the framework said.
        detail: String,
    },
}

impl BodyError {
    /// The JSON answer: 413, 408 or 400.
    pub fn reply(&self) -> Reply {
        match self {
            BodyError::TooLarge { limit } => errors::payload_too_large(*limit),
            BodyError::TooSlow { timeout } => errors::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("request body not received within {timeout:?}"),
            ),
            BodyError::Broken { detail } => errors::error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {detail}"),
            ),
        }
    }
}

/// The declared `Content-Length` of an `http` 1.x request, if any (for [`read_body`]).
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a whole request body within `limits`: at most [`Limits::body_bytes`] (a declared
/// `content_length` over it fails at once), within [`Limits::body_timeout`].
///
/// # Errors
/// [`BodyError`] says which limit was hit; [`BodyError::reply`] is the answer to send.
pub async fn read_body<S, E>(
    body: S,
    content_length: Option<u64>,
    limits: &Limits,
) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let limit = limits.body_bytes;
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        let mut total = 0usize;
        while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            let chunk = chunk.map_err(|err| BodyError::Broken {
                detail: err.to_string(),
            })?;
            total += chunk.len();
            if total > limit {
                return Err(BodyError::TooLarge { limit });
            }
            // One chunk (the usual case) is kept as it came, without a copy.
            match first.take() {
                None if more.is_empty() => first = Some(chunk),
                None => more.extend_from_slice(&chunk),
                Some(head) => {
                    more.reserve(total);
                    more.extend_from_slice(&head);
                    more.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| more.freeze()))
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .unwrap_or(Err(BodyError::TooSlow {
            timeout: limits.body_timeout,
        }))
}

/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the end of a request head; `newlines` counts line ends in a row.
    Head { newlines: u8 },
    /// A head arrived; `answered` once the server wrote to the connection.
    Request { answered: bool },
    /// Not HTTP/1: no deadline.
    Transparent,
}

/// A connection whose request heads must arrive within a deadline, for servers whose HTTP
/// stack has no timer of its own (poem gives hyper none, so hyper's `header_read_timeout`
/// never fires and a client that never finishes its headers, slowloris, would hold its
/// connection forever).
///
/// While the server waits for a request head (on a new connection, and again once the
/// client sends more bytes after an answer began), the head must end (a blank line) within
/// the timeout; otherwise reading fails and the connection is dropped, whether the client
/// trickles bytes or sends nothing. Request bodies and answers are not limited here. HTTP/2
/// (prior knowledge) is left alone.
///
/// With [`HeadDeadline::idle_unless`], a keep-alive connection is also closed once it has been
/// idle (nothing read or written since an answer began) for the timeout.
pub struct HeadDeadline<T> {
    inner: T,
    timeout: Duration,
    phase: Phase,
    first_read: bool,
    /// When the current phase's time is up. The timer is not moved with it: it may fire
    /// early (at an older deadline) and is then re-armed, so a request costs no timer-wheel
    /// update (a `Sleep::reset` per request and per answer: ~300 instructions a request on
    /// poem, callgrind).
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer holds: it was last polled pending with it, with budget left (a
    /// task out of tokio's budget gets `Pending` without the timer registering its waker).
    /// While the same task looks again and the timer has not elapsed, it will wake that task,
    /// so looking needs no poll (a poll per answer and per idle read: ~110 instructions a
    /// request on poem, callgrind). Another task (the connection moved) polls it again, or
    /// the wake would go to the old one.
    timer_waker: Option<std::task::Waker>,
    busy: Option<Busy>,
}

/// Whether the server has a request in flight.
pub type Busy = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl<T: std::fmt::Debug> std::fmt::Debug for HeadDeadline<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("phase", &self.phase)
            .field("idle_timeout", &self.busy.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> HeadDeadline<T> {
    /// Wraps a freshly accepted connection: its first head is due within `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        HeadDeadline {
            inner,
            timeout,
            phase: Phase::Head { newlines: 0 },
            first_read: true,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_waker: None,
            busy: None,
        }
    }

    /// Also closes the connection once it has been idle for the timeout after an answer began
    /// (the keep-alive idle timeout poem lacks), unless `busy` says the server has a request
    /// in flight then: bytes alone cannot tell a kept-alive connection from a handler that
    /// works for a while before it answers or streams its next chunk, so such a connection
    /// is looked at again one timeout later, for as long as the server stays busy (`busy` is
    /// the server's, not the connection's: poem gives a handler no handle on its
    /// connection).
    #[must_use]
    pub fn idle_unless(mut self, busy: Busy) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Whether reading must fail now because the connection is idle, polling the timer (and
    /// re-arming it while the server is busy) so that the task wakes when it may be.
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.busy.is_none() || self.phase != (Phase::Request { answered: true }) {
            return false;
        }
        while self.time_is_up(cx) {
            if !self.busy.as_ref().is_some_and(|busy| busy()) {
                return true;
            }
            self.deadline = Instant::now() + self.timeout;
        }
        false
    }

    /// Whether [`Self::deadline`] has passed, polling the timer (re-armed at the deadline
    /// when it fired early) so that the task wakes when it does.
    fn time_is_up(&mut self, cx: &mut Context<'_>) -> bool {
        let waits_for_this_task = |waker: &Option<std::task::Waker>, cx: &Context<'_>| {
            waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        };
        if waits_for_this_task(&self.timer_waker, cx) && !self.timer.is_elapsed() {
            return false;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                self.timer_waker = None;
                return true;
            }
            self.timer.as_mut().reset(self.deadline);
        }
        if !tokio::task::coop::has_budget_remaining() {
            // The poll may have been refused by the budget, registering nothing.
            self.timer_waker = None;
        } else if !waits_for_this_task(&self.timer_waker, cx) {
            self.timer_waker = Some(cx.waker().clone());
        }
        false
    }

    /// Whether the head's time is up, read from the clock: a client that always has a byte
    /// ready never lets the read side wait for the timer.
    fn timed_out(&self) -> bool {
        matches!(self.phase, Phase::Head { .. }) && Instant::now() >= self.deadline
    }

    /// Follows the bytes the client sent.
    fn saw(&mut self, bytes: &[u8]) {
        // Only the whole HTTP/2 preface turns the deadline off: `PRI ` and silence is a
        // slowloris like any other.
        if std::mem::take(&mut self.first_read) && bytes.starts_with(H2_PREFACE) {
            self.phase = Phase::Transparent;
            return;
        }
        // More bytes after an answer began: the next request's head, due within the timeout
        // from now. The clock is read only if the head does not arrive whole in these bytes
        // (it mostly does), for only a partial head is ever checked against it.
        let next_head = self.phase == (Phase::Request { answered: true });
        if next_head {
            self.phase = Phase::Head { newlines: 0 };
        }
        let Phase::Head { mut newlines } = self.phase else {
            return;
        };
        // A head ends at or before the end of bytes that end like one, and what follows a head
        // is not looked at: most reads are a whole head (~230 instructions of memchr calls a
        // request less on poem, callgrind).
        if bytes.ends_with(b"\n\r\n") || bytes.ends_with(b"\n\n") {
            self.phase = Phase::Request { answered: false };
            return;
        }
        // The head ends at a line end, any `\r`s, and another line end. Line ends are found with
        // memchr: a loop over every byte cost ~8 instructions a byte of each head (callgrind).
        let mut rest = bytes;
        loop {
            if newlines == 1 {
                let after = rest.iter().position(|&b| b != b'\r');
                match after.map(|at| rest[at]) {
                    None => break,
                    Some(b'\n') => {
                        self.phase = Phase::Request { answered: false };
                        return;
                    }
                    Some(_) => newlines = 0,
                }
            }
            match memchr::memchr(b'\n', rest) {
                Some(at) => {
                    newlines = 1;
                    rest = &rest[at + 1..];
                }
                None => break,
            }
        }
        self.phase = Phase::Head { newlines };
        if next_head {
            self.deadline = Instant::now() + self.timeout;
        }
    }

    /// The server writes `bytes`: once they begin its answer (not an interim `1xx`, such as
    /// the `100 Continue` before a body, which is still to be read, not a next head), the
    /// connection's next bytes are a next request's head.
    fn wrote(&mut self, cx: Option<&mut Context<'_>>, bytes: &[u8]) {
        if self.phase == (Phase::Request { answered: false }) && is_interim(bytes) {
            return;
        }
        if let Phase::Request { answered } = &mut self.phase {
            *answered = true;
            if self.busy.is_some() {
                self.deadline = Instant::now() + self.timeout;
                // hyper polls the read side before it answers and not again until woken: the
                // timer must wake the connection's task itself.
                if let Some(cx) = cx {
                    let _ = self.time_is_up(cx);
                }
            }
        }
    }
}

/// Whether `bytes` begin an interim (`1xx`) HTTP/1 answer.
fn is_interim(bytes: &[u8]) -> bool {
    bytes.len() > 9 && bytes.starts_with(b"HTTP/1.") && bytes[9] == b'1'
}

fn too_slow() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send its request head in time",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out() {
            return Poll::Ready(Err(too_slow()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if !filled.is_empty() {
                    this.saw(filled);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.phase, Phase::Head { .. }) && this.time_is_up(cx) {
                    return Poll::Ready(Err(too_slow()));
                }
                if this.idle(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the keep-alive connection was idle too long",
                    )));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote(Some(cx), buf);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|buf| !buf.is_empty());
        this.wrote(Some(cx), first.map_or(&[], |buf| &buf[..]));
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_body_is_read_whole_within_its_limit() {
        let limits = Limits {
            body_bytes: 8,
            ..Limits::default()
        };
        assert_eq!(
            read_body(chunks(&["ab", "cd"]), None, &limits)
                .await
                .unwrap(),
            "abcd"
        );
        assert_eq!(
            read_body(chunks(&["abc", "def", "gh"]), None, &limits)
                .await
                .unwrap(),
            "abcdefgh",
            "exactly the limit, in three chunks"
        );
        assert_eq!(
            read_body(chunks(&["abcd"]), Some(4), &limits)
                .await
                .unwrap(),
            "abcd"
        );
        assert_eq!(read_body(chunks(&[]), None, &limits).await.unwrap(), "");
        assert_eq!(
            read_body(chunks(&["abcd", "efghi"]), None, &limits).await,
            Err(BodyError::TooLarge { limit: 8 })
        );
        assert_eq!(
            read_body(chunks(&[]), Some(9), &limits).await,
            Err(BodyError::TooLarge { limit: 8 })
        );
        assert_eq!(BodyError::TooLarge { limit: 8 }.reply().status(), 413);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_times_out() {
        let limits = Limits {
            body_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let stalled = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let err = read_body(stalled, None, &limits).await.unwrap_err();
        assert_eq!(err.reply().status(), 408);
    }

    #[tokio::test]
    async fn follows_heads_answers_and_the_next_head() {
        let mut conn = HeadDeadline::new((), Duration::from_secs(10));
        conn.saw(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(conn.phase, Phase::Head { newlines: 1 });
        conn.saw(b"\r\n{\"body\":1}");
        assert_eq!(conn.phase, Phase::Request { answered: false });
        conn.saw(b"more body");
        assert_eq!(conn.phase, Phase::Request { answered: false });
        conn.wrote(None, b"HTTP/1.1 200 OK\r\n");
        conn.saw(b"GET /next HTTP/1.1\n");
        assert_eq!(conn.phase, Phase::Head { newlines: 1 });
        conn.saw(b"\n");
        assert_eq!(conn.phase, Phase::Request { answered: false });

        // The blank line split anywhere, `\r`s between the line ends, a line that only looks
        // like an end.
        for reads in [
            &[&b"GET / HTTP/1.1\r\nA: b\r"[..], b"\n\r", b"\n"][..],
            &[b"GET / HTTP/1.1\n\r", b"\r", b"\r\n"],
            &[b"GET / HTTP/1.1\r\n", b"\r", b"X: y\r\n\r\n"],
            // Whole heads, one pipelined after another, and a blank line split in two.
            &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
            &[b"GET / HTTP/1.1\n\n"],
            &[b"GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"],
            &[b"GET / HTTP/1.1\r\nA: b\r", b"\n\r\n"],
        ] {
            let mut conn = HeadDeadline::new((), Duration::from_secs(10));
            for (i, read) in reads.iter().enumerate() {
                conn.saw(read);
                let ended = conn.phase == (Phase::Request { answered: false });
                assert_eq!(ended, i == reads.len() - 1, "{reads:?} after read {i}");
            }
        }
        let mut conn = HeadDeadline::new((), Duration::from_secs(10));
        conn.saw(b"GET / HTTP/1.1\r\nA: \rb\r\n");
        assert_eq!(conn.phase, Phase::Head { newlines: 1 });

        let mut h2 = HeadDeadline::new((), Duration::from_secs(10));
        h2.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(h2.phase, Phase::Transparent);

        let mut stalled = HeadDeadline::new((), Duration::from_secs(10));
        stalled.saw(b"PRI ");
        assert_eq!(
            stalled.phase,
            Phase::Head { newlines: 0 },
            "a bare PRI keeps the deadline"
        );
        assert_eq!(h2.phase, Phase::Transparent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_after_100_continue_is_not_held_to_the_head_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(1));
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut buf = [0u8; 128];
        assert_eq!(conn.read(&mut buf).await.unwrap(), head.len());
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.phase, Phase::Request { answered: false });
        // The body, slower than the head deadline and with no blank line in it.
        client.write_all(b"abcd").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
        tokio::time::sleep(Duration::from_secs(3)).await;
        client.write_all(b"efgh").await.unwrap();
        assert_eq!(
            conn.read(&mut buf).await.unwrap(),
            4,
            "the body is still read"
        );
        conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(conn.phase, Phase::Request { answered: true });
        let mut answered = HeadDeadline::new((), Duration::from_secs(1));
        answered.saw(b"GET / HTTP/1.1\r\n\r\n");
        answered.wrote(None, b"HTTP/1.0 101 Switching");
        assert_eq!(
            answered.phase,
            Phase::Request { answered: false },
            "any 1xx"
        );
        answered.wrote(None, b"HTTP/1.1 204 No Content\r\n");
        assert_eq!(answered.phase, Phase::Request { answered: true });
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_closes_unless_the_server_is_busy() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let busy = std::sync::Arc::new(AtomicBool::new(true));
        let (server, mut client) = tokio::io::duplex(1024);
        let flag = std::sync::Arc::clone(&busy);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(10))
            .idle_unless(std::sync::Arc::new(move || flag.load(Ordering::SeqCst)));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let started = Instant::now();
        let read = tokio::spawn(async move { conn.read(&mut buf).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!read.is_finished(), "busy: kept");
        busy.store(false, Ordering::SeqCst);
        let err = read.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() <= Duration::from_secs(31),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_head_that_does_not_end_in_time_times_out() {
        let mut conn = HeadDeadline::new((), Duration::from_millis(50));
        conn.saw(b"GET / HTTP/1.1\r\nX-a: ");
        assert!(!conn.timed_out());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(conn.timed_out());
        conn.saw(b"\r\n\r\n");
        assert!(!conn.timed_out(), "a head that ended has no deadline");
    }
}

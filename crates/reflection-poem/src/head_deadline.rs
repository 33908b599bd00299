//! A deadline on reading a request head, which poem does not have: poem builds hyper's
//! connection without a timer, so hyper's own `header_read_timeout` never fires and a client
//! that never finishes its headers (slowloris) would hold its connection forever.
//!
//! [`HeadDeadline`] wraps each accepted connection. While the server waits for a request head
//! (on a new connection, and again once the client sends more bytes after an answer began),
//! the head must end (a blank line) within [`HEAD_TIMEOUT`]; otherwise reading fails and the
//! connection is dropped, whether the client trickles bytes or sends nothing. Request bodies,
//! answers and idle keep-alive connections are not limited. HTTP/2 (prior knowledge) is left
//! alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts like poem's [`TcpAcceptor`], with a [`HeadDeadline`] on every connection, and
/// stops accepting the moment `stop` fires (before poem itself is told to shut down, which
/// closes idle connections: see `ServeContext::close_idle`).
pub(crate) struct HeadDeadlineAcceptor {
    inner: TcpAcceptor,
    timeout: Duration,
    stop: CancellationToken,
}

impl HeadDeadlineAcceptor {
    pub(crate) fn new(inner: TcpAcceptor, timeout: Duration, stop: CancellationToken) -> Self {
        HeadDeadlineAcceptor {
            inner,
            timeout,
            stop,
        }
    }
}

impl Acceptor for HeadDeadlineAcceptor {
    type Io = HeadDeadline<<TcpAcceptor as Acceptor>::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let accepted = tokio::select! {
            biased;
            () = self.stop.cancelled() => std::future::pending().await,
            accepted = self.inner.accept() => accepted,
        };
        let (io, local, remote, scheme) = accepted?;
        Ok((HeadDeadline::new(io, self.timeout), local, remote, scheme))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the end of a request head; `newlines` counts line ends in a row.
    Head { newlines: u8 },
    /// A head arrived; `answered` once the server wrote to the connection.
    Request { answered: bool },
    /// Not HTTP/1: no deadline.
    Transparent,
}

/// A connection whose request heads must arrive within a deadline. See the module docs.
#[derive(Debug)]
pub(crate) struct HeadDeadline<T> {
    inner: T,
    timeout: Duration,
    phase: Phase,
    first_read: bool,
    timer: Pin<Box<Sleep>>,
}

impl<T> HeadDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        HeadDeadline {
            inner,
            timeout,
            phase: Phase::Head { newlines: 0 },
            first_read: true,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn timed_out(&self) -> bool {
        matches!(self.phase, Phase::Head { .. }) && Instant::now() >= self.timer.deadline()
    }

    /// Follows the bytes the client sent.
    fn saw(&mut self, bytes: &[u8]) {
        if std::mem::take(&mut self.first_read) && bytes.starts_with(b"PRI ") {
            self.phase = Phase::Transparent;
            return;
        }
        if self.phase == (Phase::Request { answered: true }) {
            // More bytes after an answer began: the next request's head.
            self.phase = Phase::Head { newlines: 0 };
            let deadline = Instant::now() + self.timeout;
            self.timer.as_mut().reset(deadline);
        }
        let Phase::Head { mut newlines } = self.phase else {
            return;
        };
        for &byte in bytes {
            match byte {
                b'\n' => {
                    newlines += 1;
                    if newlines == 2 {
                        self.phase = Phase::Request { answered: false };
                        return;
                    }
                }
                b'\r' => {}
                _ => newlines = 0,
            }
        }
        self.phase = Phase::Head { newlines };
    }

    fn wrote(&mut self) {
        if let Phase::Request { answered } = &mut self.phase {
            *answered = true;
        }
    }
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
                    let bytes = filled.to_vec();
                    this.saw(&bytes);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.phase, Phase::Head { .. })
                    && this.timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(too_slow()));
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
        this.wrote();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
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

    #[tokio::test]
    async fn follows_heads_answers_and_the_next_head() {
        let mut conn = HeadDeadline::new((), Duration::from_secs(10));
        conn.saw(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(conn.phase, Phase::Head { newlines: 1 });
        conn.saw(b"\r\n{\"body\":1}");
        assert_eq!(conn.phase, Phase::Request { answered: false });
        conn.saw(b"more body");
        assert_eq!(conn.phase, Phase::Request { answered: false });
        conn.wrote();
        conn.saw(b"GET /next HTTP/1.1\n");
        assert_eq!(conn.phase, Phase::Head { newlines: 1 });
        conn.saw(b"\n");
        assert_eq!(conn.phase, Phase::Request { answered: false });

        let mut h2 = HeadDeadline::new((), Duration::from_secs(10));
        h2.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(h2.phase, Phase::Transparent);
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

//! The per-server connection limit: every accepted connection holds a slot until it closes;
//! one accepted over the limit is answered `503` with the JSON error and closed, so that a
//! flood of idle or stalled connections costs a bounded number of file descriptors and
//! buffers, and a client over the limit learns why at once instead of waiting in a backlog.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many refused connections may be in the middle of their `503` at once; beyond that a
/// refused connection is closed without an answer (a flood must not cost more than the limit
/// it hit).
const REFUSING_AT_ONCE: usize = 64;

/// How long a refused connection may take to receive its `503`: the request it sent is read
/// and discarded meanwhile (closing with unread bytes would reset the connection and could
/// destroy the answer before the client read it).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// One server's connection limit. Cheap to clone: clones share the count.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    max: usize,
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl ConnectionLimit {
    /// At most `max` connections at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            max,
            open: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
        }
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.max - self.open.available_permits()
    }

    /// The connection `io`, counted until it is dropped; or, over the limit, `None`: it is
    /// answered `503` and closed in the background (`server` names the server in the log).
    pub fn admit<IO>(&self, server: &str, io: IO) -> Option<Admitted<IO>>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match Arc::clone(&self.open).try_acquire_owned() {
            Ok(slot) => Some(Admitted { io, _slot: slot }),
            Err(_) => {
                tracing::warn!(
                    server,
                    max_connections = self.max,
                    "connection refused: the server has as many connections as it takes"
                );
                if let Ok(refusing) = Arc::clone(&self.refusing).try_acquire_owned() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REFUSAL_LINGER, refuse(io)).await;
                        drop(refusing);
                    });
                }
                None
            }
        }
    }
}

/// Writes the `503`, then reads (and drops) what the client sends until it closes.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) -> io::Result<()> {
    io.write_all(&refusal()).await?;
    io.shutdown().await?;
    let mut sink = [0u8; 1024];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

/// The whole `503` answer, as bytes: no request was parsed, so no framework writes it.
fn refusal() -> Vec<u8> {
    let body = crate::errors::error_body(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "too many connections: the server has as many as it takes (--max-connections); retry later",
    )
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A connection that holds one slot of its server's [`ConnectionLimit`] until it is dropped.
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_limit_a_connection_gets_a_503_and_a_slot_frees_on_drop() {
        let limit = ConnectionLimit::new(1);
        let (first, _client) = tokio::io::duplex(4096);
        let first = limit.admit("t", first).expect("within the limit");
        assert_eq!(limit.open(), 1);

        let (second, mut client) = tokio::io::duplex(4096);
        assert!(limit.admit("t", second).is_none());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["status"], 503);
        let length: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());

        drop(first);
        assert_eq!(limit.open(), 0);
        let (third, _client) = tokio::io::duplex(4096);
        assert!(limit.admit("t", third).is_some(), "the slot came back");
    }
}

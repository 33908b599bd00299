//! Listening sockets handed over by a parent process (systemd socket activation,
//! `watchexec --socket`, `systemfd`), so a restart never closes the ports.

use std::io;
use std::net::TcpListener;

/// Sockets from `LISTEN_FDS`, by position.
///
/// Read them with [`InheritedSockets::from_env`] at the very start of `main`, before the async
/// runtime starts threads: `listenfd` reads and clears environment variables.
#[derive(Debug, Default)]
pub struct InheritedSockets {
    sockets: Vec<Option<io::Result<TcpListener>>>,
}

impl InheritedSockets {
    /// No inherited sockets: every server binds its port spec.
    pub fn none() -> Self {
        Self::default()
    }

    /// Takes every socket passed through `LISTEN_FDS` (when `LISTEN_PID` is this process).
    /// A descriptor that is not a listening TCP socket becomes an error for the server it
    /// was meant for, so the mistake is reported where it matters.
    pub fn from_env() -> Self {
        let mut fds = listenfd::ListenFd::from_env();
        let sockets = (0..fds.len())
            .map(|i| {
                let listener = match fds.take_tcp_listener(i) {
                    Ok(Some(listener)) => listener,
                    Ok(None) => {
                        return Some(Err(io::Error::other(
                            "descriptor is not a TCP listener or was already taken",
                        )));
                    }
                    Err(err) => return Some(Err(err)),
                };
                // Inherited sockets arrive blocking; every framework here expects non-blocking.
                Some(listener.set_nonblocking(true).map(|()| listener))
            })
            .collect();
        InheritedSockets { sockets }
    }

    /// Wraps already-open listeners (tests, embedders).
    pub fn from_listeners(listeners: impl IntoIterator<Item = TcpListener>) -> Self {
        InheritedSockets {
            sockets: listeners.into_iter().map(|l| Some(Ok(l))).collect(),
        }
    }

    /// How many sockets were inherited.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// True when none were.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the socket at `index`, once.
    pub(crate) fn take(&mut self, index: usize) -> Option<io::Result<TcpListener>> {
        self.sockets.get_mut(index).and_then(Option::take)
    }
}

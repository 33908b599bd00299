//! Listening sockets handed over by a parent process (systemd socket activation,
//! `watchexec --socket`, `systemfd`), so a restart never closes the ports.

use std::io;
use std::net::TcpListener;

/// Sockets from `LISTEN_FDS`, by position, with their `LISTEN_FDNAMES` when given.
///
/// Read them with [`InheritedSockets::from_env`] at the very start of `main`, before the async
/// runtime starts threads: `listenfd` reads and clears environment variables.
///
/// How they are matched to servers (when `run` starts):
/// - when every socket has a name (systemd's `FileDescriptorName=`), by name: the socket named
///   like a server goes to that server; servers without one bind their port spec; a name that
///   matches no server is an error;
/// - otherwise by order: the n-th server added gets the n-th socket, and the counts must be
///   equal, since a socket too many or too few means the parent and the program disagree.
#[derive(Debug, Default)]
pub struct InheritedSockets {
    sockets: Vec<Option<io::Result<TcpListener>>>,
    names: Vec<String>,
    /// The names of sockets this process owns outright: handed over by the process it
    /// upgraded, which bound them and is gone. The others belong to a parent that keeps them
    /// listening (systemd, watchexec).
    owned: Vec<String>,
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
        // Colon-separated names, as systemd's LISTEN_FDNAMES.
        let names_in = |var: &str| -> Vec<String> {
            std::env::var(var)
                .map(|names| names.split(':').map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let names = names_in("LISTEN_FDNAMES");
        let owned = names_in(crate::upgrade::OWNED_VAR);
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
                // TCP_NODELAY as on the sockets the manager binds (see port.rs).
                let prepared = listener
                    .set_nonblocking(true)
                    .and_then(|()| socket2::SockRef::from(&listener).set_tcp_nodelay(true));
                Some(prepared.map(|()| listener))
            })
            .collect();
        InheritedSockets {
            sockets,
            names,
            owned,
        }
    }

    /// Wraps already-open listeners (tests, embedders).
    pub fn from_listeners(listeners: impl IntoIterator<Item = TcpListener>) -> Self {
        InheritedSockets {
            sockets: listeners.into_iter().map(|l| Some(Ok(l))).collect(),
            names: Vec::new(),
            owned: Vec::new(),
        }
    }

    /// Names the sockets, as `LISTEN_FDNAMES` does (tests, embedders).
    pub fn with_names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// True when every socket carries a name of its own. systemd names unnamed sockets
    /// `unknown` (or after the unit), which says nothing about which server they are for.
    fn is_named(&self) -> bool {
        !self.sockets.is_empty()
            && self.names.len() == self.sockets.len()
            && self.names.iter().all(|n| !n.is_empty() && n != "unknown")
    }

    /// Reorders the sockets so that `take(i)` gives server `i` its socket.
    ///
    /// # Errors
    /// A description of the mismatch, when the sockets and `servers` don't fit together.
    pub(crate) fn assign(&mut self, servers: &[&str]) -> Result<(), String> {
        if self.sockets.is_empty() {
            return Ok(());
        }
        if self.is_named() {
            let mut by_server: Vec<Option<io::Result<TcpListener>>> =
                servers.iter().map(|_| None).collect();
            for (name, socket) in self.names.iter().zip(self.sockets.drain(..)) {
                let Some(i) = servers.iter().position(|s| s == name) else {
                    return Err(format!(
                        "a socket is named '{name}' but no server has that name (servers: {})",
                        servers.join(", ")
                    ));
                };
                by_server[i] = socket;
            }
            self.sockets = by_server;
            return Ok(());
        }
        if self.sockets.len() != servers.len() {
            return Err(format!(
                "{} socket(s) inherited but {} server(s) to serve ({}); pass one socket per \
                 server, in that order, or name them with LISTEN_FDNAMES",
                self.sockets.len(),
                servers.len(),
                servers.join(", ")
            ));
        }
        Ok(())
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

    /// Whether the socket of server `name` is this process's own (handed over by an upgrade
    /// from the process that bound it), to stop at the stop like one it bound.
    pub(crate) fn owns(&self, name: &str) -> bool {
        self.owned.iter().any(|owned| owned == name)
    }
}

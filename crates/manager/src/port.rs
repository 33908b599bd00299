//! Port specs and binding: the manager binds the socket itself and hands it over, so there is
//! no probe-then-bind race.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::str::FromStr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// Which ports a server may listen on, tried in order.
///
/// Parsed from `0` (ephemeral), `3400` (one port), `3400..3410` (a half-open range, as in Rust
/// and the original sample's `range(3400, 3410)`), `3400..=3409` or `3400-3409` (inclusive),
/// or a list `3400,3402,3404`.
///
/// ```
/// use manager::PortSpec;
/// let spec: PortSpec = "3400..3403".parse().unwrap();
/// assert_eq!(spec.candidates().collect::<Vec<_>>(), [3400, 3401, 3402]);
/// assert_eq!(spec.to_string(), "3400..3403");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortSpec {
    /// Port 0: the kernel picks a free port.
    Ephemeral,
    /// Exactly this port.
    Single(u16),
    /// `start..end`, end excluded.
    Range {
        /// First port tried.
        start: u16,
        /// One past the last port tried.
        end: u16,
    },
    /// These ports, in this order.
    List(Vec<u16>),
}

impl PortSpec {
    /// The ports to try, in order. `Ephemeral` yields the single port 0.
    pub fn candidates(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            PortSpec::Ephemeral => Box::new(std::iter::once(0)),
            PortSpec::Single(port) => Box::new(std::iter::once(*port)),
            PortSpec::Range { start, end } => Box::new(*start..*end),
            PortSpec::List(ports) => Box::new(ports.iter().copied()),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Ephemeral => f.write_str("0"),
            PortSpec::Single(port) => write!(f, "{port}"),
            PortSpec::Range { start, end } => write!(f, "{start}..{end}"),
            PortSpec::List(ports) => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// Why a port spec did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port spec '{input}': {problem} (expected 0, 3400, 3400..3410, 3400-3409 or 3400,3402)"
)]
pub struct ParsePortSpecError {
    input: String,
    problem: &'static str,
}

impl FromStr for PortSpec {
    type Err = ParsePortSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem| ParsePortSpecError {
            input: input.to_owned(),
            problem,
        };
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| fail("a port is a whole number from 0 to 65535"))
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.contains(',') {
            let ports = text.split(',').map(port).collect::<Result<Vec<_>, _>>()?;
            if ports.contains(&0) {
                return Err(fail("0 cannot be part of a list"));
            }
            return Ok(PortSpec::List(ports));
        }
        let range = if let Some((a, b)) = text.split_once("..=") {
            Some((
                port(a)?,
                port(b)?
                    .checked_add(1)
                    .ok_or(fail("range ends past 65535"))?,
            ))
        } else if let Some((a, b)) = text.split_once("..") {
            Some((port(a)?, port(b)?))
        } else if let Some((a, b)) = text.split_once('-') {
            Some((
                port(a)?,
                port(b)?
                    .checked_add(1)
                    .ok_or(fail("range ends past 65535"))?,
            ))
        } else {
            None
        };
        match range {
            Some((0, _)) => Err(fail("a range cannot start at 0")),
            Some((start, end)) if start >= end => Err(fail("the range is empty")),
            Some((start, end)) => Ok(PortSpec::Range { start, end }),
            None => match port(text)? {
                0 => Ok(PortSpec::Ephemeral),
                p => Ok(PortSpec::Single(p)),
            },
        }
    }
}

/// Binds the first free port of `ports` on `host` for server `server`.
///
/// Busy ports (`EADDRINUSE`) are logged and skipped; any other error (permission denied,
/// address not on this machine) stops the search at once, since the next port would fail the
/// same way. The socket is non-blocking, with `SO_REUSEADDR` (so a restart is not blocked by
/// `TIME_WAIT`) and without `SO_REUSEPORT` (so two processes never share a port by accident).
///
/// # Errors
/// [`Error::NoFreePort`] when every candidate is busy, [`Error::Bind`] for any other failure.
pub fn bind(server: &str, host: IpAddr, ports: &PortSpec) -> Result<TcpListener, Error> {
    for port in ports.candidates() {
        let addr = SocketAddr::new(host, port);
        match bind_addr(addr) {
            Ok(listener) => return Ok(listener),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                tracing::info!(server, %addr, "port busy, trying the next one");
            }
            Err(source) => {
                return Err(Error::Bind {
                    server: server.to_owned(),
                    addr,
                    source,
                });
            }
        }
    }
    Err(Error::NoFreePort {
        server: server.to_owned(),
        host,
        ports: ports.clone(),
    })
}

fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Accepted connections inherit it (Linux): small responses written in parts (headers
    // first, then a streamed body) must not wait on Nagle + delayed ACK, 40 ms a time.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    // A deep backlog so a burst of connections during start or reload waits instead of failing.
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("0".parse::<PortSpec>().unwrap(), PortSpec::Ephemeral);
        assert_eq!("8080".parse::<PortSpec>().unwrap(), PortSpec::Single(8080));
        let range = PortSpec::Range {
            start: 3400,
            end: 3410,
        };
        assert_eq!("3400..3410".parse::<PortSpec>().unwrap(), range);
        assert_eq!("3400..=3409".parse::<PortSpec>().unwrap(), range);
        assert_eq!("3400-3409".parse::<PortSpec>().unwrap(), range);
        assert_eq!(
            " 1, 2,3 ".parse::<PortSpec>().unwrap(),
            PortSpec::List(vec![1, 2, 3])
        );
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for bad in [
            "", "x", "70000", "10..5", "5..5", "0..10", "1,0", "1..65536", "1-65535x",
        ] {
            let err = bad.parse::<PortSpec>().unwrap_err();
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
        assert!("65535..=65535".parse::<PortSpec>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["0", "80", "3400..3410", "1,2,3"] {
            assert_eq!(text.parse::<PortSpec>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn skips_busy_ports_and_names_the_range_when_all_are_busy() {
        let host = IpAddr::from([127, 0, 0, 1]);
        let taken = bind("t", host, &PortSpec::Ephemeral).unwrap();
        let busy = taken.local_addr().unwrap().port();
        let Ok(next) = bind("t", host, &PortSpec::List(vec![busy, 0])) else {
            panic!("should move past the busy port");
        };
        assert_ne!(next.local_addr().unwrap().port(), busy);

        let err = bind("flows", host, &PortSpec::List(vec![busy])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("server 'flows': no free port in 127.0.0.1:{busy}")
        );
    }
}

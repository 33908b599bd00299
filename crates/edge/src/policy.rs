//! Who may ask what: loopback-only `Host` names (against DNS rebinding) and the rule for
//! changes (a `POST` from a loopback peer, never cross-site).

use std::net::IpAddr;

/// The request facts the policy and the admin endpoints look at, borrowed from whatever types
/// the framework has (actix is still on `http` 0.2, so this is not `http::Request`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The `Host` header (or HTTP/2 `:authority`).
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Sec-Fetch-Site` header browsers send.
    pub fetch_site: Option<&'a str>,
    /// Whether the request says it came through a proxy (`Forwarded`, `X-Forwarded-For` or
    /// `X-Real-IP` present).
    pub proxied: bool,
    /// The peer's address.
    pub peer: Option<IpAddr>,
    /// The `Authorization` header (an admin change's token).
    pub authorization: Option<&'a str>,
    /// The `Accept` header, read only for `/__metrics` (which format the scraper wants).
    pub accept: Option<&'a str>,
}

impl<'a> RequestHead<'a> {
    /// The facts of an `http` 1.x request.
    pub fn of(
        method: &'a http::Method,
        uri: &'a http::Uri,
        headers: &'a http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Self {
        Self::from_parts(
            method.as_str(),
            uri.path(),
            peer,
            header_parts(headers),
            || uri.authority().map(|a| a.as_str()),
        )
    }

    /// The facts of a request given as its parts, for a framework on other `http` types
    /// (actix): `headers` with lower-case names, `authority` the request URI's (the `Host`
    /// when the request has no `Host` header).
    pub fn from_parts<V: HeaderText<'a>>(
        method: &'a str,
        path: &'a str,
        peer: Option<IpAddr>,
        headers: impl Iterator<Item = (&'a str, V)>,
        authority: impl FnOnce() -> Option<&'a str>,
    ) -> Self {
        let mut head = Self::without_headers(method, path, peer);
        head.read_headers(headers);
        if head.host.is_none() {
            head.host = authority();
        }
        head
    }

    /// The facts of a request whose headers nobody needs to look at (see
    /// [`Edge::reads_headers`](crate::Edge::reads_headers)).
    pub fn without_headers(method: &'a str, path: &'a str, peer: Option<IpAddr>) -> Self {
        RequestHead {
            method,
            path,
            peer,
            ..RequestHead::default()
        }
    }

    /// Takes what the policy needs from the request's headers in one pass over them (a few,
    /// usually; a map lookup per header wanted cost ~100 instructions each, callgrind): the
    /// first value of each, as text when it is, whether any proxy header is present.
    /// `headers` gives lower-case names, as `http` and actix hold them.
    fn read_headers<V: HeaderText<'a>>(&mut self, headers: impl Iterator<Item = (&'a str, V)>) {
        let metrics = self.path == crate::admin::METRICS;
        let mut seen = 0_u8;
        for (name, value) in headers {
            let (bit, slot) = match name {
                "host" => (1, &mut self.host),
                "origin" => (2, &mut self.origin),
                "sec-fetch-site" => (4, &mut self.fetch_site),
                "authorization" => (8, &mut self.authorization),
                "accept" if metrics => (16, &mut self.accept),
                _ => {
                    if PROXY_HEADERS.contains(&name) {
                        self.proxied = true;
                    }
                    continue;
                }
            };
            if seen & bit == 0 {
                seen |= bit;
                *slot = value.text();
            }
        }
    }
}

/// An `http` 1.x header map as the name and value pairs [`RequestHead::from_parts`] reads.
pub(crate) fn header_parts(
    headers: &http::HeaderMap,
) -> impl Iterator<Item = (&str, &http::HeaderValue)> {
    headers.iter().map(|(name, value)| (name.as_str(), value))
}

/// A header value as the policy reads it: text when it is visible ASCII (and tabs) only,
/// else nothing, as `http`'s `HeaderValue::to_str` decides.
pub trait HeaderText<'a> {
    /// The value as text, if it is.
    fn text(self) -> Option<&'a str>;
}

/// The raw bytes of a framework on other `http` types.
impl<'a> HeaderText<'a> for &'a [u8] {
    fn text(self) -> Option<&'a str> {
        std::str::from_utf8(self)
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
    }
}

/// `to_str` checks the same bytes without a UTF-8 pass (~220 instructions less per `Host`,
/// callgrind).
impl<'a> HeaderText<'a> for &'a http::HeaderValue {
    fn text(self) -> Option<&'a str> {
        self.to_str().ok()
    }
}

/// The headers a proxy adds: a request carrying one came through a proxy, whatever its peer.
pub const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Which requests a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostPolicy {
    /// Any `Host` name (a public API behind a load balancer, probes by pod IP).
    #[default]
    Any,
    /// Only loopback names (`localhost`, `127.x.y.z`, `[::1]`), on every path, so a
    /// DNS-rebinding page cannot read or drive a server meant for this machine.
    Loopback,
}

/// Whether changes (every method but `GET`, `HEAD`, `OPTIONS`) need a loopback peer and, from a
/// browser, the server's own origin. The quit endpoint always does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChangePolicy {
    /// Routes decide (an API whose clients are other programs).
    #[default]
    Open,
    /// Every change from a loopback peer and never cross-site (a page for the developer).
    SameOriginLoopback,
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, "")) => name,
            Some((name, port)) if is_port(port) => name,
            _ => return false,
        }
    } else {
        // A byte scan from the end, over the port's few digits: `rsplit_once`'s searcher cost
        // ~40 instructions a request more (callgrind).
        match host.bytes().rposition(|b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    // The names tools send (the genkit CLI, browsers on the printed URLs) first: parsing an
    // address costs some 200 instructions a request.
    matches!(name, "127.0.0.1" | "::1")
        || name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// The environment variable that lets Genkit's tools point trace export at any host.
pub const TELEMETRY_ANY_HOST: &str = "MULTI_SERVER_TELEMETRY_ANY_HOST";

/// Why a telemetry server URL a tool announced (v1 `/api/notify`, v2 `register`'s answer) is
/// refused, if it is: every trace (inputs and outputs of every server) goes where it says, so
/// it must be a loopback `http://` URL (the genkit CLI's own), unless the operator allowed any
/// host with `MULTI_SERVER_TELEMETRY_ANY_HOST=1`.
///
/// # Errors
/// The refusal, one line naming the URL and the way out.
pub fn refuse_telemetry_url(url: &str) -> Result<(), String> {
    if std::env::var(TELEMETRY_ANY_HOST).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let loopback = url
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .is_some_and(|authority| !authority.contains('@') && is_loopback_host(authority));
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "telemetryServerUrl must be a loopback http URL (set {TELEMETRY_ANY_HOST}=1 to allow \
             any host), not '{url}'"
        ))
    }
}

/// `:` and digits.
fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a request under `policy` is refused (403), if it is: a foreign `Host` name.
pub fn refuse_host(policy: HostPolicy, head: &RequestHead<'_>) -> Option<String> {
    match (policy, head.host) {
        (HostPolicy::Loopback, Some(host)) if !is_loopback_host(host) => Some(format!(
            "this server answers only under a loopback host name, not '{host}'"
        )),
        _ => None,
    }
}

/// Why a request to a loopback-only server is refused for its `Origin` (403), if it is: a
/// browser page of another origin. Only loopback origins whose port `is_ours` (one of this
/// process's servers) pass; `Origin: null` (sandboxed frames, `file:` pages) does not. Programs
/// (the genkit CLI, curl) send no `Origin` and are not concerned.
pub fn refuse_origin(head: &RequestHead<'_>, is_ours: impl Fn(u16) -> bool) -> Option<String> {
    let origin = head.origin?;
    let ours = origin
        .strip_prefix("http://")
        .filter(|authority| is_loopback_host(authority))
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_some_and(is_ours);
    (!ours).then(|| format!("requests from the web page at '{origin}' are refused"))
}

/// Why a change is refused (403), if it is: a peer that is not loopback, or a browser request
/// from another site (an `Origin` that is not this server, or `Sec-Fetch-Site: cross-site`):
/// another page open in the developer's browser must not be able to quit the process with a
/// form post.
pub fn refuse_change(head: &RequestHead<'_>) -> Option<String> {
    if !head.peer.is_some_and(is_loopback) {
        let peer = head
            .peer
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        return Some(format!(
            "changes are accepted from loopback peers only, not from {peer}"
        ));
    }
    // Through a proxy on this host every peer is loopback: the proxy's own headers, or the
    // name the client asked for, tell it apart (and a DNS-rebinding page asks under its own
    // name).
    if head.proxied {
        return Some("changes are not accepted through a proxy".to_owned());
    }
    if let Some(host) = head.host
        && !is_loopback_host(host)
    {
        return Some(format!(
            "changes are accepted under a loopback host name only, not '{host}'"
        ));
    }
    if let Some(origin) = head.origin {
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| head.host == Some(authority));
        if !same {
            return Some(format!(
                "cross-origin change refused: origin '{origin}' is not this server"
            ));
        }
    }
    if head
        .fetch_site
        .is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    {
        return Some("cross-site change refused".to_owned());
    }
    None
}

/// Whether `method` changes anything (anything but `GET`, `HEAD`, `OPTIONS`).
pub fn is_change(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_pass_over_the_headers_takes_the_first_of_each_and_spots_proxies() {
        let mut headers = http::HeaderMap::new();
        headers.append("host", "a.example".parse().unwrap());
        headers.append("host", "b.example".parse().unwrap());
        headers.append("origin", http::HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append("accept", "text/plain".parse().unwrap());
        headers.append("x-real-ip", "10.0.0.1".parse().unwrap());
        let method = http::Method::GET;
        let uri: http::Uri = "http://fallback.example/x".parse().unwrap();
        let head = RequestHead::of(&method, &uri, &headers, None);
        assert_eq!(head.host, Some("a.example"));
        assert_eq!(head.origin, None, "not text");
        assert_eq!(head.accept, None, "read only for /__metrics");
        assert!(head.proxied);
        let metrics: http::Uri = "/__metrics".parse().unwrap();
        let mut bare = http::HeaderMap::new();
        bare.append("accept", "application/openmetrics-text".parse().unwrap());
        let head = RequestHead::of(&method, &metrics, &bare, None);
        assert_eq!(head.accept, Some("application/openmetrics-text"));
        assert!(!head.proxied);
        assert_eq!(head.host, None);
        let head = RequestHead::of(&method, &uri, &bare, None);
        assert_eq!(
            head.host,
            Some("fallback.example"),
            "the URI's authority without a Host"
        );
    }

    use super::*;

    #[test]
    fn raw_bytes_and_http_values_are_text_alike() {
        for byte in 0..=u8::MAX {
            let raw = [b'a', byte, b'z'];
            let Ok(value) = http::HeaderValue::from_bytes(&raw) else {
                continue;
            };
            assert_eq!((&raw[..]).text(), (&value).text(), "byte {byte:#04x}");
        }
        assert_eq!((&b"127.0.0.1:80\t"[..]).text(), Some("127.0.0.1:80\t"));
    }

    #[test]
    fn loopback_host_names() {
        for host in [
            "localhost:4000",
            "127.0.0.1:4000",
            "127.0.0.1",
            "[::1]:4000",
            "LOCALHOST",
            "127.1.2.3:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:4000",
            "10.0.0.1:4000",
            "[2001:db8::1]:80",
            "localhost.evil",
            "localhost.",
            "[::1]evil.example",
            "[::1]:",
            "127.0.0.1:80:90",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn loopback_includes_mapped_v4() {
        assert!(is_loopback("127.8.9.1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn changes_need_a_loopback_peer_and_the_same_origin() {
        let local = Some("127.0.0.1".parse().unwrap());
        let head = RequestHead {
            method: "POST",
            host: Some("127.0.0.1:4000"),
            peer: local,
            ..RequestHead::default()
        };
        assert_eq!(refuse_change(&head), None);
        let same = RequestHead {
            origin: Some("http://127.0.0.1:4000"),
            ..head
        };
        assert_eq!(refuse_change(&same), None);
        assert!(
            refuse_change(&RequestHead {
                origin: Some("http://evil.example"),
                ..head
            })
            .is_some()
        );
        assert!(
            refuse_change(&RequestHead {
                fetch_site: Some("cross-site"),
                ..head
            })
            .is_some()
        );
        assert!(
            refuse_change(&RequestHead {
                peer: Some("10.0.0.1".parse().unwrap()),
                ..head
            })
            .is_some()
        );
        assert!(refuse_change(&RequestHead { peer: None, ..head }).is_some());
        let forwarded = RequestHead {
            proxied: true,
            ..head
        };
        assert!(refuse_change(&forwarded).is_some(), "a proxy's headers");
        let proxied = RequestHead {
            host: Some("api.example.com"),
            ..head
        };
        assert!(
            refuse_change(&proxied).is_some(),
            "through a proxy on this host"
        );
    }

    #[test]
    fn only_loopback_origins_of_this_process_pass() {
        let ours = |port| port == 4000;
        let with = |origin| RequestHead {
            origin: Some(origin),
            ..RequestHead::default()
        };
        assert_eq!(
            refuse_origin(&RequestHead::default(), ours),
            None,
            "no Origin"
        );
        assert_eq!(refuse_origin(&with("http://localhost:4000"), ours), None);
        assert_eq!(refuse_origin(&with("http://127.0.0.1:4000"), ours), None);
        assert_eq!(refuse_origin(&with("http://[::1]:4000"), ours), None);
        for foreign in [
            "http://evil.example",
            "http://evil.example:4000",
            "http://localhost:8080",
            "http://localhost",
            "https://localhost:4000",
            "null",
        ] {
            assert!(refuse_origin(&with(foreign), ours).is_some(), "{foreign}");
        }
    }

    #[test]
    fn a_foreign_host_is_refused_only_on_loopback_servers() {
        let head = RequestHead {
            host: Some("rebind.evil:4000"),
            ..RequestHead::default()
        };
        assert!(refuse_host(HostPolicy::Loopback, &head).is_some());
        assert!(refuse_host(HostPolicy::Any, &head).is_none());
        let no_host = RequestHead::default();
        assert!(refuse_host(HostPolicy::Loopback, &no_host).is_none());
    }
}

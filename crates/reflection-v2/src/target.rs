//! Where the runtime dials: a `ws://` URL on this machine.

use std::fmt;
use std::str::FromStr;

/// The genkit CLI's WebSocket, from `GENKIT_REFLECTION_V2_SERVER` (the CLI sets
/// `ws://localhost:<port>`).
///
/// Only a loopback name is taken (`localhost`, `127.x.y.z`, `[::1]`): whoever is at the other
/// end lists and runs every flow and reads their inputs and outputs, so an environment must
/// not be able to send them to another machine. `localhost` is resolved when dialing and only
/// loopback addresses are tried.
///
/// ```
/// let target: reflection_v2::Target = "ws://localhost:3200".parse().unwrap();
/// assert_eq!(target.to_string(), "ws://localhost:3200");
/// assert!("ws://example.com:3200".parse::<reflection_v2::Target>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    url: String,
    host: String,
    port: u16,
}

impl Target {
    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The host to resolve: a name or an IP address, without brackets.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let refuse = |why: &str| {
            format!(
                "'{text}': {why} (the genkit CLI gives ws://localhost:<port>; only a ws:// URL on \
                 this machine is dialed)"
            )
        };
        let uri: http::Uri = text.parse().map_err(|_| refuse("not a URL"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(refuse("wss:// is not supported")),
            _ => return Err(refuse("the scheme must be ws://")),
        }
        let authority = uri.authority().ok_or_else(|| refuse("no host"))?;
        if authority.as_str().contains('@') {
            return Err(refuse("credentials in the URL are not taken"));
        }
        let host = authority.host();
        if !edge::policy::is_loopback_host(host) {
            return Err(refuse("the host is not a loopback name"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Target {
            url: text.to_owned(),
            host,
            port: authority.port_u16().unwrap_or(80),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn only_ws_urls_on_this_machine_are_taken() {
        for good in [
            "ws://localhost:3200",
            "ws://127.0.0.1:3201/any/path",
            "ws://[::1]:3202",
            "ws://LOCALHOST:3200",
        ] {
            let target: Target = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(target.to_string(), good);
        }
        let v6: Target = "ws://[::1]:3202".parse().unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 3202));
        for (bad, why) in [
            ("ws://example.com:3200", "not a loopback name"),
            ("ws://10.0.0.1:3200", "not a loopback name"),
            ("wss://localhost:3200", "wss:// is not supported"),
            ("http://localhost:3200", "the scheme must be ws://"),
            ("ws://user:pw@localhost:3200", "credentials"),
            ("localhost:3200", "scheme"),
            ("ws://localhost.evil.com:3200", "not a loopback name"),
        ] {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(bad), "{err}");
        }
    }
}

//! The data behind the admin endpoints (`/__healthz`, `/__readyz`, `/__serverz`): the manager
//! produces it, the edge crate serves it.

use serde::Serialize;

use crate::{ProcessState, ServerState};

/// `GET /__healthz`: liveness, 200 while the process runs. Same fields as the original sample.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Always `"ok"`.
    pub status: &'static str,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Seconds since the manager started.
    pub uptime_seconds: f64,
}

/// `GET /__readyz`: 200 only when every required server that is due serves and nothing drains.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether the process should receive traffic.
    pub ready: bool,
    /// The process state.
    pub state: ProcessState,
    /// Why not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every server's state.
    pub servers: Vec<ServerReadiness>,
}

/// One server's line in [`Readiness`].
#[derive(Debug, Clone, Serialize)]
pub struct ServerReadiness {
    /// The server's name.
    pub name: String,
    /// Its state.
    pub state: ServerState,
    /// Whether its failure stops the process.
    pub required: bool,
}

impl Readiness {
    /// The HTTP status the endpoint answers with.
    pub fn http_status(&self) -> u16 {
        if self.ready { 200 } else { 503 }
    }
}

/// `GET /__serverz`: the process and every server, computed on each call. No environment
/// variables, no secrets.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// Process id.
    pub pid: u32,
    /// The command line, values of secret-named flags and URL userinfo redacted.
    pub argv: Vec<String>,
    /// The program's version.
    pub version: String,
    /// Process state.
    pub state: ProcessState,
    /// Whether readiness was forced to fail by an operator.
    pub readiness_forced_fail: bool,
    /// Log lines dropped because the log output did not keep up (a stalled pipe), when the
    /// program counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_lines_dropped: Option<u64>,
    /// Seconds since the manager started.
    pub uptime_seconds: f64,
    /// When the manager started, seconds since the Unix epoch.
    pub started_at: f64,
    /// Every server, in the order they were added.
    pub servers: Vec<ServerEntry>,
    /// The last in-place upgrade, if one was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::upgrade::UpgradeState>,
}

/// One server in [`ServerInfo`].
#[derive(Debug, Clone, Serialize)]
pub struct ServerEntry {
    /// The server's name.
    pub name: String,
    /// The framework it runs on.
    pub framework: String,
    /// Its version.
    pub version: String,
    /// `host:port` once bound.
    pub address: Option<String>,
    /// `http://host:port` once bound.
    pub url: Option<String>,
    /// For a client (which listens on nothing), the URL it dials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dials: Option<String>,
    /// What a client last said of itself, e.g. `registered with ws://localhost:3200`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The ports it was configured with (empty for a client).
    pub ports: String,
    /// Its state.
    pub state: ServerState,
    /// Whether its failure stops the process.
    pub required: bool,
    /// Seconds since it started serving.
    pub uptime_seconds: Option<f64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Request counters.
    pub requests: RequestCounts,
}

/// Request counters of one server.
#[derive(Debug, Clone, Serialize)]
pub struct RequestCounts {
    /// Answered requests.
    pub served: u64,
    /// In flight now.
    pub in_flight: usize,
    /// Answered with 5xx.
    pub server_errors: u64,
    /// Ended without an answer.
    pub aborted: u64,
    /// Approximate median latency in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// Approximate 99th-percentile latency in milliseconds.
    pub latency_p99_ms: Option<f64>,
}

/// The secret every admin change (quit, readiness fail and restore) must present when one is
/// configured ([`ServerManager::admin_token`](crate::ServerManager::admin_token)). Its `Debug`
/// never shows it, and [`AdminToken::matches`] takes the same time whatever the guess.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<str>);

impl AdminToken {
    /// The shortest token accepted: shorter ones are guessable.
    pub const MIN_LEN: usize = 16;

    /// A token, if `secret` (surrounding whitespace trimmed, as a file's final newline) is at
    /// least [`AdminToken::MIN_LEN`] bytes of visible ASCII; else why not.
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < Self::MIN_LEN {
            return Err(format!(
                "the admin token must be at least {} characters, not {}",
                Self::MIN_LEN,
                secret.len()
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be visible ASCII (it travels in a header)".into());
        }
        Ok(AdminToken(secret.into()))
    }

    /// Whether `presented` is the token, compared in a time that depends on neither its
    /// bytes nor its length (a timing side channel would let a client find the token byte by
    /// byte, or its length): `presented` is fitted to the token's length, and the lengths are
    /// compared apart, in constant time too.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let token = self.0.as_bytes();
        let fitted: Vec<u8> = (0..token.len())
            .map(|i| presented.get(i).copied().unwrap_or(0))
            .collect();
        let same_length = (presented.len() as u64).ct_eq(&(token.len() as u64));
        bool::from(token.ct_eq(&fitted) & same_length)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::AdminToken;

    #[test]
    fn a_token_matches_only_itself_and_never_shows() {
        let token = AdminToken::new("  correct-horse-battery\n").unwrap();
        assert!(token.matches(b"correct-horse-battery"));
        for wrong in [
            &b""[..],
            b"correct-horse-batter",
            b"correct-horse-batteryX",
            b"correct-horse-battery\0",
            b"x",
        ] {
            assert!(!token.matches(wrong));
        }
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert!(
            AdminToken::new("short")
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(AdminToken::new("sixteen chars ok!").is_err(), "no spaces");
    }
}

//! The data behind the admin endpoints every server mounts. The manager produces it; each
//! framework crate only serializes it in its own idiom.

use std::net::IpAddr;

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
    /// The command line.
    pub argv: Vec<String>,
    /// The program's version.
    pub version: String,
    /// Process state.
    pub state: ProcessState,
    /// Whether readiness was forced to fail by an operator.
    pub readiness_forced_fail: bool,
    /// Seconds since the manager started.
    pub uptime_seconds: f64,
    /// When the manager started, seconds since the Unix epoch.
    pub started_at: f64,
    /// Every server, in the order they were added.
    pub servers: Vec<ServerEntry>,
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
    /// The ports it was configured with.
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

/// Why `POST /__quitquitquitz` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quit is accepted from loopback peers only, not from {peer}")]
pub struct QuitRefused {
    /// The peer that asked.
    pub peer: IpAddr,
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

/// The JSON body of an error answer, shared by every framework crate: `{"error": "...",
/// "status": 404}` plus optional detail fields.
pub fn error_body(status: u16, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message, "status": status })
}

/// Why a request body is refused with 415, if it is: a non-empty body whose declared content
/// type is not JSON. A body without a declared type is taken as JSON: the parser then says
/// what is wrong with it, if anything.
pub fn non_json_body(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let content_type = content_type.unwrap_or("");
    (!body.is_empty() && !content_type.is_empty() && !content_type.starts_with("application/json"))
        .then(|| format!("content type must be application/json, not {content_type}"))
}

/// The message of a caught panic (`&str` or `String` payloads), for logs and errors.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_declared_non_json_type_on_a_body_is_refused() {
        assert_eq!(
            non_json_body(Some("application/json; charset=utf-8"), b"{}"),
            None
        );
        assert_eq!(non_json_body(None, b"{}"), None);
        assert_eq!(non_json_body(Some("text/plain"), b""), None);
        assert_eq!(
            non_json_body(Some("text/plain"), b"x").as_deref(),
            Some("content type must be application/json, not text/plain")
        );
    }

    #[test]
    fn loopback_includes_mapped_v4() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.8.9.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}

//! The admin endpoints every server answers, from the manager's data: `GET /__healthz`,
//! `GET /__readyz`, `GET /__serverz`, `GET /__metrics` ([`crate::metrics`]), and the changes — `POST /__quitquitquitz`,
//! `POST /__readyz/fail`, `POST /__readyz/ok`, `POST /__upgradez` — which [`refuse_change`]
//! guards.

use http::StatusCode;
use manager::{ServeContext, ShutdownReason};
use serde_json::json;

use crate::errors::{self, Reply};
use crate::policy::RequestHead;

/// What every admin path starts with, so that other paths skip the admin lookup.
pub const PREFIX: &str = "/__";

/// One admin endpoint: its path, whether it changes the process, and what it does (a
/// listener's index lists it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Its path, under [`PREFIX`].
    pub path: &'static str,
    /// A change (`POST` only, guarded by [`refuse_change`]), else a read (`GET`, `HEAD`).
    pub change: bool,
    /// What it does.
    pub about: &'static str,
}

impl Endpoint {
    /// The method it answers (a `GET` one answers `HEAD` too).
    pub fn method(&self) -> &'static str {
        if self.change { "POST" } else { "GET" }
    }
}

/// Every admin endpoint: [`PATHS`] and [`CHANGES`] are made from this table.
pub const ENDPOINTS: [Endpoint; 8] = {
    const fn read(path: &'static str, about: &'static str) -> Endpoint {
        Endpoint {
            path,
            change: false,
            about,
        }
    }
    const fn change(path: &'static str, about: &'static str) -> Endpoint {
        Endpoint {
            path,
            change: true,
            about,
        }
    }
    [
        read("/__healthz", "liveness of the process"),
        read(
            "/__readyz",
            "readiness: 200 when every required server serves, 503 with the reason otherwise",
        ),
        read("/__serverz", "the process and every server, live"),
        read(
            METRICS,
            "request and flow metrics (Prometheus text, or OpenMetrics when asked)",
        ),
        change(
            "/__quitquitquitz",
            "graceful shutdown (loopback peers only, never cross-site, with the admin token if one is set)",
        ),
        change("/__readyz/fail", "force readiness to fail (same rules)"),
        change(
            "/__readyz/ok",
            "let readiness follow the servers again (same rules)",
        ),
        change(
            "/__upgradez",
            "replace this process with a new binary on the same sockets (same rules)",
        ),
    ]
};

/// The admin endpoints' paths (the edge answers them before any route).
pub const PATHS: [&str; ENDPOINTS.len()] = {
    let mut paths = [""; ENDPOINTS.len()];
    let mut i = 0;
    while i < ENDPOINTS.len() {
        paths[i] = ENDPOINTS[i].path;
        i += 1;
    }
    paths
};

/// The metrics endpoint (Prometheus, OpenMetrics).
pub const METRICS: &str = "/__metrics";

/// The admin endpoints that change the process (POST only, guarded by [`refuse_change`]).
pub const CHANGES: [&str; 4] = {
    let mut changes = [""; 4];
    let (mut i, mut n) = (0, 0);
    while i < ENDPOINTS.len() {
        if ENDPOINTS[i].change {
            // A fifth change indexes out of bounds here: the build fails until this grows.
            changes[n] = ENDPOINTS[i].path;
            n += 1;
        }
        i += 1;
    }
    assert!(n == changes.len(), "CHANGES holds every change");
    changes
};

/// The answer to an admin endpoint, or `None` when `head` is not one.
pub fn answer(ctx: &ServeContext, head: &RequestHead<'_>) -> Option<Reply> {
    let manager = ctx.manager();
    let get = |body: &dyn Fn() -> Reply| {
        if matches!(head.method, "GET" | "HEAD") {
            body()
        } else {
            errors::method_not_allowed("GET, HEAD")
        }
    };
    let reply = match head.path {
        "/__healthz" => get(&|| errors::json_bytes(StatusCode::OK, health_body(&manager.health()))),
        "/__readyz" => get(&|| {
            let readiness = manager.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            errors::json(status, &readiness)
        }),
        "/__serverz" => get(&|| errors::json(StatusCode::OK, &manager.server_info())),
        METRICS => get(&|| crate::metrics::answer(manager, head.accept)),
        path if CHANGES.contains(&path) && head.method != "POST" => {
            errors::method_not_allowed("POST")
        }
        "/__quitquitquitz" => quit(ctx, head),
        "/__readyz/fail" => force_readiness_fail(ctx, head, true),
        "/__readyz/ok" => force_readiness_fail(ctx, head, false),
        "/__upgradez" => upgrade(ctx, head),
        _ => return None,
    };
    Some(reply)
}

/// `/__healthz`'s body, written field by field: the liveness probe is the request a process
/// gets most, and serde's generic path (escaping every key) cost ~700 instructions more per
/// probe (callgrind: salvo 27,244 to 26,490, axum 17,526 to 16,848). The same bytes as
/// serializing [`manager::admin::Health`] (a test says so).
fn health_body(health: &manager::admin::Health) -> Vec<u8> {
    let mut body = Vec::with_capacity(96);
    body.extend_from_slice(b"{\"status\":");
    let _ = serde_json::to_writer(&mut body, health.status);
    body.extend_from_slice(b",\"timestamp\":");
    let _ = serde_json::to_writer(&mut body, &health.timestamp);
    body.extend_from_slice(b",\"uptime_seconds\":");
    let _ = serde_json::to_writer(&mut body, &health.uptime_seconds);
    body.push(b'}');
    body
}

/// Why an admin change is refused, as the answer to send, if it is: 403 when
/// [`policy::refuse_change`](crate::policy::refuse_change) refuses it (not a loopback peer,
/// through a proxy, cross-site), 401 when the process has an admin token and the request does
/// not present it as `Authorization: Bearer <token>`. Logged (never the token).
pub fn refuse_change(ctx: &ServeContext, head: &RequestHead<'_>) -> Option<Reply> {
    let (status, refusal) = if let Some(refusal) = crate::policy::refuse_change(head) {
        (StatusCode::FORBIDDEN, refusal)
    } else {
        let token = ctx.manager().admin_token()?;
        let presented = head.authorization.and_then(bearer);
        if presented.is_some_and(|presented| token.matches(presented.as_bytes())) {
            return None;
        }
        let refusal = if presented.is_some() {
            "the admin token is wrong"
        } else {
            "this process requires an admin token: send Authorization: Bearer <token>"
        };
        (StatusCode::UNAUTHORIZED, refusal.to_owned())
    };
    tracing::warn!(server = ctx.name(), path = head.path, peer = ?head.peer, refusal, "admin change refused");
    let mut reply = errors::error(status, &refusal);
    if status == StatusCode::UNAUTHORIZED {
        reply.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"multi-server admin\""),
        );
    }
    Some(reply)
}

/// The credentials of an `Authorization: Bearer <token>` header.
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A quit endpoint's answer (`POST /__quitquitquitz`, or a framework's own, such as Genkit's
/// `/api/__quitquitquit`): a graceful shutdown of the whole process, unless
/// [`refuse_change`] refuses it. The method is the caller's to check.
pub fn quit(ctx: &ServeContext, head: &RequestHead<'_>) -> Reply {
    if let Some(refusal) = refuse_change(ctx, head) {
        return refusal;
    }
    ctx.manager().request_shutdown(ShutdownReason::Quit {
        server: ctx.name().to_owned(),
    });
    errors::json(StatusCode::OK, &json!({ "status": "OK" }))
}

/// `POST /__upgradez`: starts an in-place upgrade (the binary at its path, with every
/// listening socket), unless [`refuse_change`] refuses it. 202 with the new process's id: the
/// outcome comes later (`/__serverz` `upgrade`; on success the new process answers on the same
/// ports, under another `pid`). 409 when one is under way or the process is stopping; 501 when
/// the program did not enable upgrades; 500 when the new process could not be started.
pub fn upgrade(ctx: &ServeContext, head: &RequestHead<'_>) -> Reply {
    if let Some(refusal) = refuse_change(ctx, head) {
        return refusal;
    }
    let manager = ctx.manager();
    match manager.start_upgrade() {
        Ok(pid) => errors::json(
            StatusCode::ACCEPTED,
            &json!({ "status": "upgrading", "pid": std::process::id(), "new_pid": pid }),
        ),
        Err(refused) => {
            let status = match refused {
                manager::upgrade::UpgradeRefused::NotConfigured => StatusCode::NOT_IMPLEMENTED,
                manager::upgrade::UpgradeRefused::InProgress
                | manager::upgrade::UpgradeRefused::ShuttingDown => StatusCode::CONFLICT,
                manager::upgrade::UpgradeRefused::Spawn(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            errors::error(status, &refused.to_string())
        }
    }
}

/// A readiness change's answer (`POST /__readyz/fail` and `/__readyz/ok`, or the Developer
/// UI's buttons): readiness forced to fail, as Envoy's `/healthcheck/fail`, or left to follow
/// the servers again, unless [`refuse_change`] refuses it; the answer is the readiness.
pub fn force_readiness_fail(ctx: &ServeContext, head: &RequestHead<'_>, fail: bool) -> Reply {
    if let Some(refusal) = refuse_change(ctx, head) {
        return refusal;
    }
    let manager = ctx.manager();
    manager.force_readiness_fail(fail);
    tracing::warn!(
        server = ctx.name(),
        "readiness {}",
        if fail { "forced to fail" } else { "restored" }
    );
    errors::json(StatusCode::OK, &manager.readiness())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_admin_path_starts_with_the_prefix() {
        for endpoint in super::ENDPOINTS {
            assert!(endpoint.path.starts_with(super::PREFIX), "{endpoint:?}");
        }
    }

    #[test]
    fn the_paths_and_changes_are_the_tables() {
        assert_eq!(super::PATHS[3], super::METRICS);
        assert_eq!(
            super::CHANGES,
            [
                "/__quitquitquitz",
                "/__readyz/fail",
                "/__readyz/ok",
                "/__upgradez"
            ]
        );
        let method_of = |path: &str| {
            super::ENDPOINTS
                .iter()
                .find(|endpoint| endpoint.path == path)
                .map(super::Endpoint::method)
        };
        assert_eq!(method_of("/__healthz"), Some("GET"));
        assert_eq!(method_of("/__quitquitquitz"), Some("POST"));
    }

    #[test]
    fn the_health_body_is_the_serialized_health() {
        for (timestamp, uptime_seconds) in [(1_795_700_000.123_456, 12.345_678), (0.0, 1e-7)] {
            let health = manager::admin::Health {
                status: "ok",
                timestamp,
                uptime_seconds,
            };
            assert_eq!(
                String::from_utf8(super::health_body(&health)).unwrap(),
                serde_json::to_string(&health).unwrap()
            );
        }
    }

    use super::bearer;

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}

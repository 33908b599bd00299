//! The route template a request path matches, for the `http_route` label of the metrics: one
//! of a fixed list each server declares ([`EdgeConfig::routes`](crate::EdgeConfig)), so that
//! a scan of random paths adds no series.

/// The template of `routes` (or of the admin endpoints) that `path` matches: segment by
/// segment, `{name}` standing for any one non-empty segment. Empty when none matches.
pub fn matched(routes: &'static [&'static str], path: &str) -> &'static str {
    if path.starts_with("/__")
        && let Some(admin) = crate::admin::PATHS.iter().find(|p| **p == path)
    {
        return admin;
    }
    routes
        .iter()
        .find(|template| matches(template, path))
        .copied()
        .unwrap_or("")
}

fn matches(template: &str, path: &str) -> bool {
    // Most templates have no parameter: one comparison (a length first), before any scan.
    if template == path {
        return true;
    }
    if !template.contains('{') {
        return false;
    }
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matched;

    #[test]
    fn templates_match_by_segment() {
        const ROUTES: &[&str] = &["/", "/greet", "/flow/{name}", "/api/runs/{id}/cancel"];
        assert_eq!(matched(ROUTES, "/"), "/");
        assert_eq!(matched(ROUTES, "/greet"), "/greet");
        assert_eq!(matched(ROUTES, "/flow/plan_trip"), "/flow/{name}");
        assert_eq!(matched(ROUTES, "/flow/"), "");
        assert_eq!(matched(ROUTES, "/flow/a/b"), "");
        assert_eq!(
            matched(ROUTES, "/api/runs/abc/cancel"),
            "/api/runs/{id}/cancel"
        );
        assert_eq!(matched(ROUTES, "/__healthz"), "/__healthz");
        assert_eq!(matched(ROUTES, "/greet/"), "");
        assert_eq!(matched(ROUTES, "/random-3f9a"), "");
    }
}

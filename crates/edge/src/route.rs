//! The route template a request path matches, for the `http_route` label of the metrics: one
//! of a fixed list each server declares ([`EdgeConfig::routes`](crate::EdgeConfig)), so that
//! a scan of random paths adds no series.

/// The template of `routes` (or of the admin endpoints) that `path` matches: segment by
/// segment, `{name}` standing for any one non-empty segment. Empty when none matches.
pub fn matched(routes: &'static [&'static str], path: &str) -> &'static str {
    if path.starts_with(crate::admin::PREFIX)
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
    // Then a plain loop over the template's few bytes for a `{`: `str::contains` goes through
    // `memchr`, ~50 instructions a template (callgrind).
    if template == path {
        return true;
    }
    if !template.bytes().any(|b| b == b'{') {
        return false;
    }
    // Segment by segment, a `{param}` taking one non-empty segment. By hand, not with
    // `str::split` and its pattern machinery (this and the admin paths' prefix check took
    // ~650 instructions off a flow run, callgrind). A literal segment is compared in place and
    // only a parameter's is searched for its end: a search per segment on both sides cost
    // ~230 instructions a flow run more (callgrind).
    let (mut want, mut got) = (template.as_bytes(), path.as_bytes());
    loop {
        // The template's segment: short and static, found with a plain loop.
        let (w, want_rest) = match want.iter().position(|&b| b == b'/') {
            Some(at) => (&want[..at], Some(&want[at + 1..])),
            None => (want, None),
        };
        let param = w.len() >= 2 && w[0] == b'{' && w[w.len() - 1] == b'}';
        let got_rest = if param {
            let (g, rest) = segment(got);
            if g.is_empty() {
                return false;
            }
            rest
        } else {
            match got.strip_prefix(w) {
                Some([]) => None,
                Some([b'/', rest @ ..]) => Some(rest),
                _ => return false,
            }
        };
        match (want_rest, got_rest) {
            (None, None) => return true,
            (Some(w), Some(g)) => (want, got) = (w, g),
            _ => return false,
        }
    }
}

/// The first segment of `path`, and what follows its `/` (`None` when it is the last).
fn segment(path: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'/', path) {
        Some(at) => (&path[..at], Some(&path[at + 1..])),
        None => (path, None),
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
        assert_eq!(matched(ROUTES, "/api/runs/abc/cancel/"), "");
        assert_eq!(matched(ROUTES, "/api/runs//cancel"), "");
        assert_eq!(matched(ROUTES, "flow/x"), "");
        assert_eq!(matched(&["/{a}/{b}"], "/x/y"), "/{a}/{b}");
        assert_eq!(matched(&["/{a}/{b}"], "/x/"), "");
        assert_eq!(matched(&["/a{b}/c"], "/a{b}/c"), "/a{b}/c");
        assert_eq!(matched(&["/a{b}/c"], "/ax/c"), "");
        assert_eq!(matched(&["/flow/{name}"], "/flowx/y"), "");
        assert_eq!(matched(&["/flow/{name}"], "/flo/y"), "");
        assert_eq!(matched(&["/{}"], "/x"), "/{}");
    }
}

//! The router: which upstream a request goes to.

use crate::config::UpstreamConfig;

/// Picks the upstream for a request: routes whose `host` (if any) matches,
/// then the longest `path_prefix`; on a tie, a route with a host wins.
#[derive(Debug, Default)]
pub struct Router {
    /// (host, prefix, upstream index), most specific first.
    routes: Vec<(Option<String>, String, usize)>,
    /// Hosts an absolute-form target may name: every route's `match.host`
    /// and every upstream's own host, lower case.
    known_hosts: Vec<String>,
}

impl Router {
    pub fn new(upstreams: &[UpstreamConfig]) -> Router {
        let mut routes: Vec<_> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.route.host.clone(), u.route.path_prefix.clone(), i))
            .collect();
        routes.sort_by(|a, b| {
            b.1.len()
                .cmp(&a.1.len())
                .then(b.0.is_some().cmp(&a.0.is_some()))
        });
        let mut known_hosts: Vec<String> = upstreams
            .iter()
            .flat_map(|u| [u.route.host.clone(), Some(u.url.host.to_ascii_lowercase())])
            .flatten()
            .collect();
        known_hosts.sort();
        known_hosts.dedup();
        Router {
            routes,
            known_hosts,
        }
    }

    /// Whether an absolute-form request target may name `host`.
    pub fn knows_host(&self, host: &str) -> bool {
        self.known_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// `host` is the request's Host without port, as sent (any case).
    #[inline]
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes.iter().find_map(|(h, prefix, i)| {
            let host_ok = match h {
                None => true,
                Some(h) => host.is_some_and(|req| req.eq_ignore_ascii_case(h)),
            };
            (host_ok && path.starts_with(prefix.as_str())).then_some(*i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let yaml = r#"
upstreams:
  - { name: all, url: "http://127.0.0.1:1", credentials: none }
  - { name: special, url: "http://127.0.0.1:2", match: { path_prefix: "/v1/special/" }, credentials: none }
  - { name: emoji, url: "http://Emoji.Upstream:3", match: { host: "emoji.internal" }, credentials: none }
  - { name: emoji-v2, url: "http://127.0.0.1:4", match: { host: "emoji.internal", path_prefix: "/v2/" }, credentials: none }
"#;
        let cfg = crate::config::parse(yaml, std::path::Path::new("/")).unwrap();
        Router::new(&cfg.upstreams)
    }

    #[test]
    fn the_longest_prefix_wins_and_a_host_route_beats_a_tie() {
        let r = router();
        assert_eq!(r.route(Some("api.example"), "/v1/special/x"), Some(1));
        assert_eq!(r.route(Some("api.example"), "/v1/other"), Some(0));
        // The host route (prefix "/") ties with the catch-all: it wins.
        assert_eq!(r.route(Some("EMOJI.internal"), "/v1/x"), Some(2));
        assert_eq!(r.route(Some("emoji.internal"), "/v2/x"), Some(3));
        assert_eq!(
            r.route(None, "/v2/x"),
            Some(0),
            "no Host: host routes never match"
        );
    }

    #[test]
    fn absolute_targets_may_name_route_hosts_and_upstream_hosts() {
        let r = router();
        assert!(r.knows_host("emoji.internal"));
        assert!(
            r.knows_host("EMOJI.UPSTREAM"),
            "an upstream's own host, any case"
        );
        assert!(r.knows_host("127.0.0.1"));
        assert!(!r.knows_host("evil.example"));
    }
}

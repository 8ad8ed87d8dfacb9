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

//! One generation of config and tokens: everything the request path reads,
//! built and checked off the request path, then swapped in whole.
//!
//! A request loads the current [`Generation`] once (an `Arc` from the
//! `ArcSwap` in [`crate::app::App`]) and keeps it to the end, retries
//! included. So a request sees the old tokens or the new ones, never a mix,
//! and a reload never waits for requests or makes them wait.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use crate::breaker::Breaker;
use crate::config::{Injection, LoadedConfig, UpstreamConfig};
use crate::metrics::UpstreamMetrics;
use crate::outcome::Reason;
use crate::tokens::{self, Injected, TokenSet, TokenState};

/// Everything one request needs, swapped atomically on reload.
#[derive(Debug)]
pub struct Generation {
    /// Counts reloads that were applied (1 = the config graceway started with).
    pub number: u64,
    pub loaded: LoadedConfig,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub loaded_at: SystemTime,
    /// Token sources that failed but did not fail the build (see
    /// [`SourcePolicy`]); empty when every source was read.
    pub warnings: Vec<String>,
}

/// One upstream, with every per-request value precomputed.
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    /// A connect-ready peer (resolved address, SNI, TLS and timeouts);
    /// each request clones it. An `ArcSwap` so that a re-resolved address
    /// (see `control::Resolver`) applies without a reload: one atomic load
    /// per request.
    pub peer: arc_swap::ArcSwap<HttpPeer>,
    /// Set after a failed connect: re-resolve at the next control tick.
    pub resolve_now: std::sync::atomic::AtomicBool,
    pub host_header: HeaderValue,
    /// `Allow` of a 405: the upstream's methods, comma-separated.
    pub allow: HeaderValue,
    pub inject: Option<InjectTarget>,
    pub tokens: TokenSet,
    /// Opens when no token is usable; lives and dies with this generation,
    /// so a reload or a token change closes it.
    pub auth: Breaker,
    /// Counts auth-breaker trials, to cycle through the rejected tokens.
    pub auth_trials: std::sync::atomic::AtomicUsize,
    /// Outlives generations: counters, last success/failure, the health
    /// breaker.
    pub status: Arc<UpstreamStatus>,
}

impl Upstream {
    /// Why an upstream has no usable token, for the error body and logs.
    pub fn no_token_reason(&self) -> &'static str {
        match self.no_token().0 {
            Some(Reason::TokenExpired) => "token-expired",
            Some(Reason::RateLimited) => "rate-limited",
            Some(_) => "token-rejected",
            None => "token-unavailable",
        }
    }

    /// The degradation reason when no token is usable, and the status that
    /// refused it (for `fwd-status`): `None` when every token is unavailable.
    /// A rejection wins over an expiry, and both over a quota cool-down.
    pub fn no_token(&self) -> (Option<Reason>, Option<u16>) {
        let now = SystemTime::now();
        let mut expired = false;
        let mut cooling = false;
        for t in &self.tokens.tokens {
            match t.state(now) {
                TokenState::Rejected => {
                    return (
                        Some(Reason::TokenRejected),
                        Some(t.rejected_status()).filter(|s| *s != 0),
                    )
                }
                TokenState::Expired => expired = true,
                TokenState::RateLimited => cooling = true,
                _ => {}
            }
        }
        if expired {
            (Some(Reason::TokenExpired), None)
        } else if cooling {
            (Some(Reason::RateLimited), Some(429))
        } else {
            (None, None)
        }
    }

    /// Seconds until the first token's quota cool-down ends, as `Retry-After`.
    pub fn cooldown_retry_after(&self) -> Option<HeaderValue> {
        let now = SystemTime::now();
        self.tokens
            .tokens
            .iter()
            .filter_map(|t| t.evidence.cool_until(now))
            .min()
            .map(|until| {
                HeaderValue::from(until.duration_since(now).map_or(1, |d| d.as_secs().max(1)))
            })
    }

    /// `healthy`, `degraded` or `down`, and why. Down means a request can get
    /// nothing but an error: no usable token and no stored copy to serve.
    pub fn state(&self, now: SystemTime) -> (&'static str, Option<&'static str>) {
        let copies = self.status.stored_entries.load(Ordering::Relaxed) > 0;
        if self.inject.is_some() && !self.tokens.any_usable(now) {
            let why = self.no_token_reason();
            // Copies are served for a rejected or expired token, not when every
            // source failed (there is nothing to say the upstream would refuse).
            let servable =
                copies && (why != "token-unavailable" || self.config.stale.on.token_unavailable);
            return (if servable { "degraded" } else { "down" }, Some(why));
        }
        if let Some(reason) = self.status.health.reason() {
            return (
                if copies { "degraded" } else { "down" },
                Some(reason.as_str()),
            );
        }
        if let Some((reason, _)) = self.status.degradation() {
            return ("degraded", Some(reason.as_str()));
        }
        ("healthy", None)
    }
}

/// Where the token goes.
#[derive(Debug, Clone)]
pub enum InjectTarget {
    /// The header name in the case the config wrote it, and its lookup form.
    Header {
        name: bytes::Bytes,
        lookup: http::HeaderName,
    },
    Query {
        /// `param=`, to find and drop a client-sent value.
        key_eq: String,
    },
}

/// What outlives a reload for one upstream name: counters and recent
/// history. Written by the request path with relaxed atomics only.
pub struct UpstreamStatus {
    pub name: String,
    pub metrics: UpstreamMetrics,
    last_success: AtomicU64,
    last_failure: AtomicU64,
    last_failure_reason: AtomicU8,
    /// Copies in the last-good cache for this upstream, and their bytes;
    /// kept by the cache as it inserts and evicts.
    pub stored_entries: AtomicI64,
    pub stored_bytes: AtomicI64,
    /// Reason of the current degradation (see [`Reason`]); 0 while the
    /// answers are fresh.
    degraded_reason: AtomicU8,
    /// Unix seconds when the current degradation began (0 when healthy).
    degraded_since: AtomicU64,
    /// Upstream-health breaker (timeouts, refused, 5xx streaks); survives
    /// reloads, its settings are updated in place.
    pub health: Breaker,
}

impl std::fmt::Debug for UpstreamStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamStatus")
            .field("name", &self.name)
            .finish()
    }
}

impl UpstreamStatus {
    pub fn new(name: &str) -> UpstreamStatus {
        UpstreamStatus {
            name: name.to_string(),
            metrics: UpstreamMetrics::new(name),
            last_success: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            last_failure_reason: AtomicU8::new(0),
            stored_entries: AtomicI64::new(0),
            stored_bytes: AtomicI64::new(0),
            degraded_reason: AtomicU8::new(0),
            degraded_since: AtomicU64::new(0),
            health: Breaker::new(5, Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// Feeds the health breaker a failure (a live answer or a probe); logs
    /// and publishes an opening.
    pub fn health_failure(&self, reason: Reason) {
        if self.health.failure(reason) {
            self.metrics.breaker_open.set(1);
            log::warn!(
                "upstream {}: health breaker open after consecutive failures ({}); answering from the last-good cache at once",
                self.name,
                reason.as_str()
            );
        }
    }

    /// Feeds the health breaker a success; logs and publishes a closing.
    #[inline]
    pub fn health_success(&self) {
        if self.health.success() {
            self.metrics.breaker_open.set(0);
            log::info!(
                "upstream {}: health breaker closed: the upstream answers again",
                self.name
            );
        }
    }

    /// A fresh answer: ends a degradation.
    #[inline]
    pub fn mark_healthy(&self) {
        // The transition is logged (once) by the state watch.
        if self.degraded_reason.load(Ordering::Relaxed) != 0
            && self.degraded_reason.swap(0, Ordering::Relaxed) != 0
        {
            self.metrics.degraded.set(0);
            self.degraded_since.store(0, Ordering::Relaxed);
        }
    }

    /// A degraded answer: starts a degradation or updates its reason (the
    /// state watch logs the transition once).
    pub fn mark_degraded(&self, reason: Reason) {
        let now = crate::clock::unix_now();
        self.record_failure(now, reason);
        if self.degraded_reason.load(Ordering::Relaxed) != reason as u8
            && self.degraded_reason.swap(reason as u8, Ordering::Relaxed) == 0
        {
            self.metrics.degraded.set(1);
            self.degraded_since.store(now, Ordering::Relaxed);
        }
    }

    /// The current degradation: reason and since when.
    pub fn degradation(&self) -> Option<(Reason, SystemTime)> {
        let r = Reason::from_u8(self.degraded_reason.load(Ordering::Relaxed))?;
        Some((r, unix_opt(self.degraded_since.load(Ordering::Relaxed))?))
    }

    #[inline]
    pub fn record_success(&self, now_secs: u64) {
        if self.last_success.load(Ordering::Relaxed) != now_secs {
            self.last_success.store(now_secs, Ordering::Relaxed);
        }
    }

    pub fn record_failure(&self, now_secs: u64, reason: Reason) {
        self.last_failure.store(now_secs, Ordering::Relaxed);
        self.last_failure_reason
            .store(reason as u8, Ordering::Relaxed);
    }

    pub fn last_success(&self) -> Option<SystemTime> {
        unix_opt(self.last_success.load(Ordering::Relaxed))
    }

    pub fn last_failure(&self) -> Option<(SystemTime, Option<Reason>)> {
        unix_opt(self.last_failure.load(Ordering::Relaxed)).map(|t| {
            (
                t,
                Reason::from_u8(self.last_failure_reason.load(Ordering::Relaxed)),
            )
        })
    }
}

fn unix_opt(secs: u64) -> Option<SystemTime> {
    (secs != 0).then(|| crate::clock::from_unix(secs))
}

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

/// Why a generation could not be built: one line per problem, each
/// naming its config path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct BuildErrors(pub Vec<String>);

/// How strictly token sources are judged while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePolicy {
    /// First start: a failed source makes that token `unavailable` and the
    /// process starts anyway (readiness reports it). A sidecar that refuses
    /// to start because a secret store is slow only makes things worse.
    Tolerate,
    /// Reload: any failed source fails the reload and the old state stays.
    Require,
    /// Token refresh (a watched file changed, a command or OAuth2 refresh
    /// came due): a failed source keeps its previous value, the others
    /// apply; the failure is reported.
    KeepPrevious,
}

/// Builds a generation from a loaded config: resolves addresses, loads CA
/// files and reads every token source. `previous` lends each upstream its
/// long-lived status (matched by name) and, when `keep_token_states`, the
/// rejection state of tokens whose value did not change.
pub async fn build(
    loaded: LoadedConfig,
    number: u64,
    previous: Option<&Generation>,
    statuses: &(dyn Fn(&str) -> Arc<UpstreamStatus> + Sync),
    policy: SourcePolicy,
    keep_token_states: bool,
) -> Result<Generation, BuildErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut upstreams = Vec::new();
    for (i, u) in loaded.config.upstreams.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        let peer = make_peer(u)
            .await
            .map_err(|e| format!("{at}.{}: {e}", e.field()));
        let (tokens, inject) = match &u.credentials {
            None => (TokenSet::default(), None),
            Some(cr) => {
                let (mut set, errs) = tokens::load_set(cr).await;
                for (j, e) in errs {
                    let field = format!("{at}.credentials.tokens[{j}]");
                    match policy {
                        SourcePolicy::Require => errors.push(format!("{field}: {e}")),
                        SourcePolicy::Tolerate => {
                            log::error!("{field}: token source failed, token unavailable: {e}");
                            warnings.push(format!("{field}: {e}"));
                        }
                        SourcePolicy::KeepPrevious => {
                            let kept = previous
                                .and_then(|g| g.upstream_named(&u.name))
                                .and_then(|p| p.tokens.tokens.get(j))
                                .filter(|p| p.spec == set.tokens[j].spec)
                                .and_then(|p| p.carry_over());
                            match kept {
                                Some(t) => {
                                    set.tokens[j] = t;
                                    warnings.push(format!(
                                        "{field}: {e} (the previous value stays in use)"
                                    ));
                                }
                                None => warnings.push(format!("{field}: {e} (token unavailable)")),
                            }
                        }
                    }
                }
                let target = match &cr.inject {
                    Injection::Header { name, .. } => InjectTarget::Header {
                        name: bytes::Bytes::from(name.clone()),
                        lookup: http::HeaderName::from_bytes(name.as_bytes())
                            .expect("validated header name"),
                    },
                    Injection::Query { param } => InjectTarget::Query {
                        key_eq: format!("{param}="),
                    },
                };
                (set, Some(target))
            }
        };
        if keep_token_states {
            if let Some(prev) = previous.and_then(|g| g.upstream_named(&u.name)) {
                for t in &tokens.tokens {
                    if let Some(old) = prev.tokens.tokens.get(t.index) {
                        t.inherit_state(old);
                    }
                }
            }
        }
        let host_header = match HeaderValue::from_str(&u.url.host_header) {
            Ok(v) => v,
            Err(_) => {
                errors.push(format!(
                    "{at}.url: host `{}` is not a valid Host header",
                    u.url.host
                ));
                continue;
            }
        };
        let peer = match peer {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let status = statuses(&u.name);
        let h = &u.health;
        status
            .health
            .configure(h.open_after, h.retry_after, h.max_retry_after);
        upstreams.push(Arc::new(Upstream {
            config: u.clone(),
            peer: arc_swap::ArcSwap::from_pointee(peer),
            resolve_now: Default::default(),
            host_header,
            allow: HeaderValue::from_str(
                &u.methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .unwrap_or(HeaderValue::from_static("GET")),
            inject,
            tokens,
            auth: Breaker::new(1, h.retry_after, h.max_retry_after),
            auth_trials: Default::default(),
            status,
        }));
    }
    if !errors.is_empty() {
        return Err(BuildErrors(errors));
    }
    Ok(Generation {
        number,
        warnings,
        router: Router::new(&loaded.config.upstreams),
        loaded,
        upstreams,
        loaded_at: SystemTime::now(),
    })
}

impl InjectTarget {
    /// Puts the token into the request, replacing whatever the client sent
    /// in that header or query parameter.
    pub fn inject(
        &self,
        token: &crate::tokens::Token,
        req: &mut pingora::http::RequestHeader,
    ) -> pingora::Result<()> {
        match (self, token.injected.as_ref()) {
            (InjectTarget::Header { name, lookup }, Some(Injected::Header(value))) => {
                req.remove_header(lookup);
                req.insert_header(name.clone(), value.clone())?;
            }
            (InjectTarget::Query { key_eq }, Some(Injected::Query(piece))) => {
                let uri = with_query_token(&req.uri, key_eq, piece);
                req.set_raw_path(uri.as_bytes())?;
            }
            _ => {
                return pingora::Error::e_explain(
                    pingora::ErrorType::InternalError,
                    "token has no value to inject",
                )
            }
        }
        Ok(())
    }
}

/// The request target with `key_eq…` pairs removed and `piece` appended.
fn with_query_token(uri: &http::Uri, key_eq: &str, piece: &str) -> String {
    let mut out = String::with_capacity(uri.path().len() + piece.len() + 64);
    out.push_str(uri.path());
    out.push('?');
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            if pair.is_empty() || pair.starts_with(key_eq) || pair == &key_eq[..key_eq.len() - 1] {
                continue;
            }
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(piece);
    out
}

impl Upstream {
    pub fn probe(&self) -> Option<&crate::config::ProbeSpec> {
        self.config
            .credentials
            .as_ref()
            .and_then(|c| c.probe.as_ref())
    }
}

impl Generation {
    pub fn upstream_named(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.config.name == name)
    }
}

/// Resolves the upstream's address now (Pingora's `HttpPeer::new` would do
/// a blocking lookup and panic on failure) and sets TLS and timeouts.
async fn make_peer(u: &UpstreamConfig) -> Result<HttpPeer, crate::outbound::PeerError> {
    let mut peer = crate::outbound::peer_for(
        &u.url,
        u.tls.verify,
        u.tls.ca_file.as_deref(),
        u.timeouts.connect,
        u.timeouts.read,
    )
    .await?;
    peer.options.write_timeout = Some(u.timeouts.write);
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_replaces_client_value() {
        let uri: http::Uri = "/v1/x?a=1&access_token=client&b=2&access_token"
            .parse()
            .unwrap();
        assert_eq!(
            with_query_token(&uri, "access_token=", "access_token=T"),
            "/v1/x?a=1&b=2&access_token=T"
        );
        let uri: http::Uri = "/v1/x".parse().unwrap();
        assert_eq!(with_query_token(&uri, "k=", "k=T"), "/v1/x?k=T");
    }
}

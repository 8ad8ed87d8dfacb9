//! One upstream as the request path sees it ([`Upstream`], rebuilt with
//! each generation: peer, precomputed headers, tokens, the auth breaker)
//! and what outlives generations for its name ([`UpstreamStatus`]:
//! counters, last success and failure, the health breaker).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use super::breaker::Breaker;
use super::inject::InjectTarget;
use crate::config::{HealthPolicy, UpstreamConfig};
use crate::metrics::UpstreamMetrics;
use crate::outcome::{Reason, UpstreamState};
use crate::tokens::{TokenSet, TokenState};

/// One upstream, with every per-request value precomputed.
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    /// A connect-ready peer (resolved address, SNI, TLS and timeouts);
    /// each request clones it. An `ArcSwap` so that a re-resolved address
    /// (see `control::Resolver`) applies without a reload: one atomic load
    /// per request.
    pub peer: arc_swap::ArcSwap<HttpPeer>,
    /// `tls.client_cert`, as loaded for this generation: what `peer`
    /// carries in `client_cert_key`, with its fingerprint and validity for
    /// `/status`, the metrics and preflight. A changed file makes a new
    /// generation (see `app::refresh_tokens`), like a token file.
    pub client_cert: Option<Arc<crate::net::client_cert::ClientCert>>,
    /// Every address of the name, which a request's connect goes to
    /// ([`super::addresses`]); swapped with `peer` by the resolver.
    pub addresses: arc_swap::ArcSwap<super::addresses::Addresses>,
    /// Set after a failed connect: re-resolve at the next control tick.
    pub resolve_now: std::sync::atomic::AtomicBool,
    pub host_header: HeaderValue,
    /// `Allow` of a 405: the upstream's methods, comma-separated.
    pub allow: HeaderValue,
    pub inject: Option<InjectTarget>,
    pub tokens: TokenSet,
    /// The tokens' values in every form the upstream was sent, to take
    /// out of its answers (see `tokens::reflect`).
    pub reflections: crate::tokens::reflect::Reflections,
    /// Opens when no token is usable; lives and dies with this generation,
    /// so a reload or a token change closes it.
    pub auth: Breaker,
    /// Counts auth-breaker trials, to cycle through the rejected tokens.
    pub auth_trials: std::sync::atomic::AtomicUsize,
    /// With the fleet ledger, the token (index + 1; 0 = none) whose trial
    /// this replica won the fleet's lock for and leaves to the next
    /// request, having no path of its own to try it on (see
    /// `app::probe::trials`). Without the ledger requests take the auth
    /// breaker's trials themselves.
    pub trial_grant: std::sync::atomic::AtomicUsize,
    /// Outlives generations: counters, last success/failure, the health
    /// breaker.
    pub status: Arc<UpstreamStatus>,
}

impl Upstream {
    /// The peer for a connect of a request that has failed to connect to
    /// the addresses in `tried` (a bit per index): the next address, and
    /// its index.
    pub fn next_peer(&self, tried: u64) -> (HttpPeer, usize) {
        let (i, addr) = self.addresses.load().pick(tried);
        let mut peer = HttpPeer::clone(&self.peer.load());
        peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
        (peer, i)
    }

    /// Whether `other` (the same upstream in another generation) sends the
    /// same client certificate: by the leaf's fingerprint (the key must
    /// match the leaf, so it is the same key).
    pub fn same_client_cert(&self, other: &Upstream) -> bool {
        self.client_cert.as_ref().map(|c| &c.fingerprint)
            == other.client_cert.as_ref().map(|c| &c.fingerprint)
    }

    /// Why an upstream has no usable token (for `/status` and logs).
    pub fn no_token_cause(&self) -> Reason {
        self.no_token_cause_at(SystemTime::now())
    }

    fn no_token_cause_at(&self, now: SystemTime) -> Reason {
        match self.no_token_at(now).0 {
            Some(r @ (Reason::TokenExpired | Reason::RateLimited)) => r,
            Some(_) => Reason::TokenRejected,
            None => Reason::TokenUnavailable,
        }
    }

    /// The degradation reason when no token is usable, and the status that
    /// refused it (for `fwd-status`): `None` when every token is unavailable.
    /// A rejection wins over an expiry, and both over a quota cool-down.
    pub fn no_token(&self) -> (Option<Reason>, Option<u16>) {
        self.no_token_at(SystemTime::now())
    }

    fn no_token_at(&self, now: SystemTime) -> (Option<Reason>, Option<u16>) {
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
        self.cooldown_retry_after_at(SystemTime::now())
    }

    fn cooldown_retry_after_at(&self, now: SystemTime) -> Option<HeaderValue> {
        self.tokens
            .tokens
            .iter()
            .filter_map(|t| t.evidence.cool_until(now))
            .min()
            .map(|until| {
                HeaderValue::from(until.duration_since(now).map_or(1, |d| d.as_secs().max(1)))
            })
    }

    /// Healthy, degraded or down, and why. Down means a request can get
    /// nothing but an error: no usable token and no stored copy to serve.
    pub fn state(&self, now: SystemTime) -> (UpstreamState, Option<Reason>) {
        let copies = self.status.stored_entries.load(Ordering::Relaxed) > 0;
        let degraded_or_down = |servable| {
            if servable {
                UpstreamState::Degraded
            } else {
                UpstreamState::Down
            }
        };
        if self.inject.is_some() && !self.tokens.any_usable(now) {
            let why = self.no_token_cause_at(now);
            // Copies are served for a rejected or expired token, not when every
            // source failed (there is nothing to say the upstream would refuse).
            let servable = copies
                && (why != Reason::TokenUnavailable || self.config.stale.on.token_unavailable);
            return (degraded_or_down(servable), Some(why));
        }
        if let Some(reason) = self.status.health.reason() {
            return (degraded_or_down(copies), Some(reason));
        }
        if let Some((reason, _)) = self.status.degradation() {
            return (UpstreamState::Degraded, Some(reason));
        }
        (UpstreamState::Healthy, None)
    }
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
    /// Unix milliseconds of the last logged health-breaker change, and
    /// how many changes since then were not logged: a flapping upstream
    /// is logged once a second with a count, not once per flip.
    breaker_logged_at: AtomicU64,
    breaker_unlogged: AtomicU64,
    /// Path and query of the newest answer kept as a last-good copy: what
    /// the background trial replays while a breaker is open and no probe
    /// is configured (memory only, never persisted).
    last_good_path: arc_swap::ArcSwapOption<String>,
    /// Wakes this upstream's background task (the probe loop, or the
    /// background trials) when a request learns something it must act on:
    /// a breaker opened, a token became suspect. The task sleeps on it
    /// instead of polling.
    pub wake: tokio::sync::Notify,
}

/// Health-breaker changes are logged at most this often.
const BREAKER_LOG_EVERY_MS: u64 = 1000;

/// The tail of a breaker log line that stands for several changes.
fn flapped(unlogged: u64) -> String {
    if unlogged == 0 {
        String::new()
    } else {
        format!(" ({unlogged} more opens and closes in the last second were not logged: the upstream is flapping)")
    }
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
            // The config's defaults until the first build configures it
            // (`generation::build` sets this upstream's `health`).
            health: {
                let h = HealthPolicy::default();
                Breaker::new(h.open_after, h.retry_after, h.max_retry_after)
            },
            breaker_logged_at: AtomicU64::new(0),
            breaker_unlogged: AtomicU64::new(0),
            last_good_path: arc_swap::ArcSwapOption::empty(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Remembers the path of a copy just kept (see `last_good_path`).
    pub fn set_last_good_path(&self, path: String) {
        self.last_good_path.store(Some(Arc::new(path)));
    }

    /// The newest kept path, for the background trial.
    pub fn last_good_path(&self) -> Option<Arc<String>> {
        self.last_good_path.load_full()
    }

    /// Whether a breaker change may be logged now; `Some(n)`: yes, and `n`
    /// changes since the last logged one were not.
    fn breaker_log_due(&self) -> Option<u64> {
        self.breaker_log_due_at(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    /// [`Self::breaker_log_due`] at `now` (Unix milliseconds).
    fn breaker_log_due_at(&self, now: u64) -> Option<u64> {
        let last = self.breaker_logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < BREAKER_LOG_EVERY_MS
            || self
                .breaker_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.breaker_unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.breaker_unlogged.swap(0, Ordering::Relaxed))
    }

    /// Feeds the health breaker a failure (a live answer or a probe); logs
    /// and publishes an opening.
    pub fn health_failure(&self, reason: Reason) {
        if self.health.failure(reason) {
            self.metrics.breaker_open.set(1);
            self.wake.notify_one();
            if let Some(unlogged) = self.breaker_log_due() {
                log::warn!(
                    "upstream {}: health breaker open after consecutive failures ({}); answering from the last-good cache at once{}",
                    self.name,
                    reason.as_str(),
                    flapped(unlogged)
                );
            }
        }
    }

    /// Feeds the health breaker a success; logs and publishes a closing.
    #[inline]
    pub fn health_success(&self) {
        if self.health.success() {
            self.metrics.breaker_open.set(0);
            if let Some(unlogged) = self.breaker_log_due() {
                log::info!(
                    "upstream {}: health breaker closed: the upstream answers again{}",
                    self.name,
                    flapped(unlogged)
                );
            }
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

impl Upstream {
    pub fn probe(&self) -> Option<&crate::config::ProbeSpec> {
        self.config
            .credentials
            .as_ref()
            .and_then(|c| c.probe.as_ref())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod testing;

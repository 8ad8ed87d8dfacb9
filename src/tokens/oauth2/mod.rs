//! The `oauth2` token source: the client-credentials grant (RFC 6749
//! §4.4) against a token endpoint.
//!
//! A fetched token is kept until `refresh_fraction` of its lifetime has
//! passed; reading the source before then returns the same token, so
//! reloads and file events do not mint new tokens. Its expiry is the
//! earliest of the JWT's own `exp` (when the token is a JWT), the answer's
//! `expires_at` and fetch start + `expires_in`, less a skew margin
//! ([`expiry`]), so a token is never sent past the moment the vendor will
//! call it expired.
//!
//! A failed fetch is retried with backoff: 2 s doubling up to
//! `oauth2.max_retry` (default 4 s) while no token of the source is usable
//! (requests are waiting on it, so a returning identity provider is used
//! within that), up to 5 min while the previous token still serves.
//!
//! A refusal by the upstream ([`OAuth2Tokens::refused`]) re-fetches once at once; when
//! the replacement is refused too, the next fetch backs off (10 s doubling
//! to 5 min), so an upstream that refuses every token of this provider
//! costs a handful of fetches, not one per request (identity providers
//! bill and rate-limit machine tokens). Fetches are counted by result in
//! `graceway_token_fetches_total{upstream,token,result}`.
//!
//! With `oauth2.share: true` a fetch goes through the fleet ([`share`]):
//! the token another replica fetched is used until its refresh point, and
//! one replica fetches for all. The rules above are unchanged; a token read
//! from the fleet takes a fetch's place in them.

pub mod assertion;
mod fetch;
pub mod share;

use fetch::{client_name, fetch_here};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::source::SourceError;
use super::value::Secret;
use crate::config::OAuth2Spec;

/// A token as this process holds it: fetched here, or read from the
/// fleet (`shared_by` names the replica that fetched it).
#[derive(Clone)]
pub struct Minted {
    pub secret: Secret,
    pub expires_at: Option<SystemTime>,
    /// When the fetch started (the lifetime and refresh point count from it).
    pub fetched_at: SystemTime,
    pub shared_by: Option<String>,
}

/// When a token fetched at `fetched` and expiring at `expires` is renewed:
/// `fraction` of its lifetime, or an hour when no lifetime was stated.
pub fn refresh_point(
    fetched: SystemTime,
    expires: Option<SystemTime>,
    fraction: f64,
) -> SystemTime {
    let lifetime = expires.map(|e| e.duration_since(fetched).unwrap_or_default());
    fetched
        + lifetime
            .map(|d| d.mul_f64(fraction))
            .unwrap_or(Duration::from_secs(3600))
}

/// Where a token came from, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The replica that fetched it; `None` when this one did.
    pub shared_by: Option<String>,
    pub fetched_at: SystemTime,
}

#[derive(Clone)]
struct Cached {
    secret: Option<Secret>,
    expires_at: Option<SystemTime>,
    /// When the next fetch is due (refresh point, or retry after a failure).
    next_attempt: SystemTime,
    failures: u32,
    /// When the current secret was fetched.
    fetched_at: SystemTime,
    /// The replica that fetched the current secret, when another did.
    shared_by: Option<String>,
    /// The current secret was refused by an upstream (counted once).
    refused: bool,
    /// Refused tokens in a row: each fetched to replace a refused one.
    refusals: u32,
    /// The upstream and token index that read this source (metric labels).
    labels: (String, String),
}

/// A refused token fetched longer ago than this had worked: its refusal
/// starts a new chain (one immediate re-fetch).
const REFUSAL_CHAIN: Duration = Duration::from_secs(60);

/// Before the expiry the vendor states, at most: clocks differ, and a
/// token sent in its last second arrives expired.
const EXPIRY_SKEW: Duration = Duration::from_secs(5);

/// The expiry of a token fetched at `fetched` (before the request went
/// out): the earliest of the JWT's `exp`, the answer's `expires_at` and
/// `fetched + expires_in`, less [`EXPIRY_SKEW`] (at most a tenth of the
/// lifetime). `None` when none of them is stated.
pub fn expiry(
    fetched: SystemTime,
    jwt_exp: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    expires_in: Option<Duration>,
) -> Option<SystemTime> {
    // A provider's `expires_in` past what the clock can hold counts as unstated.
    let stated = [
        jwt_exp,
        expires_at,
        expires_in.and_then(|d| fetched.checked_add(d)),
    ]
    .into_iter()
    .flatten()
    .min()?;
    let lifetime = stated.duration_since(fetched).unwrap_or_default();
    Some(stated - EXPIRY_SKEW.min(lifetime / 10))
}

fn count(labels: &(String, String), result: &str) {
    crate::metrics::metrics()
        .token_fetches_total
        .with_label_values(&[labels.0.as_str(), labels.1.as_str(), result])
        .inc();
}

/// The tokens minted by every OAuth2 source of the process, by provider
/// and client (two upstreams with the same client share one token), with
/// each one's refresh and retry schedule. Owned by the `App`, so that it
/// outlives reloads (a reload reads the cached token instead of minting
/// one) and a test or `graceway check` has its own; each OAuth2 token holds
/// a handle to report a refusal. The lock is taken when a source is read
/// or refused and by the control loop's refresh check, never per request.
#[derive(Default)]
pub struct OAuth2Tokens {
    map: Mutex<HashMap<String, Cached>>,
    /// Set once, before the first generation is built, when the fleet tier
    /// and its seal key are there: sources with `share` fetch through it.
    fleet: std::sync::OnceLock<share::Fleet>,
    /// `share` asked for without a fleet to share through: logged once.
    unshared_logged: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for OAuth2Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuth2Tokens")
    }
}

fn key(spec: &OAuth2Spec) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}",
        spec.token_url, spec.client_id, spec.scope, spec.audience
    )
}

impl OAuth2Tokens {
    /// Shares the tokens of sources with `oauth2.share` through `fleet`
    /// (once; a second call is ignored, the first fleet stays).
    pub fn share_through(&self, fleet: share::Fleet) {
        let _ = self.fleet.set(fleet);
    }

    /// Where `secret`, the current token of `spec`, came from.
    pub fn origin(&self, spec: &OAuth2Spec, secret: &Secret) -> Option<Origin> {
        let c = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.get(&key(spec))?;
        (e.secret.as_ref() == Some(secret)).then(|| Origin {
            shared_by: e.shared_by.clone(),
            fetched_at: e.fetched_at,
        })
    }

    /// Whether a fetch is due (refresh point reached or a retry is due).
    pub fn due(&self, spec: &OAuth2Spec) -> bool {
        let c = self.map.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&key(spec))
            .is_none_or(|e| SystemTime::now() >= e.next_attempt)
    }

    /// Whether the source's last fetch failed (its previous token, if any,
    /// still serves): a self-refreshing token is `expiring` only then.
    pub fn refresh_failing(&self, spec: &OAuth2Spec) -> bool {
        let c = self.map.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&key(spec)).is_some_and(|e| e.failures > 0)
    }

    /// The upstream refused `rejected`, this source's current token. The first
    /// refusal in a chain fetches a new token at once (the control loop's
    /// refresh runs within a quarter second) instead of keeping the refused
    /// one until its scheduled refresh; when that replacement is refused too,
    /// the next fetch waits 10 s, then 20 s ... up to 5 min. A token is counted
    /// once however many requests it refused. A fetch that is backing off
    /// after failures keeps its backoff.
    pub fn refused(&self, spec: &OAuth2Spec, rejected: &Secret) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = map.get_mut(&key(spec)) else {
            return;
        };
        if c.secret.as_ref() != Some(rejected) || c.refused {
            return;
        }
        let now = SystemTime::now();
        c.refused = true;
        if now.duration_since(c.fetched_at).unwrap_or_default() > REFUSAL_CHAIN {
            c.refusals = 0;
        }
        c.refusals += 1;
        count(&c.labels, "refused");
        if c.failures > 0 {
            return;
        }
        if c.refusals == 1 {
            c.next_attempt = now;
            log::info!(
                "oauth2 {}: token {} was refused; fetching a new one now",
                spec.token_url,
                rejected.fingerprint()
            );
        } else {
            let wait = crate::clock::backoff(
                Duration::from_secs(10),
                c.refusals - 1,
                Duration::from_secs(300),
            );
            c.next_attempt = now + wait;
            log::warn!(
            "oauth2 {}: token {} was refused too ({} refused in a row): the upstream does not take this provider's tokens; next fetch in {}s",
            spec.token_url,
            rejected.fingerprint(),
            c.refusals,
            wait.as_secs()
        );
        }
    }

    /// The current token: cached while fresh, fetched when due. `upstream`
    /// and `token` (its index) label the fetch in the metrics.
    pub async fn read(
        &self,
        spec: &OAuth2Spec,
        upstream: &str,
        token: usize,
    ) -> Result<(Secret, Option<SystemTime>), SourceError> {
        let k = key(spec);
        let now = SystemTime::now();
        let cached = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .cloned();
        if let Some(c) = &cached {
            if let Some(s) = &c.secret {
                let unexpired = c.expires_at.is_none_or(|e| e > now);
                if now < c.next_attempt && unexpired {
                    return Ok((s.clone(), c.expires_at));
                }
            }
        }
        let labels = (upstream.to_string(), token.to_string());
        let refused = cached
            .as_ref()
            .filter(|c| c.refused)
            .and_then(|c| c.secret.clone());
        let fleet = self.fleet.get().filter(|_| spec.share);
        if spec.share
            && fleet.is_none()
            && !self
                .unshared_logged
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            log::warn!(
                "oauth2 {}: `share` is on but this process has no sealed fleet tier (cache.redis.secret_file is read at start; restart to share): fetching alone",
                spec.token_url
            );
        }
        let result = match fleet {
            Some(fleet) => fleet.obtain(spec, refused.as_ref()).await,
            None => fetch_here(spec).await,
        };
        let now = SystemTime::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(m) => {
                let next = refresh_point(m.fetched_at, m.expires_at, spec.refresh_fraction);
                // A replacement for a refused token carries the chain on.
                let refusals = cached
                    .as_ref()
                    .filter(|c| c.refused)
                    .map_or(0, |c| c.refusals);
                if m.shared_by.is_none() {
                    count(&labels, "ok");
                    log::info!(
                        "oauth2 {}: fetched token {}{} (expires in {})",
                        spec.token_url,
                        m.secret.fingerprint(),
                        if fleet.is_some() {
                            " for the fleet"
                        } else {
                            ""
                        },
                        m.expires_at.map_or("unknown".into(), |e| format!(
                            "{}s",
                            e.duration_since(now).unwrap_or_default().as_secs()
                        ))
                    );
                }
                map.insert(
                    k,
                    Cached {
                        secret: Some(m.secret.clone()),
                        expires_at: m.expires_at,
                        next_attempt: next.max(now + Duration::from_secs(1)),
                        failures: 0,
                        fetched_at: m.fetched_at,
                        shared_by: m.shared_by,
                        refused: false,
                        refusals,
                        labels,
                    },
                );
                Ok((m.secret, m.expires_at))
            }
            Err(e) => {
                count(&labels, "failed");
                let failures = cached.as_ref().map_or(0, |c| c.failures) + 1;
                let keep = cached
                    .as_ref()
                    .filter(|c| c.secret.is_some() && c.expires_at.is_none_or(|x| x > now));
                // Requests wait on a source without a usable token: retry
                // soon, so a returning provider is used within max_retry.
                let cap = if keep.is_some() {
                    Duration::from_secs(300)
                } else {
                    spec.max_retry
                };
                let backoff = crate::clock::backoff(Duration::from_secs(2).min(cap), failures, cap);
                map.insert(
                    k,
                    Cached {
                        secret: keep.and_then(|c| c.secret.clone()),
                        expires_at: keep.and_then(|c| c.expires_at),
                        next_attempt: now + backoff,
                        failures,
                        fetched_at: keep.map_or(now, |c| c.fetched_at),
                        shared_by: keep.and_then(|c| c.shared_by.clone()),
                        refused: keep.is_some_and(|c| c.refused),
                        refusals: cached.as_ref().map_or(0, |c| c.refusals),
                        labels,
                    },
                );
                match keep.and_then(|c| Some((c.secret.clone()?, c.expires_at))) {
                    Some(kept) => {
                        log::warn!(
                        "oauth2 {}: refresh failed ({e}); the current token serves until it expires; retry in {}s",
                        spec.token_url,
                        backoff.as_secs()
                    );
                        Ok(kept)
                    }
                    None => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_earliest_stated_less_the_skew() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Duration::from_secs;
        // expires_in alone.
        assert_eq!(expiry(t0, None, None, Some(s(3600))), Some(t0 + s(3595)));
        // A JWT whose exp comes before fetch + expires_in wins.
        assert_eq!(
            expiry(t0, Some(t0 + s(3599)), None, Some(s(3600))),
            Some(t0 + s(3594))
        );
        assert_eq!(
            expiry(t0, None, Some(t0 + s(100)), Some(s(3600))),
            Some(t0 + s(95))
        );
        // A short lifetime loses a tenth, not 5 s.
        assert_eq!(expiry(t0, None, None, Some(s(10))), Some(t0 + s(9)));
        assert_eq!(expiry(t0, None, None, None), None);
        // A provider's absurd `expires_in` is unstated, not a panic.
        assert_eq!(expiry(t0, None, None, Some(s(u64::MAX))), None);
        assert_eq!(
            expiry(t0, None, Some(t0 + s(100)), Some(s(u64::MAX))),
            Some(t0 + s(95))
        );
    }
}

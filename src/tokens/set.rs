//! The tokens of one upstream, in failover order, with their live states.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::evidence::{Notice, Quota};
use super::injected::Injected;
use super::value::Secret;
use crate::config::TokenSpec;

/// What graceway currently believes about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Usable, and not close to expiry.
    Active,
    /// The upstream said the token is bad (`invalid_token`, or a 401/403
    /// confirmed by the probe or on a second path) since the last reload or
    /// successful probe.
    Rejected,
    /// A 401/403 without an error code: maybe the token, maybe the
    /// resource. Still used while the probe (or a second path) decides.
    Suspect,
    /// Usable, but expires within `expires_warning`.
    Expiring,
    /// Its quota is spent (429, or a 403 or answer saying 0 remaining) and
    /// `failover_on` lists 429: skipped until the vendor's reset.
    RateLimited,
    /// Past its expiry (`exp` claim or `expires_at`).
    Expired,
    /// Its source failed; there is no value to send.
    Unavailable,
}

impl TokenState {
    pub const ALL: [TokenState; 7] = [
        TokenState::Active,
        TokenState::Rejected,
        TokenState::Suspect,
        TokenState::RateLimited,
        TokenState::Expiring,
        TokenState::Expired,
        TokenState::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Rejected => "rejected",
            TokenState::Suspect => "suspect",
            TokenState::RateLimited => "rate-limited",
            TokenState::Expiring => "expiring",
            TokenState::Expired => "expired",
            TokenState::Unavailable => "unavailable",
        }
    }

    /// Whether requests may carry the token.
    pub fn usable(self) -> bool {
        matches!(
            self,
            TokenState::Active | TokenState::Expiring | TokenState::Suspect
        )
    }
}

/// One configured token. Built at load; after that only its flags change.
#[derive(Debug)]
pub struct Token {
    /// Position in the upstream's `tokens` list (failover order).
    pub index: usize,
    pub spec: TokenSpec,
    /// `sha256:xxxxxxxx`, or `unavailable` when the source failed.
    pub fingerprint: String,
    secret: Option<Secret>,
    /// Precomputed header value or query piece; `None` when unavailable.
    pub injected: Option<Injected>,
    pub expires_at: Option<SystemTime>,
    /// Why the source failed, when it did (never contains the value).
    pub unavailable_reason: Option<String>,
    /// Set by a 401/403, cleared by a reload (new `Token`) or a good probe.
    /// An atomic so that the request path can flip it without a lock.
    pub(super) rejected: AtomicBool,
    /// The status (401 or 403) of the last rejection.
    pub(super) rejected_status: AtomicU16,
    /// Unix seconds of the last request that carried this token (0 = never).
    last_used: AtomicU64,
    expires_warning: Duration,
    /// graceway renews this token itself (OAuth2, a command with
    /// `refresh`) and its renewals work: it is never `expiring` then, since
    /// no operator needs to act.
    pub renews_itself: bool,
    /// What the vendor last said about this token; see [`Evidence`].
    pub evidence: Evidence,
    /// The process's OAuth2 tokens, for a token an OAuth2 source minted
    /// (see [`Token::minted_by`]): its refusal is reported there.
    oauth2: Option<Arc<super::oauth2::OAuth2Tokens>>,
    /// The fleet ledger this token reports to (see [`Token::in_fleet`]).
    pub(super) fleet: Option<super::ledger::InFleet>,
    /// Where its current state came from, when the ledger is on.
    pub(super) learned: arc_swap::ArcSwapOption<super::ledger::Learned>,
}

/// What the vendor's answers said about one token beyond the status:
/// suspicion, the last rejection's words, the quota, a deprecation notice.
/// Written from the request path with relaxed atomics (and an `ArcSwap`
/// only when a value changes); read by `/status`, metrics and the state
/// watch.
#[derive(Debug)]
pub struct Evidence {
    /// Unix seconds of the first unconfirmed 401/403 (0 = not suspect).
    suspect_since: AtomicU64,
    /// A hash of the path that met it: a rejection on another path
    /// confirms (when no probe is configured).
    suspect_path: AtomicU64,
    /// Unconfirmed refusals in a row since the suspicion began (any answer
    /// below 400 ends the suspicion): `credentials.suspect_after` of them
    /// confirm it.
    suspect_refusals: std::sync::atomic::AtomicU32,
    /// The vendor's `error (error_description)` of the last rejection.
    detail: ArcSwapOption<String>,
    /// From rate-limit headers; -1 = not stated.
    quota_remaining: AtomicI64,
    quota_limit: AtomicI64,
    /// Unix seconds; 0 = not stated.
    quota_reset_at: AtomicU64,
    /// The last deprecation/sunset notice, with a hash of its raw headers
    /// so that an unchanged notice costs one comparison.
    notice: ArcSwapOption<(u64, Notice)>,
    /// Unix seconds until which the token is skipped (its quota is spent);
    /// 0 = not cooling.
    cool_until: AtomicU64,
    /// The upstream echoed this token's value back (logged once).
    reflected: AtomicBool,
}

impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            suspect_since: AtomicU64::new(0),
            suspect_path: AtomicU64::new(0),
            suspect_refusals: std::sync::atomic::AtomicU32::new(0),
            detail: ArcSwapOption::empty(),
            quota_remaining: AtomicI64::new(-1),
            quota_limit: AtomicI64::new(-1),
            quota_reset_at: AtomicU64::new(0),
            notice: ArcSwapOption::empty(),
            cool_until: AtomicU64::new(0),
            reflected: AtomicBool::new(false),
        }
    }
}

/// What a 401/403 without an error code did to a token's suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// The first such answer (or the first in a while): now suspect.
    First,
    /// The same path again: still only suspect.
    SamePath,
    /// Another path within the window: confirmed, the token is rejected.
    OtherPath,
}

/// A suspicion older than this starts over.
pub const SUSPECT_WINDOW_SECS: u64 = 300;

impl Evidence {
    /// Notes that the upstream echoed the token's value; true the first
    /// time (for one WARN per token and generation).
    pub fn reflected_first(&self) -> bool {
        !self.reflected.swap(true, Ordering::Relaxed)
    }

    pub fn is_suspect(&self) -> bool {
        self.suspect_since.load(Ordering::Relaxed) != 0
    }

    /// Skips the token until `until` (Unix seconds); true when it was not
    /// cooling already.
    pub fn cool_down(&self, until: u64) -> bool {
        self.cool_until.swap(until, Ordering::Relaxed) < crate::clock::unix_now()
    }

    /// Whether the token is in a quota cool-down at `now`.
    pub fn cooling(&self, now: SystemTime) -> bool {
        let until = self.cool_until.load(Ordering::Relaxed);
        until != 0 && until > crate::clock::unix(now)
    }

    /// When the cool-down ends, if one is running.
    pub fn cool_until(&self, now: SystemTime) -> Option<SystemTime> {
        self.cooling(now)
            .then(|| crate::clock::from_unix(self.cool_until.load(Ordering::Relaxed)))
    }

    /// Unix seconds since the token is suspect (0 = not suspect).
    pub fn suspect_since(&self) -> u64 {
        self.suspect_since.load(Ordering::Relaxed)
    }

    /// Refusals in a row of the current suspicion (0 when not suspect).
    pub fn suspect_refusals(&self) -> u32 {
        self.suspect_refusals.load(Ordering::Relaxed)
    }

    /// Records an unconfirmed 401/403 on the path with `path_hash`.
    pub fn suspect(&self, path_hash: u64, now: u64) -> Suspicion {
        let since = self.suspect_since.load(Ordering::Relaxed);
        if since == 0 || now.saturating_sub(since) > SUSPECT_WINDOW_SECS {
            self.suspect_path.store(path_hash, Ordering::Relaxed);
            self.suspect_since.store(now.max(1), Ordering::Relaxed);
            self.suspect_refusals.store(1, Ordering::Relaxed);
            return Suspicion::First;
        }
        self.suspect_refusals.fetch_add(1, Ordering::Relaxed);
        if self.suspect_path.load(Ordering::Relaxed) == path_hash {
            Suspicion::SamePath
        } else {
            Suspicion::OtherPath
        }
    }

    /// Clears a suspicion (an answer below 400, or a probe, showed the
    /// token works); true when it was set.
    pub fn clear_suspect(&self) -> bool {
        self.suspect_refusals.store(0, Ordering::Relaxed);
        self.suspect_since.swap(0, Ordering::Relaxed) != 0
    }

    pub fn set_detail(&self, detail: Option<String>) {
        self.detail.store(detail.map(Arc::new));
    }

    pub fn detail(&self) -> Option<Arc<String>> {
        self.detail.load_full()
    }

    pub fn observe_quota(&self, q: Quota, now: u64) {
        let as_i64 = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        self.quota_remaining
            .store(as_i64(q.remaining), Ordering::Relaxed);
        if q.limit.is_some() {
            self.quota_limit.store(as_i64(q.limit), Ordering::Relaxed);
        }
        if let Some(r) = q.reset_in {
            self.quota_reset_at.store(now + r, Ordering::Relaxed);
        }
    }

    /// (remaining, limit, reset at) as last stated.
    pub fn quota(&self) -> Option<(u64, Option<u64>, Option<SystemTime>)> {
        let remaining = self.quota_remaining.load(Ordering::Relaxed);
        if remaining < 0 {
            return None;
        }
        let limit = self.quota_limit.load(Ordering::Relaxed);
        let reset = self.quota_reset_at.load(Ordering::Relaxed);
        Some((
            remaining as u64,
            (limit >= 0).then_some(limit as u64),
            (reset > 0).then(|| crate::clock::from_unix(reset)),
        ))
    }

    /// Keeps a notice whose raw headers hash to `hash`, unless it is the
    /// one already kept; parses only then.
    /// True when the notice changed (it was parsed and stored).
    pub fn observe_notice(&self, hash: u64, parse: impl FnOnce() -> Notice) -> bool {
        if self.notice.load().as_ref().is_some_and(|n| n.0 == hash) {
            return false;
        }
        self.notice.store(Some(Arc::new((hash, parse()))));
        true
    }

    /// Sets the quota figures another replica observed (`reset_at` in Unix
    /// seconds).
    pub fn set_quota(&self, remaining: Option<u64>, limit: Option<u64>, reset_at: Option<u64>) {
        let as_i64 = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        self.quota_remaining
            .store(as_i64(remaining), Ordering::Relaxed);
        if limit.is_some() {
            self.quota_limit.store(as_i64(limit), Ordering::Relaxed);
        }
        if let Some(r) = reset_at {
            self.quota_reset_at.store(r, Ordering::Relaxed);
        }
    }

    /// Sets a notice another replica saw (hash 0: the first notice this
    /// replica's own answers carry replaces it, links and all).
    pub fn set_notice(&self, notice: Notice) {
        self.notice.store(Some(Arc::new((0, notice))));
    }

    pub fn notice(&self) -> Option<Arc<(u64, Notice)>> {
        self.notice.load_full()
    }

    /// Carries everything over from the same token in an older generation.
    fn inherit(&self, previous: &Evidence) {
        for (a, b) in [
            (&self.suspect_since, &previous.suspect_since),
            (&self.suspect_path, &previous.suspect_path),
            (&self.quota_reset_at, &previous.quota_reset_at),
            (&self.cool_until, &previous.cool_until),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in [
            (&self.quota_remaining, &previous.quota_remaining),
            (&self.quota_limit, &previous.quota_limit),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.detail.store(previous.detail.load_full());
        self.notice.store(previous.notice.load_full());
    }
}

impl Token {
    /// Ties a token of an OAuth2 source to the process's OAuth2 tokens: a
    /// refusal is reported there, and it renews itself while the source's
    /// fetches work. Other tokens are returned as they are.
    pub fn minted_by(mut self, minter: &Arc<super::oauth2::OAuth2Tokens>) -> Token {
        if let crate::config::SourceSpec::OAuth2(o) = &self.spec.source {
            if self.secret.is_some() {
                self.renews_itself = !minter.refresh_failing(o);
            }
            self.oauth2 = Some(minter.clone());
        }
        self
    }

    pub fn new(
        index: usize,
        spec: TokenSpec,
        secret: Result<(Secret, Injected, Option<SystemTime>), String>,
        expires_warning: Duration,
    ) -> Token {
        match secret {
            Ok((secret, injected, source_expiry)) => {
                let expires_at = spec
                    .expires_at
                    .or(source_expiry)
                    .or_else(|| super::value::jwt_expiry(secret.expose()));
                // An OAuth2 token's renewals are known once it is tied to
                // its minter (`minted_by`).
                let renews_itself = match &spec.source {
                    crate::config::SourceSpec::OAuth2(_) => true,
                    crate::config::SourceSpec::Command { refresh, .. } => refresh.is_some(),
                    _ => false,
                };
                Token {
                    index,
                    renews_itself,
                    spec,
                    fingerprint: secret.fingerprint(),
                    secret: Some(secret),
                    injected: Some(injected),
                    expires_at,
                    unavailable_reason: None,
                    rejected: AtomicBool::new(false),
                    rejected_status: AtomicU16::new(0),
                    last_used: AtomicU64::new(0),
                    expires_warning,
                    evidence: Evidence::default(),
                    oauth2: None,
                    fleet: None,
                    learned: Default::default(),
                }
            }
            Err(reason) => Token {
                index,
                renews_itself: false,
                expires_at: spec.expires_at,
                spec,
                fingerprint: "unavailable".into(),
                secret: None,
                injected: None,
                unavailable_reason: Some(reason),
                rejected: AtomicBool::new(false),
                rejected_status: AtomicU16::new(0),
                last_used: AtomicU64::new(0),
                expires_warning,
                evidence: Evidence::default(),
                oauth2: None,
                fleet: None,
                learned: Default::default(),
            },
        }
    }

    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    pub fn state(&self, now: SystemTime) -> TokenState {
        if self.injected.is_none() {
            return TokenState::Unavailable;
        }
        if self.rejected.load(Ordering::Relaxed) {
            return TokenState::Rejected;
        }
        match self.expires_at {
            Some(exp) if exp <= now => TokenState::Expired,
            _ if self.evidence.cooling(now) => TokenState::RateLimited,
            _ if self.evidence.is_suspect() => TokenState::Suspect,
            Some(exp) if !self.renews_itself && exp <= now + self.expires_warning => {
                TokenState::Expiring
            }
            _ => TokenState::Active,
        }
    }

    /// Marks the token rejected; true when this call changed the state (so
    /// the caller logs the transition once, not once per request). An
    /// OAuth2 token the upstream refused is fetched again at once.
    /// The fleet ledger hears of it (`evidence` says how it was known).
    pub fn mark_rejected(&self, status: u16, evidence: super::ledger::Evidence) -> bool {
        self.refused_to_minter();
        self.rejected_status.store(status, Ordering::Relaxed);
        self.evidence.clear_suspect();
        let changed = !self.rejected.swap(true, Ordering::Relaxed);
        self.publish(
            super::ledger::Finding::Rejected { status, evidence },
            changed,
        );
        changed
    }

    /// Tells the OAuth2 source that minted this token that the vendor
    /// refuses it (see [`super::oauth2::OAuth2Tokens::refused`]); nothing
    /// for other tokens.
    pub(super) fn refused_to_minter(&self) {
        if let (crate::config::SourceSpec::OAuth2(spec), Some(secret), Some(minter)) =
            (&self.spec.source, self.secret(), self.oauth2.as_ref())
        {
            minter.refused(spec, secret);
        }
    }

    /// Where this OAuth2 token came from (fetched here or shared by
    /// another replica); `None` for other tokens.
    pub fn minted_origin(&self) -> Option<super::oauth2::Origin> {
        match (&self.spec.source, self.secret(), self.oauth2.as_ref()) {
            (crate::config::SourceSpec::OAuth2(spec), Some(secret), Some(minter)) => {
                minter.origin(spec, secret)
            }
            _ => None,
        }
    }

    /// The status of the last rejection (401 or 403), 0 when none.
    pub fn rejected_status(&self) -> u16 {
        self.rejected_status.load(Ordering::Relaxed)
    }

    /// Clears a rejection (a probe succeeded with this token); true when
    /// this call changed the state.
    pub fn clear_rejected(&self) -> bool {
        self.evidence.clear_suspect();
        let was = self.rejected.swap(false, Ordering::Relaxed);
        if was {
            self.evidence.set_detail(None);
        }
        was
    }

    pub fn touch(&self, unix_secs: u64) {
        // Only write when the second changed: keeps the cache line shared
        // between cores under load.
        if self.last_used.load(Ordering::Relaxed) != unix_secs {
            self.last_used.store(unix_secs, Ordering::Relaxed);
        }
    }

    pub fn last_used(&self) -> Option<SystemTime> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            s => Some(crate::clock::from_unix(s)),
        }
    }

    /// A copy of this token for a new generation (same value, expiry and
    /// state); `None` when it has no value.
    pub fn carry_over(&self) -> Option<Token> {
        let (secret, injected) = (self.secret.clone()?, self.injected.clone()?);
        let t = Token::new(
            self.index,
            self.spec.clone(),
            Ok((secret, injected, self.expires_at)),
            self.expires_warning,
        );
        let t = match &self.oauth2 {
            Some(minter) => t.minted_by(minter),
            None => t,
        };
        t.inherit_state(self);
        Some(t)
    }

    /// Whether this token holds the same value as `other` (same fingerprint
    /// is not enough: compare the values themselves).
    pub fn same_value(&self, other: &Token) -> bool {
        self.secret == other.secret
    }

    /// Keeps the rejection of a previous token with the same value: a
    /// token-source refresh that did not change this token must not forget
    /// that the upstream refused it.
    pub fn inherit_state(&self, previous: &Token) {
        if self.same_value(previous) && previous.rejected.load(Ordering::Relaxed) {
            self.rejected.store(true, Ordering::Relaxed);
            self.rejected_status
                .store(previous.rejected_status(), Ordering::Relaxed);
        }
        self.last_used.store(
            previous.last_used.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if self.same_value(previous) {
            self.evidence.inherit(&previous.evidence);
            self.learned.store(previous.learned.load_full());
        }
    }
}

/// The tokens of one upstream in failover order.
#[derive(Debug, Default)]
pub struct TokenSet {
    pub tokens: Vec<Token>,
    /// How requests share them (`credentials.select`): see [`super::pool`].
    pub pool: super::pool::Pool,
}

impl TokenSet {
    /// The first usable token not in `tried` (a bit per token index).
    #[inline]
    pub fn pick(&self, tried: u64, now: SystemTime) -> Option<&Token> {
        self.tokens
            .iter()
            .find(|t| t.index < 64 && tried & (1 << t.index) == 0 && t.state(now).usable())
    }

    /// The auth breaker's `n`-th trial: successive trials cycle through the
    /// rejected tokens, so whichever the vendor takes back is found. No
    /// allocation: two passes over a short list.
    pub fn trial_token(&self, n: usize, now: SystemTime) -> Option<&Token> {
        let rejected = |t: &&Token| t.state(now) == TokenState::Rejected;
        let count = self.tokens.iter().filter(rejected).count();
        (count > 0)
            .then(|| self.tokens.iter().filter(rejected).nth(n % count))
            .flatten()
    }

    /// The rejected tokens in trial order from the `n`th (each once), for
    /// a fleet trial that moves to the next token when another replica
    /// tries one.
    pub fn trial_tokens(&self, n: usize, now: SystemTime) -> impl Iterator<Item = &Token> {
        let rejected: Vec<&Token> = self
            .tokens
            .iter()
            .filter(|t| t.state(now) == TokenState::Rejected)
            .collect();
        let count = rejected.len();
        (0..count).map(move |k| rejected[(n + k) % count])
    }

    /// Whether the tokens take part in the fleet ledger (their trials are
    /// the fleet's).
    pub fn in_fleet(&self) -> bool {
        self.tokens.iter().any(|t| t.ledger_id().is_some())
    }

    /// True when at least one token can be sent.
    pub fn any_usable(&self, now: SystemTime) -> bool {
        self.pick(0, now).is_some()
    }
}

#[cfg(test)]
mod tests;

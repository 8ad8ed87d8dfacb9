//! The tokens of one upstream, in failover order, with their live states.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::value::{Injected, Secret};
use crate::config::TokenSpec;

/// What graceway currently believes about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Usable, and not close to expiry.
    Active,
    /// The upstream answered 401/403 to it since the last reload or
    /// successful probe.
    Rejected,
    /// Usable, but expires within `expires_warning`.
    Expiring,
    /// Past its expiry (`exp` claim or `expires_at`).
    Expired,
    /// Its source failed; there is no value to send.
    Unavailable,
}

impl TokenState {
    pub const ALL: [TokenState; 5] = [
        TokenState::Active,
        TokenState::Rejected,
        TokenState::Expiring,
        TokenState::Expired,
        TokenState::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Rejected => "rejected",
            TokenState::Expiring => "expiring",
            TokenState::Expired => "expired",
            TokenState::Unavailable => "unavailable",
        }
    }

    /// Whether requests may carry the token.
    pub fn usable(self) -> bool {
        matches!(self, TokenState::Active | TokenState::Expiring)
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
    rejected: AtomicBool,
    /// The status (401 or 403) of the last rejection.
    rejected_status: AtomicU16,
    /// Unix seconds of the last request that carried this token (0 = never).
    last_used: AtomicU64,
    expires_warning: Duration,
}

impl Token {
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
                Token {
                    index,
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
                }
            }
            Err(reason) => Token {
                index,
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
            Some(exp) if exp <= now + self.expires_warning => TokenState::Expiring,
            _ => TokenState::Active,
        }
    }

    /// Marks the token rejected; true when this call changed the state (so
    /// the caller logs the transition once, not once per request).
    pub fn mark_rejected(&self, status: u16) -> bool {
        self.rejected_status.store(status, Ordering::Relaxed);
        !self.rejected.swap(true, Ordering::Relaxed)
    }

    /// The status of the last rejection (401 or 403), 0 when none.
    pub fn rejected_status(&self) -> u16 {
        self.rejected_status.load(Ordering::Relaxed)
    }

    /// Clears a rejection (a probe succeeded with this token); true when
    /// this call changed the state.
    pub fn clear_rejected(&self) -> bool {
        self.rejected.swap(false, Ordering::Relaxed)
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
            s => Some(UNIX_EPOCH + Duration::from_secs(s)),
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
    }
}

/// The tokens of one upstream in failover order.
#[derive(Debug, Default)]
pub struct TokenSet {
    pub tokens: Vec<Token>,
}

impl TokenSet {
    /// The first usable token not in `tried` (a bit per token index).
    #[inline]
    pub fn pick(&self, tried: u64, now: SystemTime) -> Option<&Token> {
        self.tokens
            .iter()
            .find(|t| t.index < 64 && tried & (1 << t.index) == 0 && t.state(now).usable())
    }

    /// True when at least one token can be sent.
    pub fn any_usable(&self, now: SystemTime) -> bool {
        self.pick(0, now).is_some()
    }
}

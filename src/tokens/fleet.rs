//! A token's part in the fleet ledger (`tokens::ledger` holds the words):
//! the findings it sends when this replica learns something, and how
//! another replica's finding is applied to it without being sent on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ledger::{Entry, Finding, InFleet, Learned, Outbox, TokenId};
use super::set::Token;

/// How long the fleet keeps quota figures at most (their window's reset
/// ends them sooner).
const USAGE_TTL_MS: u64 = 60_000;

/// How long the fleet keeps a deprecation or sunset notice; every replica
/// that meets it again renews it, and one that starts in the meantime
/// shows it before its own requests carry it.
const NOTICE_TTL_MS: u64 = 24 * 3600 * 1000;

impl Token {
    /// Keeps the quota the vendor stated (at `now`, Unix seconds); the
    /// fleet hears of it at most once a second.
    pub fn observe_quota(&self, q: super::evidence::Quota, now: u64) {
        self.evidence.observe_quota(q, now);
        if self.fleet.is_some() {
            self.publish(
                Finding::Usage {
                    remaining: q.remaining,
                    limit: q.limit,
                    reset_at: q.reset_in.map(|r| now + r),
                },
                false,
            );
        }
    }

    /// Keeps a deprecation or sunset notice (parsed only when its raw
    /// headers' `hash` changed); the fleet hears of a new one.
    pub fn observe_notice(&self, hash: u64, parse: impl FnOnce() -> super::evidence::Notice) {
        if self.evidence.observe_notice(hash, parse) && self.fleet.is_some() {
            if let Some(n) = self.evidence.notice() {
                self.publish(
                    Finding::Notice {
                        deprecated: n.1.deprecated,
                        deprecation_at: n.1.deprecation_at,
                        sunset_at: n.1.sunset_at,
                    },
                    true,
                );
            }
        }
    }

    /// The vendor accepts the token again: cleared, and the fleet ledger
    /// hears of it. True when it was rejected.
    pub fn recovered(&self, evidence: super::ledger::Evidence) -> bool {
        let was = self.clear_rejected();
        if was {
            self.publish(super::ledger::Finding::Recovered { evidence }, true);
        }
        was
    }

    /// The token's quota is spent until `until` (Unix seconds); true when
    /// no cool-down was running. The fleet ledger hears of a new one.
    pub fn cool_down(&self, until: u64) -> bool {
        let new = self.evidence.cool_down(until);
        if new {
            self.publish(super::ledger::Finding::CoolDown { until }, true);
        }
        new
    }

    /// Ties a token with a value to the fleet ledger: what this replica
    /// learns about it is sent to `outbox`, a rejection living
    /// `rejected_ttl` unless renewed.
    pub fn in_fleet(mut self, outbox: &Outbox, rejected_ttl: std::time::Duration) -> Token {
        if let Some(secret) = self.secret() {
            self.fleet = Some(InFleet {
                id: TokenId::of(secret),
                outbox: outbox.clone(),
                rejected_ttl_ms: rejected_ttl.as_millis() as u64,
                sent_ms: Default::default(),
            });
        }
        self
    }

    /// The token's name in the ledger, when it takes part.
    pub fn ledger_id(&self) -> Option<TokenId> {
        self.fleet.as_ref().map(|f| f.id)
    }

    /// Where the token's state came from last, when the ledger is on.
    pub fn learned(&self) -> Option<Arc<Learned>> {
        self.learned.load_full()
    }

    /// Sends a finding this replica reached: a `change` at once, the same
    /// finding again (a renewal) at most once a second.
    pub(super) fn publish(&self, finding: Finding, change: bool) {
        let Some(f) = &self.fleet else {
            return;
        };
        let now = crate::clock::unix_ms();
        let slot = &f.sent_ms[finding.slot() as usize];
        if !change && now.saturating_sub(slot.load(Ordering::Relaxed)) < 1000 {
            return;
        }
        slot.store(now, Ordering::Relaxed);
        let ttl_ms = match finding {
            Finding::Rejected { .. } | Finding::Recovered { .. } => f.rejected_ttl_ms,
            Finding::CoolDown { until } => (until * 1000).saturating_sub(now).max(1000),
            // Figures are worth something until their window resets.
            Finding::Usage { reset_at, .. } => reset_at
                .map_or(USAGE_TTL_MS, |r| (r * 1000).saturating_sub(now))
                .clamp(1000, USAGE_TTL_MS),
            Finding::Notice { .. } => NOTICE_TTL_MS,
        };
        f.outbox.send(f.id, finding, now, ttl_ms);
        if !finding.slot().is_state() {
            return;
        }
        self.learned.store(Some(Arc::new(Learned {
            origin: f.outbox.origin().to_string(),
            at_ms: now,
            local: true,
            finding,
        })));
    }

    /// Applies another replica's entry about this token, without sending
    /// it on. Returns whether it changed the token's state (a rejection,
    /// a recovery, a later cool-down).
    pub fn apply(&self, e: &Entry) -> bool {
        let changed = match e.finding {
            Finding::Rejected { status, .. } => {
                self.rejected_status.store(status, Ordering::Relaxed);
                self.evidence.clear_suspect();
                // A shared OAuth2 token another replica saw refused: this
                // replica takes the fleet's replacement without sending
                // the refused one again (`oauth2.share`).
                self.refused_to_minter();
                !self.rejected.swap(true, Ordering::Relaxed)
            }
            Finding::Recovered { .. } => self.clear_rejected(),
            Finding::CoolDown { until } => {
                let now = crate::clock::unix_ms() / 1000;
                until > now
                    && self
                        .evidence
                        .cool_until(std::time::SystemTime::now())
                        .is_none_or(|t| crate::clock::unix(t) < until)
                    && self.evidence.cool_down(until)
            }
            Finding::Usage {
                remaining,
                limit,
                reset_at,
            } => {
                self.evidence.set_quota(remaining, limit, reset_at);
                return true;
            }
            Finding::Notice {
                deprecated,
                deprecation_at,
                sunset_at,
            } => {
                let known = self.evidence.notice();
                let same = known.as_ref().is_some_and(|n| {
                    (n.1.deprecated, n.1.deprecation_at, n.1.sunset_at)
                        == (deprecated, deprecation_at, sunset_at)
                });
                if !same {
                    self.evidence.set_notice(super::evidence::Notice {
                        deprecated,
                        deprecation_at,
                        sunset_at,
                        links: Vec::new(),
                    });
                }
                return !same;
            }
        };
        self.learned.store(Some(Arc::new(Learned {
            origin: e.origin.clone(),
            at_ms: e.at_ms,
            local: false,
            finding: e.finding,
        })));
        changed
    }
}

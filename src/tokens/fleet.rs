//! A token's part in the fleet ledger (`tokens::ledger` holds the words):
//! the findings it sends when this replica learns something, and how
//! another replica's finding is applied to it without being sent on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ledger::{Entry, Finding, InFleet, Learned, Outbox, TokenId};
use super::set::Token;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Token {
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
        let now = now_ms();
        let slot = &f.sent_ms[finding.slot() as usize];
        if !change && now.saturating_sub(slot.load(Ordering::Relaxed)) < 1000 {
            return;
        }
        slot.store(now, Ordering::Relaxed);
        let ttl_ms = match finding {
            Finding::Rejected { .. } | Finding::Recovered { .. } => f.rejected_ttl_ms,
            Finding::CoolDown { until } => (until * 1000).saturating_sub(now).max(1000),
        };
        f.outbox.send(f.id, finding, now, ttl_ms);
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
                !self.rejected.swap(true, Ordering::Relaxed)
            }
            Finding::Recovered { .. } => self.clear_rejected(),
            Finding::CoolDown { until } => {
                let now = now_ms() / 1000;
                until > now
                    && self
                        .evidence
                        .cool_until(std::time::SystemTime::now())
                        .is_none_or(|t| crate::clock::unix(t) < until)
                    && self.evidence.cool_down(until)
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

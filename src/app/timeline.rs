//! The timeline: the last [`Timeline::CAPACITY`] state changes (token
//! states, breakers opening and closing, upstream states, vendor notices,
//! reloads), with their times and reasons, for `/status` (`timeline`) and
//! the status page.
//!
//! Written where those changes are already found once: the state watch's
//! diff (`control::webhook`, once a second) and a reload's result
//! ([`crate::app::App::reload`]). Never on the request path.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One state change, as `/status` writes it. Tokens are named by index and
/// fingerprint, never by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// RFC 3339 seconds, UTC.
    pub at: String,
    /// `upstream`, `health-breaker`, `auth-breaker`, `token`, `notice` or
    /// `reload`.
    pub kind: String,
    /// The upstream it concerns (`null` for a reload).
    pub upstream: Option<String>,
    pub token: Option<usize>,
    pub fingerprint: Option<String>,
    pub from: String,
    pub to: String,
    pub reason: Option<String>,
}

/// A bounded ring of [`Change`]s, oldest first.
///
/// Why a `Mutex<VecDeque>`: it is written by the control loop (about once
/// a second at most, only when something changed) and by a finished reload,
/// and read by `/status`; no request takes it, so a lock costs nothing
/// where it matters and keeps the ring simple.
#[derive(Debug, Default)]
pub struct Timeline {
    changes: Mutex<VecDeque<Change>>,
}

impl Timeline {
    /// How many changes are kept; the oldest goes first.
    pub const CAPACITY: usize = 64;

    pub fn record(&self, change: Change) {
        let mut ring = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        while ring.len() >= Self::CAPACITY {
            ring.pop_front();
        }
        ring.push_back(change);
    }

    /// The changes kept, oldest first.
    pub fn snapshot(&self) -> Vec<Change> {
        let ring = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, Timeline};

    fn change(n: usize) -> Change {
        Change {
            at: format!("2026-12-02T10:00:{:02}Z", n % 60),
            kind: "token".into(),
            upstream: Some("emoji".into()),
            token: Some(n),
            fingerprint: Some("sha256:3ca7c3e0".into()),
            from: "active".into(),
            to: "rejected".into(),
            reason: None,
        }
    }

    #[test]
    fn keeps_the_last_capacity_changes_oldest_first() {
        let t = Timeline::default();
        assert!(t.snapshot().is_empty());
        for n in 0..Timeline::CAPACITY + 5 {
            t.record(change(n));
        }
        let s = t.snapshot();
        assert_eq!(s.len(), Timeline::CAPACITY);
        assert_eq!(s[0].token, Some(5));
        assert_eq!(s.last().and_then(|c| c.token), Some(Timeline::CAPACITY + 4));
        assert!(s.windows(2).all(|w| w[0].token < w[1].token));
    }
}

//! One circuit breaker type with two uses per upstream:
//! - the **health** breaker, fed by timeouts, refused connections and 5xx
//!   answers (live and probe), opens after `health.open_after` in a row;
//! - the **auth** breaker, which opens when no token of the upstream is
//!   usable any more (every one rejected or expired).
//!
//! While open, requests are answered from the last-good cache at once. One
//! trial per backoff window (starting at `health.retry_after`, doubling up
//! to `health.max_retry_after`) may go to the upstream: a live request, or
//! the probe when one is configured. A success closes the breaker.
//!
//! Lock-free: every field is an atomic, read on the request path with
//! relaxed loads; transitions use swaps so each is logged once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::outcome::Reason;

#[derive(Debug)]
pub struct Breaker {
    open: AtomicBool,
    reason: AtomicU8,
    /// Unix ms when it opened.
    since_ms: AtomicU64,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// Unix ms before which no trial is granted.
    next_trial_ms: AtomicU64,
    backoff_ms: AtomicU64,
    /// Settings, atomics so that a reload can change them in place.
    base_ms: AtomicU64,
    max_ms: AtomicU64,
    open_after: AtomicU32,
}

impl Breaker {
    pub fn new(open_after: u32, retry_after: Duration, max_retry_after: Duration) -> Breaker {
        let base = retry_after.as_millis().max(1) as u64;
        Breaker {
            open: AtomicBool::new(false),
            reason: AtomicU8::new(0),
            since_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            next_trial_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(base),
            base_ms: AtomicU64::new(base),
            max_ms: AtomicU64::new((max_retry_after.as_millis() as u64).max(base)),
            open_after: AtomicU32::new(open_after.max(1)),
        }
    }

    /// Applies new settings (a reload); the current state is kept.
    pub fn configure(&self, open_after: u32, retry_after: Duration, max_retry_after: Duration) {
        let base = retry_after.as_millis().max(1) as u64;
        self.base_ms.store(base, Ordering::Relaxed);
        self.max_ms.store(
            (max_retry_after.as_millis() as u64).max(base),
            Ordering::Relaxed,
        );
        self.open_after.store(open_after.max(1), Ordering::Relaxed);
    }

    #[inline]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Why it is open.
    pub fn reason(&self) -> Option<Reason> {
        if self.is_open() {
            Reason::from_u8(self.reason.load(Ordering::Relaxed))
        } else {
            None
        }
    }

    pub fn since(&self) -> Option<SystemTime> {
        self.is_open()
            .then(|| UNIX_EPOCH + Duration::from_millis(self.since_ms.load(Ordering::Relaxed)))
    }

    /// Counts a failure; opens after `open_after` in a row. True when this
    /// call opened it.
    pub fn failure(&self, reason: Reason) -> bool {
        if self.is_open() {
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.open_after.load(Ordering::Relaxed) {
            return self.trip(reason);
        }
        false
    }

    /// Opens now (the auth breaker's input: no usable token left). True when
    /// this call opened it.
    pub fn trip(&self, reason: Reason) -> bool {
        self.reason.store(reason as u8, Ordering::Relaxed);
        if self.open.swap(true, Ordering::Relaxed) {
            return false;
        }
        let now = crate::clock::unix_ms();
        self.since_ms.store(now, Ordering::Relaxed);
        let base = self.base_ms.load(Ordering::Relaxed);
        self.backoff_ms.store(base, Ordering::Relaxed);
        self.next_trial_ms.store(now + base, Ordering::Relaxed);
        true
    }

    /// A success. True when this call closed it.
    #[inline]
    pub fn success(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if !self.is_open() {
            return false;
        }
        let closed = self.open.swap(false, Ordering::Relaxed);
        if closed {
            self.backoff_ms
                .store(self.base_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        closed
    }

    /// While open: grants at most one trial per backoff window, and doubles
    /// the window for the next one (up to the maximum).
    pub fn try_trial(&self) -> bool {
        let now = crate::clock::unix_ms();
        let next = self.next_trial_ms.load(Ordering::Relaxed);
        if now < next {
            return false;
        }
        let backoff =
            (self.backoff_ms.load(Ordering::Relaxed) * 2).min(self.max_ms.load(Ordering::Relaxed));
        if self
            .next_trial_ms
            .compare_exchange(next, now + backoff, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.backoff_ms.store(backoff, Ordering::Relaxed);
        true
    }

    /// The current backoff window (the pace of trials while open).
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.backoff_ms.load(Ordering::Relaxed))
    }

    /// When the next trial may go, while open.
    pub fn next_trial(&self) -> Option<SystemTime> {
        self.is_open()
            .then(|| UNIX_EPOCH + Duration::from_millis(self.next_trial_ms.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_streak_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(50), Duration::from_millis(200));
        assert!(!b.failure(Reason::Upstream5xx));
        b.success();
        assert!(!b.failure(Reason::Upstream5xx));
        assert!(!b.failure(Reason::Upstream5xx));
        assert!(b.failure(Reason::Upstream5xx), "third in a row opens");
        assert!(b.is_open());
        assert_eq!(b.reason(), Some(Reason::Upstream5xx));
        assert!(!b.failure(Reason::Upstream5xx), "already open");
        assert!(b.success());
        assert!(!b.is_open());
    }

    #[test]
    fn one_trial_per_window_with_doubling() {
        let b = Breaker::new(1, Duration::from_millis(40), Duration::from_millis(100));
        b.trip(Reason::UpstreamTimeout);
        assert!(!b.try_trial(), "no trial before retry_after");
        std::thread::sleep(Duration::from_millis(45));
        assert!(b.try_trial());
        assert!(!b.try_trial(), "one per window");
        std::thread::sleep(Duration::from_millis(45));
        assert!(!b.try_trial(), "the window doubled to 80ms");
        std::thread::sleep(Duration::from_millis(45));
        assert!(b.try_trial());
    }
}

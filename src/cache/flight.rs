//! Collapsed forwarding: one fetch per cache key in flight.
//!
//! The first request for a key that may be stored ([`Flights::join`])
//! leads: it goes to the vendor and holds a [`Lead`]. Requests for the
//! same key that arrive while it is in flight wait ([`Wait::landing`])
//! for what the lead's fetch came to ([`Landing`]):
//! - `Stored`: the answer was kept; a waiter whose own request picks that
//!   very copy (same `Vary`'d headers) is answered from it;
//! - `Degraded`: the vendor could not answer (a refusal, 5xx, timeout...
//!   after the lead's failover retry): each waiter is answered as the lead
//!   was, from its own copy or the 503, without a fetch of its own;
//! - `Alone`: the answer may not be shared (not a 200, `no-store`,
//!   `private`, `no-cache`, a stream, too big, holding a token value) or
//!   the fetch failed in a way not answered from copies: every waiter goes
//!   to the vendor itself; an error is never passed on as if it were an
//!   answer;
//! - `Abandoned`: the lead's request ended without saying (its client went
//!   away, which ends Pingora's upstream read): the waiters join again and
//!   one of them leads.
//!
//! A waiter waits at most `cache.coalesce.wait` and then goes itself.
//!
//! The table is sharded by the key's bits; a shard's mutex is held for one
//! hash-map operation, never across an await. Only a storable GET takes it
//! (twice: join and land). pingora-cache's `CacheLock` does the same job
//! for pingora-cache's storage, but its readers learn only that a writer
//! finished and then look the asset up; graceway's waiters also need the
//! lead's outcome (a degraded answer's reason, or "do not share"), which
//! the lock cannot carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::key::MemKey;
use super::CachedResponse;
use crate::outcome::Reason;

const SHARDS: usize = 16;

/// What a lead's fetch came to (see the module doc).
#[derive(Clone, Debug)]
pub enum Landing {
    /// Still in flight.
    Pending,
    Stored(Arc<CachedResponse>),
    Degraded(Reason),
    Alone,
    Abandoned,
}

struct Flight {
    tx: watch::Sender<Landing>,
    waiters: AtomicU32,
}

type Shard = Mutex<HashMap<MemKey, Arc<Flight>>>;

/// The keys in flight.
pub struct Flights {
    shards: Arc<[Shard]>,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// What [`Flights::join`] made of a request.
pub enum Join {
    /// No fetch of this key is in flight: this request's is the one.
    Lead(Lead),
    /// One is: wait for it.
    Wait(Wait),
}

impl Flights {
    fn shard(&self, key: &MemKey) -> &Shard {
        &self.shards[(key.high64() as usize) % SHARDS]
    }

    /// Leads the fetch of `key`, or waits for the one in flight.
    pub fn join(&self, key: MemKey) -> Join {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = shard.get(&key) {
            if matches!(*f.tx.borrow(), Landing::Pending) {
                f.waiters.fetch_add(1, Ordering::Relaxed);
                return Join::Wait(Wait {
                    rx: f.tx.subscribe(),
                });
            }
        }
        let flight = Arc::new(Flight {
            tx: watch::Sender::new(Landing::Pending),
            waiters: AtomicU32::new(0),
        });
        shard.insert(key, flight.clone());
        Join::Lead(Lead {
            key,
            flight,
            shards: self.shards.clone(),
            landed: false,
            fleet: None,
        })
    }

    /// Leads the fetch of `key` only when none is in flight (a background
    /// refresh: never waits, never doubles one).
    pub fn try_lead(&self, key: MemKey) -> Option<Lead> {
        {
            let shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
            if shard
                .get(&key)
                .is_some_and(|f| matches!(*f.tx.borrow(), Landing::Pending))
            {
                return None;
            }
        }
        match self.join(key) {
            Join::Lead(l) => Some(l),
            Join::Wait(_) => None,
        }
    }

    /// Fetches in flight (for tests and `/status`).
    pub fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

/// The right (and duty) to fetch a key for everyone waiting on it. Dropped
/// without [`Lead::land`], its waiters hear `Abandoned`.
pub struct Lead {
    key: MemKey,
    flight: Arc<Flight>,
    shards: Arc<[Shard]>,
    landed: bool,
    /// The fleet's fetch lock of the key, when this replica holds it
    /// (`cache.coalesce.fleet`), with the TTL its copy is written under.
    fleet: Option<(super::fleet::fetch::Hold, Duration)>,
}

impl Lead {
    /// Requests waiting on this fetch now.
    pub fn waiters(&self) -> u32 {
        self.flight.waiters.load(Ordering::Relaxed)
    }

    /// Ties the fleet's fetch lock of the key to this fetch: released as
    /// it lands, with its copy written first when one was kept.
    pub fn hold_fleet(&mut self, hold: super::fleet::fetch::Hold, ttl: Duration) {
        self.fleet = Some((hold, ttl));
    }

    /// Says what the fetch came to, and takes the key out of flight, so
    /// the next request for it starts afresh.
    pub fn land(mut self, landing: Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        if let Some((hold, ttl)) = self.fleet.take() {
            let copy = match &landing {
                Landing::Stored(c) => Some(c.clone()),
                _ => None,
            };
            hold.release(copy, ttl);
        }
        {
            let shard = &self.shards[(self.key.high64() as usize) % SHARDS];
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            if shard
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                shard.remove(&self.key);
            }
        }
        self.flight.tx.send_replace(landing);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.finish(Landing::Abandoned);
    }
}

/// A request waiting on another's fetch.
pub struct Wait {
    rx: watch::Receiver<Landing>,
}

impl Wait {
    /// The lead's landing, or `None` after `limit` (the waiter goes itself).
    pub async fn landing(mut self, limit: Duration) -> Option<Landing> {
        let landed = self.rx.wait_for(|l| !matches!(l, Landing::Pending));
        match tokio::time::timeout(limit, landed).await {
            Ok(Ok(l)) => Some(l.clone()),
            // The sender is the lead's flight, dropped only after landing.
            Ok(Err(_)) => Some(Landing::Abandoned),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> MemKey {
        MemKey::for_tests(n)
    }

    #[tokio::test]
    async fn the_first_leads_the_rest_wait_and_hear_the_landing() {
        let f = Flights::default();
        let Join::Lead(lead) = f.join(key(1)) else {
            panic!("the first request must lead")
        };
        let waits: Vec<Wait> = (0..3)
            .map(|_| match f.join(key(1)) {
                Join::Wait(w) => w,
                Join::Lead(_) => panic!("a second lead while one is in flight"),
            })
            .collect();
        assert_eq!(lead.waiters(), 3);
        // Another key is its own flight.
        assert!(matches!(f.join(key(2)), Join::Lead(_)));
        lead.land(Landing::Degraded(Reason::Upstream5xx));
        for w in waits {
            let l = w.landing(Duration::from_secs(5)).await;
            assert!(matches!(l, Some(Landing::Degraded(Reason::Upstream5xx))));
        }
        // Landed: the next request leads again.
        assert!(matches!(f.join(key(1)), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_dropped_lead_is_abandoned_and_a_waiter_may_lead() {
        let f = Flights::default();
        let lead = f.join(key(7));
        let Join::Wait(w) = f.join(key(7)) else {
            panic!("must wait")
        };
        drop(lead);
        assert!(matches!(
            w.landing(Duration::from_secs(5)).await,
            Some(Landing::Abandoned)
        ));
        assert_eq!(f.in_flight(), 0);
        assert!(matches!(f.join(key(7)), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_limit() {
        let f = Flights::default();
        let _lead = f.join(key(3));
        let Join::Wait(w) = f.join(key(3)) else {
            panic!("must wait")
        };
        assert!(w.landing(Duration::from_millis(20)).await.is_none());
        assert!(f.try_lead(key(3)).is_none(), "still in flight");
    }
}

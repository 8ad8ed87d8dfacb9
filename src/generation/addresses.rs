//! Every address of an upstream's name: requests go round robin over the
//! addresses that accept connections (Pingora's load-balancing crate,
//! `RoundRobin` over static backends), and a failed connect moves the
//! request to the next address before it counts against the health
//! breaker. An address that refused or timed out a connect is skipped for
//! [`HOLD`]; when every address is held, all are tried again.
//!
//! The list is the name's lookup at load, then every `dns_refresh` and
//! after a connect failed on every address (`control::Resolver`); each new
//! list starts with no address held.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;

/// How long an address that failed a connect is skipped.
pub const HOLD: Duration = Duration::from_secs(10);

/// The addresses of one upstream and which of them are held.
pub struct Addresses {
    addrs: Vec<SocketAddr>,
    /// Unix ms until which each address (same index) is skipped.
    held_until: Box<[AtomicU64]>,
    lb: Option<LoadBalancer<RoundRobin>>,
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Addresses {
    /// `addrs` in the resolver's order, duplicates dropped; at least one.
    pub fn new(mut addrs: Vec<SocketAddr>) -> Addresses {
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(*a));
        let lb = if addrs.len() > 1 {
            LoadBalancer::try_from_iter(addrs.iter().copied()).ok()
        } else {
            None
        };
        Addresses {
            held_until: addrs.iter().map(|_| AtomicU64::new(0)).collect(),
            addrs,
            lb,
        }
    }

    pub fn all(&self) -> &[SocketAddr] {
        &self.addrs
    }

    fn index(&self, a: &SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|x| x == a)
    }

    fn held(&self, i: usize, now_ms: u64) -> bool {
        self.held_until[i].load(Ordering::Relaxed) > now_ms
    }

    /// The next address for a request that has already failed to connect
    /// to those in `tried` (a bit per index): round robin over the ones
    /// not held, else over the untried ones, else the first.
    pub fn pick(&self, tried: u64) -> (usize, SocketAddr) {
        let Some(lb) = &self.lb else {
            return (0, self.addrs[0]);
        };
        let now = crate::clock::unix_ms();
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let n = self.addrs.len();
        let choose = |strict: bool| {
            lb.select_with(b"", n, |b, _| {
                b.addr
                    .as_inet()
                    .and_then(|a| self.index(a))
                    .is_some_and(|i| untried(i) && !(strict && self.held(i, now)))
            })
            .and_then(|b| b.addr.as_inet().copied())
        };
        match choose(true).or_else(|| choose(false)) {
            Some(a) => (self.index(&a).unwrap_or(0), a),
            None => (0, self.addrs[0]),
        }
    }

    /// A connect to address `i` failed: skip it for [`HOLD`]. True when it
    /// was not held already (a change worth a log line).
    pub fn connect_failed(&self, i: usize) -> bool {
        let Some(h) = self.held_until.get(i) else {
            return false;
        };
        let now = crate::clock::unix_ms();
        h.swap(now + HOLD.as_millis() as u64, Ordering::Relaxed) <= now
    }

    /// Whether an address not in `tried` remains.
    pub fn untried(&self, tried: u64) -> bool {
        (0..self.addrs.len()).any(|i| i >= 64 || tried & (1 << i) == 0)
    }

    /// How many addresses are held now.
    pub fn held_count(&self) -> usize {
        let now = crate::clock::unix_ms();
        (0..self.addrs.len()).filter(|i| self.held(*i, now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_over_addresses_not_held_then_untried_ones() {
        let x = Addresses::new(vec![a("127.0.0.1:1"), a("127.0.0.2:1"), a("127.0.0.1:1")]);
        assert_eq!(x.all().len(), 2, "duplicates dropped");
        let picks: std::collections::HashSet<_> = (0..4).map(|_| x.pick(0).1).collect();
        assert_eq!(picks.len(), 2, "both addresses used");
        assert!(x.connect_failed(1));
        assert!(!x.connect_failed(1), "already held");
        assert_eq!(x.held_count(), 1);
        for _ in 0..4 {
            assert_eq!(x.pick(0), (0, a("127.0.0.1:1")));
        }
        // Having failed on 0 too, the request is sent to the held one
        // rather than nowhere; having tried both, none is untried.
        assert_eq!(x.pick(0b01).0, 1);
        assert!(x.untried(0b01));
        assert!(!x.untried(0b11));
        let one = Addresses::new(vec![a("127.0.0.1:9")]);
        assert_eq!(one.pick(0b1), (0, a("127.0.0.1:9")));
    }
}

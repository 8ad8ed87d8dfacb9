//! How requests share an upstream's tokens: the rules a choice can follow
//! (`credentials.select`, `credentials.sticky_header`; applied by
//! `tokens::choice`), why an attempt carries its token, and the little a
//! set keeps for its choices (the rotation counter, the pick counters).
//! Which rule a request's attempt uses is `proxy::choose`'s decision.

use std::sync::atomic::AtomicUsize;

/// A rule for choosing among the usable tokens a request has not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The first in configured order (`failover`).
    Ordered,
    /// The `n`-th (modulo their number): successive `n` rotate over them
    /// evenly, whichever are usable (`round_robin`).
    Rotate(usize),
    /// The first after token `index` in configured order, wrapping
    /// around: a round-robin request's retry takes the next in turn.
    After(usize),
    /// The one with the most quota left (`most_remaining`); see
    /// [`super::choice::remaining`].
    MostRemaining,
    /// The one whose weight for this key is highest (rendezvous hashing,
    /// `sticky_header`): a key stays on its token while that token is
    /// usable, and when it is not only the keys on it move.
    Rendezvous(u64),
}

/// Why an attempt carries its token: the access log's `pick=` and the
/// `pick` label of `graceway_token_picks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pick {
    /// No token was chosen.
    #[default]
    None,
    Failover,
    RoundRobin,
    MostRemaining,
    Sticky,
    /// The retry after a refusal (a usable token not tried yet).
    Retry,
    /// The auth breaker's trial of a rejected token.
    Trial,
}

impl Pick {
    pub fn as_str(self) -> &'static str {
        match self {
            Pick::None => "-",
            Pick::Failover => "failover",
            Pick::RoundRobin => "round_robin",
            Pick::MostRemaining => "most_remaining",
            Pick::Sticky => "sticky",
            Pick::Retry => "retry",
            Pick::Trial => "trial",
        }
    }
}

/// What a token set keeps for its choices: lives and dies with the
/// generation (a reload restarts the rotation, which is harmless).
#[derive(Debug, Default)]
pub struct Pool {
    /// `round_robin`'s turn: one relaxed `fetch_add` per first attempt.
    pub rotation: AtomicUsize,
    /// `graceway_token_picks_total` and the queue's series.
    pub series: crate::metrics::pool::PoolSeries,
}

impl Pool {
    pub fn new(upstream: &str, tokens: usize) -> Pool {
        Pool {
            rotation: AtomicUsize::new(0),
            series: crate::metrics::pool::PoolSeries::new(upstream, tokens),
        }
    }

    /// Counts an attempt that carried token `index` for `pick`.
    pub fn picked(&self, index: usize, pick: Pick) {
        if pick != Pick::None {
            self.series.picked(index, pick as usize - 1, pick.as_str());
        }
    }
}

/// A key's weight for token `index` (rendezvous hashing): the
/// SplitMix64 finalizer over the key mixed with the index, so every
/// replica with the same token list puts a key on the same token.
pub fn weight(key: u64, index: usize) -> u64 {
    let mut z = key ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A sticky header's value as a rendezvous key: SipHash-1-3 under fixed
/// keys, so the key is the same on every replica and after a restart.
pub fn sticky_key(value: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6772_6163_6577_6179, 0x7374_6963_6b79);
    h.write(value);
    h.finish()
}

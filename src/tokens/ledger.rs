//! The fleet ledger's words: what one replica learned about a token, in the
//! form every replica sharing the fleet tier reads. `cache::ledger` moves
//! them through Redis; `app::ledger` applies what the others learned.
//!
//! A token is named by the full SHA-256 of its value ([`TokenId`]): every
//! replica configured with that value computes the same name, and one
//! without it cannot name the token, so the ledger can take a configured
//! token out of rotation (or put it back once the vendor takes it again)
//! but never bring a value into use. The 8-hex fingerprint people see is
//! too short to be a name here.
//!
//! Records are serde (postcard) behind a version: [`Record::V1`] is
//! written; a future version adds a variant and keeps reading this one.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::value::Secret;

/// A token's name in the ledger: SHA-256 of its value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenId(pub [u8; 32]);

impl TokenId {
    pub fn of(secret: &Secret) -> TokenId {
        TokenId(Sha256::digest(secret.expose().as_bytes()).into())
    }

    /// Lower-case hex, as it appears in Redis keys.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        crate::config::push_hex(&mut s, &self.0);
        s
    }
}

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first bytes suffice to tell two apart in a test failure.
        write!(
            f,
            "TokenId({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// How a replica knew.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// The vendor said the token is bad (`invalid_token`, an explicit code).
    VendorSaid,
    /// A 401/403 without a code on a second path within the window.
    SecondPath,
    /// `credentials.suspect_after` such refusals in a row.
    Streak,
    /// The probe (a path the token is known to reach) was refused, or
    /// accepted it again.
    Probe,
    /// An auth-breaker trial (a request or the background trial) was
    /// accepted.
    Trial,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::VendorSaid => "vendor-said",
            Evidence::SecondPath => "second-path",
            Evidence::Streak => "streak",
            Evidence::Probe => "probe",
            Evidence::Trial => "trial",
        }
    }
}

/// What was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finding {
    /// The vendor refuses the token (401 or 403).
    Rejected { status: u16, evidence: Evidence },
    /// The vendor accepts a token it had refused.
    Recovered { evidence: Evidence },
    /// The token's quota is spent until `until` (Unix seconds).
    CoolDown { until: u64 },
    /// The quota the vendor's rate-limit headers stated last (the newest
    /// observation in the fleet wins): requests left, the limit, when the
    /// window resets (Unix seconds); a figure the vendor left out is
    /// `None`.
    Usage {
        remaining: Option<u64>,
        limit: Option<u64>,
        reset_at: Option<u64>,
    },
    /// The vendor's deprecation or sunset notice for the token's requests
    /// (RFC 9745 `Deprecation`, RFC 8594 `Sunset`; times in Unix seconds).
    /// The `Link` targets stay with the replica that saw them: the ledger
    /// holds no text the vendor chose.
    Notice {
        deprecated: bool,
        deprecation_at: Option<u64>,
        sunset_at: Option<u64>,
    },
}

/// Findings that replace each other: a token's acceptance, its quota
/// cool-down, the quota figures, a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    State,
    Quota,
    Usage,
    Notice,
}

impl Slot {
    pub const ALL: [Slot; 4] = [Slot::State, Slot::Quota, Slot::Usage, Slot::Notice];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::State => "state",
            Slot::Quota => "quota",
            Slot::Usage => "usage",
            Slot::Notice => "notice",
        }
    }

    /// Whether a finding in this slot is the token's state as `/status`
    /// names its origin (acceptance or cool-down); figures and notices
    /// travel without changing that.
    pub fn is_state(self) -> bool {
        matches!(self, Slot::State | Slot::Quota)
    }
}

impl Finding {
    pub fn slot(&self) -> Slot {
        match self {
            Finding::Rejected { .. } | Finding::Recovered { .. } => Slot::State,
            Finding::CoolDown { .. } => Slot::Quota,
            Finding::Usage { .. } => Slot::Usage,
            Finding::Notice { .. } => Slot::Notice,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Finding::Rejected { .. } => "rejected",
            Finding::Recovered { .. } => "recovered",
            Finding::CoolDown { .. } => "cool-down",
            Finding::Usage { .. } => "usage",
            Finding::Notice { .. } => "notice",
        }
    }
}

/// One finding with who learned it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub token: TokenId,
    /// Unix milliseconds when the replica learned it.
    pub at_ms: u64,
    /// The replica (`cache.redis.replica`).
    pub origin: String,
    pub finding: Finding,
    /// How long the fleet keeps it (milliseconds): a rejection lives for
    /// the auth breaker's longest window unless renewed, so a wrong
    /// verdict heals; a cool-down until its end.
    pub ttl_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum Record {
    V1(Entry),
}

/// The record for Redis.
pub fn encode(e: &Entry) -> Vec<u8> {
    postcard::to_allocvec(&RecordRef::V1(e)).unwrap_or_default()
}

/// Serializes like [`Record`] without cloning the entry.
#[derive(Serialize)]
enum RecordRef<'a> {
    V1(&'a Entry),
}

/// An entry read back; `None` for anything that is not a record of a known
/// version (never panics). Whoever can write Redis chooses the replica
/// name it carries, and that name reaches log lines and `graceway status`:
/// one longer than 256 bytes or holding a control character (a newline, a
/// terminal escape) is refused.
pub fn decode(b: &[u8]) -> Option<Entry> {
    match postcard::from_bytes::<Record>(b).ok()? {
        Record::V1(e) if e.origin.len() <= 256 && !e.origin.chars().any(char::is_control) => {
            Some(e)
        }
        Record::V1(_) => None,
    }
}

/// Where a replica's findings go: the fleet tier's ledger queue. Sending
/// never waits (a full queue drops the finding and counts it). Each token
/// sends a change at once and a renewal of the same finding at most once
/// a second (see `Token::publish`), so a refusal storm is one record.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Entry>,
    origin: Arc<str>,
}

impl Outbox {
    pub fn new(origin: &str, capacity: usize) -> (Outbox, mpsc::Receiver<Entry>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let out = Outbox {
            tx,
            origin: origin.into(),
        };
        (out, rx)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Queues `finding` about `token`, learned at `at_ms`.
    pub fn send(&self, token: TokenId, finding: Finding, at_ms: u64, ttl_ms: u64) {
        let e = Entry {
            token,
            at_ms,
            origin: self.origin.to_string(),
            finding,
            ttl_ms,
        };
        if self.tx.try_send(e).is_err() {
            // Counted with the findings Redis did not take.
            crate::metrics::fleet_metrics()
                .ledger_findings_total
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

/// Where a token's current state came from, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The replica that learned it (this one's own name when local).
    pub origin: String,
    pub at_ms: u64,
    /// Learned here rather than read from the fleet.
    pub local: bool,
    pub finding: Finding,
}

/// A token's tie to the ledger: its name, the queue, how long its
/// rejection lives, and when each slot was last sent (renewals are sent at
/// most once a second).
#[derive(Debug)]
pub struct InFleet {
    pub(super) id: TokenId,
    pub(super) outbox: Outbox,
    pub(super) rejected_ttl_ms: u64,
    pub(super) sent_ms: [AtomicU64; 4],
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(finding: Finding) -> Entry {
        Entry {
            token: TokenId::of(&Secret::parse("tok-primary-value").unwrap()),
            at_ms: 1_790_000_000_123,
            origin: "replica-a/42".into(),
            finding,
            ttl_ms: 30_000,
        }
    }

    #[test]
    fn records_round_trip_and_anything_else_is_refused() {
        for f in [
            Finding::Rejected {
                status: 401,
                evidence: Evidence::VendorSaid,
            },
            Finding::Recovered {
                evidence: Evidence::Trial,
            },
            Finding::CoolDown {
                until: 1_790_000_060,
            },
            Finding::Usage {
                remaining: Some(7),
                limit: None,
                reset_at: Some(1_790_000_010),
            },
            Finding::Notice {
                deprecated: true,
                deprecation_at: None,
                sunset_at: Some(1_800_000_000),
            },
        ] {
            let e = entry(f);
            let b = encode(&e);
            assert_eq!(b[0], 0, "version 1 is the first variant");
            assert_eq!(decode(&b), Some(e.clone()));
            // Every truncation and a trailing byte's absence or presence
            // never panic; a cut record never decodes.
            for n in 0..b.len() {
                assert_eq!(decode(&b[..n]), None, "{n} of {} bytes", b.len());
            }
            let mut unknown = b.clone();
            unknown[0] = 7;
            assert_eq!(decode(&unknown), None, "an unknown version");
        }
        // A replica name that would forge a log line or move a terminal's
        // cursor is refused.
        for origin in ["a\nFAKE LOG LINE", "\u{1b}[2J", &"r".repeat(257)] {
            let mut e = entry(Finding::Recovered {
                evidence: Evidence::Probe,
            });
            e.origin = origin.to_string();
            assert_eq!(decode(&encode(&e)), None, "{origin:?}");
        }
    }

    #[test]
    fn a_token_is_named_by_its_whole_digest_never_its_value() {
        let s = Secret::parse("tok-primary-value").unwrap();
        let id = TokenId::of(&s);
        assert_eq!(id.hex().len(), 64);
        assert_ne!(
            id,
            TokenId::of(&Secret::parse("tok-standby-value").unwrap())
        );
        let b = encode(&entry(Finding::Recovered {
            evidence: Evidence::Probe,
        }));
        assert!(!b.windows(8).any(|w| w == b"tok-prim"));
        // The displayed fingerprint is a prefix of the same digest: the
        // ledger's name holds all of it.
        let fp = s.fingerprint();
        assert!(
            id.hex().starts_with(fp.trim_start_matches("sha256:")),
            "{fp}"
        );
        assert_eq!(format!("{id:?}").len(), "TokenId(01234567..)".len());
    }

    #[test]
    fn findings_fill_their_slot() {
        let r = Finding::Rejected {
            status: 403,
            evidence: Evidence::Streak,
        };
        assert_eq!(r.slot(), Slot::State);
        assert_eq!(
            Finding::Recovered {
                evidence: Evidence::Probe
            }
            .slot(),
            Slot::State
        );
        assert_eq!(Finding::CoolDown { until: 1 }.slot(), Slot::Quota);
        let usage = Finding::Usage {
            remaining: None,
            limit: Some(100),
            reset_at: None,
        };
        assert_eq!(usage.slot(), Slot::Usage);
        // Every slot has its own key suffix, and only acceptance and
        // cool-down are the token's state.
        let names: std::collections::HashSet<_> = Slot::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), Slot::ALL.len());
        assert!(!usage.slot().is_state() && Slot::Quota.is_state());
    }

    proptest::proptest! {
        /// The decoder reads what another process (or an intruder with
        /// write access to Redis) wrote: random bytes and mutated records
        /// never panic, and whatever decodes is a whole entry again.
        #[test]
        fn fuzz_ledger_records_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flips in proptest::collection::vec((0usize..128, proptest::prelude::any::<u8>()), 0..6),
        ) {
            let _ = decode(&bytes);
            let mut b = encode(&entry(Finding::Rejected { status: 403, evidence: Evidence::SecondPath }));
            for (at, v) in flips {
                let i = at % b.len();
                b[i] = v;
            }
            if let Some(e) = decode(&b) {
                proptest::prop_assert_eq!(decode(&encode(&e)), Some(e));
            }
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dropped = || {
            crate::metrics::fleet_metrics()
                .ledger_findings_total
                .with_label_values(&["dropped"])
                .get()
        };
        let before = dropped();
        let (out, mut rx) = Outbox::new("r1", 1);
        let id = TokenId([7; 32]);
        out.send(id, Finding::CoolDown { until: 5 }, 1, 1000);
        out.send(id, Finding::CoolDown { until: 6 }, 2, 1000);
        assert!(dropped() > before, "the drop is counted");
        let got = rx.try_recv().unwrap();
        assert_eq!((got.origin.as_str(), got.at_ms), ("r1", 1));
    }
}

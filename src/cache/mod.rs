//! The last-good cache: the newest 200 answer per upstream, path, query and
//! `Vary`'d request headers, kept to answer when the upstream turns the
//! token away or fails.
//!
//! Three tiers, all behind this module:
//! - memory ([`Cache`]): a moka cache weighted by the memory a copy holds
//!   (key, headers, the body's allocation size class and a measured
//!   per-entry overhead, see [`stored::weigh`]). graceway keeps its own
//!   byte counter and runs moka's pending evictions as soon as it passes the
//!   budget, so the memory held never exceeds `cache.memory_bytes` by more
//!   than the one copy being inserted.
//!
//!   Scan resistance is graceway's own ([`Cache::admit`]): once the tier is
//!   half full, a key is kept only when it is asked for a second time (a
//!   doorkeeper of recently seen key hashes). moka's TinyLFU alone did not
//!   protect copies that were popular before a scan (measured: 0 of 50
//!   survived 120,651 one-off paths in 8 MiB), for two reasons in moka
//!   0.12: its frequency sketch is switched on only when the cache reaches
//!   half its capacity, so hits before that are never counted, and for a
//!   weighted cache the sketch is sized from the entry count at that moment
//!   (small), so one-off keys collide up to the counts of popular ones.
//! - persist ([`persist`]): an embedded redb file that mirrors the memory
//!   tier off the request path and refills it at start, so a graceway
//!   restarted in the middle of an outage still has copies to serve.
//! - fleet ([`fleet`], optional): Redis or Redis Cluster, shared by every
//!   replica; written off the request path, read on a local miss when a
//!   degraded answer is needed (bounded by `cache.redis.timeout`).
//!
//! [`Cache`] owns all three: the proxy hands a fresh copy to
//! [`Cache::keep`] (memory, persist file, fleet) and asks
//! [`Cache::lookup`] then, for a degraded answer, [`Cache::fill_from_fleet`];
//! it never talks to a tier itself. How long a copy is fresh comes from
//! pingora-cache's filters (`s-maxage`, `max-age`, `Expires`; see
//! [`stored::fresh_for`]).
//!
//! Keys ([`key`]): the memory tier finds a request's copy by a keyed
//! 128-bit SipHash ([`MemKey`], per request); the persist file and Redis
//! keep it under SHA-256 digests ([`StoreKey`], computed only when a copy
//! is kept or a tier outside the process is read). Records ([`record`])
//! are versioned and go through serde.

pub mod fleet;
pub mod flight;
mod key;
pub mod ledger;
mod migrate;
pub mod oauth2;
pub mod persist;
pub mod record;
mod restore;
pub mod stored;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use moka::notification::RemovalCause;
use pingora::http::RequestHeader;

use crate::generation::UpstreamStatus;
use crate::metrics::metrics;
pub use key::{key_of, MemKey, StoreKey};
pub use stored::{CachedResponse, Recorded};

/// What a memory key holds.
#[derive(Clone)]
enum Slot {
    /// A copy, under a request's key.
    Copy(Arc<CachedResponse>),
    /// For a response with `Vary`: the request headers that pick the copy.
    Vary(Arc<[HeaderName]>),
    /// A copy read from the persist file that no request has asked for
    /// yet, under `Keyer::stored` of its [`StoreKey`] (the request's key
    /// cannot be known without its path; see [`Cache::find_loaded`]).
    Loaded(Arc<CachedResponse>),
}

impl Slot {
    fn weight(&self) -> u32 {
        let w = match self {
            Slot::Copy(c) | Slot::Loaded(c) => c.weight as usize,
            Slot::Vary(names) => {
                stored::ENTRY_OVERHEAD
                    + std::mem::size_of::<MemKey>()
                    + names.iter().map(|n| n.as_str().len() + 24).sum::<usize>()
            }
        };
        w.min(u32::MAX as usize) as u32
    }

    fn copy(&self) -> Option<&Arc<CachedResponse>> {
        match self {
            Slot::Copy(c) | Slot::Loaded(c) => Some(c),
            Slot::Vary(_) => None,
        }
    }
}

/// Where a copy being kept goes in every tier: its memory keys and its
/// [`StoreKey`] (from [`Cache::capture_key`]).
pub struct Key {
    primary: MemKey,
    variant: Option<(Arc<[HeaderName]>, MemKey)>,
    store: StoreKey,
}

/// Slots of the admission doorkeeper (128 KiB of key hashes).
const DOORKEEPER_SLOTS: usize = 1 << 14;

/// Slots of the table of copies kept lately (128 KiB, see
/// [`Cache::kept_within`]); each holds a 24-bit tag of the key and the
/// keeping time in milliseconds (40 bits, 34 years from the cache's start).
const RECENT_SLOTS: usize = 1 << 14;
const MS_BITS: u32 = 40;
const MS_MASK: u64 = (1 << MS_BITS) - 1;

pub struct Cache {
    cache: moka::sync::Cache<MemKey, Slot, ahash::RandomState>,
    /// The secret key of this cache's [`MemKey`]s (see [`key`]).
    keyer: key::Keyer,
    /// Keys asked for once while the tier was half full (see
    /// [`Cache::admit`]); direct-mapped, an old one is overwritten.
    doorkeeper: Box<[AtomicU64]>,
    /// When a copy without `Vary` was last kept under a primary key
    /// (direct-mapped; see [`Cache::kept_within`]), and the time it counts
    /// from.
    recent: Box<[AtomicU64]>,
    epoch: std::time::Instant,
    budget: u64,
    pub max_object: u64,
    /// Bytes held, by graceway's own count (see the module doc).
    bytes: Arc<AtomicI64>,
    entries: Arc<AtomicI64>,
    /// [`Slot::Loaded`] copies held. While there are any, a request that
    /// misses looks for one (a SHA-256 of its key); once every copy read
    /// from the persist file has been asked for, evicted, or outlived
    /// `loaded_until`, a request's key costs one SipHash and nothing more.
    loaded: Arc<AtomicI64>,
    /// Unix seconds after which no loaded copy is servable any more (the
    /// newest one's `stored_at` plus the longest `max_stale`): then they
    /// are dropped (see [`Cache::maintain`]). `u64::MAX` while none is
    /// pending.
    loaded_until: AtomicU64,
    persist: Option<persist::Writer>,
    /// The fleet tier (`cache.redis`), set once at start.
    fleet: Option<Arc<fleet::FleetTier>>,
    /// Fetches in flight, for collapsed forwarding ([`flight`]).
    pub flights: flight::Flights,
}

impl Cache {
    pub fn new(budget: u64, max_object: u64, persist: Option<persist::Writer>) -> Cache {
        let bytes = Arc::new(AtomicI64::new(0));
        let entries = Arc::new(AtomicI64::new(0));
        let loaded = Arc::new(AtomicI64::new(0));
        let (b, e, l) = (bytes.clone(), entries.clone(), loaded.clone());
        let persist_for_listener = persist.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_: &MemKey, v: &Slot| v.weight())
            .eviction_listener(move |_: Arc<MemKey>, v: Slot, cause: RemovalCause| {
                let w = i64::from(v.weight());
                b.fetch_sub(w, Ordering::Relaxed);
                e.fetch_sub(1, Ordering::Relaxed);
                if cause == RemovalCause::Size {
                    metrics().cache_evictions_total.inc();
                }
                let Some(c) = v.copy() else { return };
                c.owner.stored_entries.fetch_sub(1, Ordering::Relaxed);
                c.owner.stored_bytes.fetch_sub(w, Ordering::Relaxed);
                let moved = match &v {
                    Slot::Loaded(c) => {
                        l.fetch_sub(1, Ordering::Relaxed);
                        c.asked.load(Ordering::Relaxed)
                    }
                    _ => false,
                };
                // A replaced copy's row is the new copy's (same key); a
                // loaded copy that moved to a request's key lives on there.
                if cause != RemovalCause::Replaced && !moved {
                    if let Some(p) = &persist_for_listener {
                        p.delete(c);
                    }
                }
            })
            .support_invalidation_closures()
            .build_with_hasher(ahash::RandomState::new());
        Cache {
            cache,
            keyer: key::Keyer::new(),
            doorkeeper: (0..DOORKEEPER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
            budget,
            max_object,
            bytes,
            entries,
            loaded,
            loaded_until: AtomicU64::new(u64::MAX),
            persist,
            fleet: None,
            flights: flight::Flights::default(),
        }
    }

    /// Adds the fleet tier (at start, before the cache is shared).
    pub fn with_fleet(mut self, fleet: Option<Arc<fleet::FleetTier>>) -> Cache {
        self.fleet = fleet;
        self
    }

    /// The fleet tier, for its status and housekeeping.
    pub fn fleet(&self) -> Option<&Arc<fleet::FleetTier>> {
        self.fleet.as_ref()
    }

    /// The memory key of a request's copy without `Vary`: one keyed
    /// SipHash of the upstream, path and query, no allocation.
    pub fn primary_key(&self, upstream: &str, req: &RequestHeader) -> MemKey {
        self.keyer.primary(upstream, key::path_and_query(req))
    }

    /// Where a copy of this request's answer (`headers`: the headers it
    /// will be kept with) goes in every tier. Computed once per copy kept,
    /// not per request: it hashes the key with SHA-256.
    pub fn capture_key(
        &self,
        upstream: &str,
        primary: &MemKey,
        headers: &[(HeaderName, HeaderValue)],
        req: &RequestHeader,
    ) -> Key {
        let names = stored::vary_names(headers);
        let store = StoreKey::of_request(upstream, req);
        if names.is_empty() {
            return Key {
                primary: *primary,
                variant: None,
                store,
            };
        }
        Key {
            primary: *primary,
            store: store.with_variant(&names, req),
            variant: Some((
                Arc::from(names.as_slice()),
                self.keyer.variant(primary, &names, req),
            )),
        }
    }

    /// Keeps a fresh copy in every tier: memory (which mirrors it to the
    /// persist file) and, when configured, the fleet tier, under `ttl`.
    /// Requests never wait: the persist and fleet writes are queued.
    pub fn keep(
        &self,
        key: Key,
        recorded: Recorded,
        owner: Arc<UpstreamStatus>,
        ttl: Duration,
    ) -> Arc<CachedResponse> {
        let copy = Arc::new(CachedResponse::new(recorded, owner, key.store));
        if key.variant.is_none() {
            let slot = &self.recent[(key.primary.low64() >> 32) as usize & (RECENT_SLOTS - 1)];
            slot.store(recent_tag(&key.primary) | self.now_ms(), Ordering::Relaxed);
        }
        if let Some(fleet) = &self.fleet {
            fleet.put(&copy, ttl);
        }
        self.insert(key.primary, key.variant, copy.clone(), true);
        copy
    }

    /// The key a request's fetch is in flight under ([`flight`]): its
    /// copy's variant key when the copy under `primary` says it varies,
    /// else `primary` (a first answer that varies is checked by the
    /// waiters: see `Landing::Stored`).
    pub fn flight_key(&self, primary: &MemKey, req: &RequestHeader) -> MemKey {
        match self.cache.get(primary) {
            Some(Slot::Vary(names)) => self.keyer.variant(primary, &names, req),
            _ => *primary,
        }
    }

    /// Whether a copy without `Vary` was kept under `primary` less than
    /// `window` ago: a hot path's answer need not be captured again (the
    /// proxy's store refresh). One atomic load and a clock read, against a
    /// lookup's ~650 instructions. A false "no" (the slot was taken by
    /// another key since) only means a lookup; a false "yes" needs another
    /// key with the same slot and 24-bit tag kept within `window`, and only
    /// delays that refresh.
    pub fn kept_within(&self, primary: &MemKey, window: Duration) -> bool {
        let slot = &self.recent[(primary.low64() >> 32) as usize & (RECENT_SLOTS - 1)];
        let v = slot.load(Ordering::Relaxed);
        let since = self.now_ms().wrapping_sub(v & MS_MASK) & MS_MASK;
        v & !MS_MASK == recent_tag(primary) && (since as u128) < window.as_millis()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 & MS_MASK
    }

    /// Whether a new key's copy may be kept now. Below half the budget,
    /// always; above it, only on the key's second ask within the
    /// doorkeeper's memory (the first is remembered, and counted in
    /// `graceway_cache_admissions_deferred_total`). So a client sending
    /// one-off paths, however fast, never pushes out the copies other
    /// clients keep asking for. Lock-free: one atomic swap (the key is a
    /// keyed hash already, so it is its own doorkeeper hash).
    pub fn admit(&self, key: &MemKey) -> bool {
        if (self.bytes() as u64) < self.budget / 2 {
            return true;
        }
        let h = key.low64() | 1;
        let slot = &self.doorkeeper[(h >> 1) as usize & (DOORKEEPER_SLOTS - 1)];
        if slot.swap(h, Ordering::Relaxed) == h {
            slot.store(0, Ordering::Relaxed);
            return true;
        }
        metrics().cache_admissions_deferred_total.inc();
        false
    }

    /// The copy for this request, if any (servability is the caller's call).
    pub fn lookup(&self, upstream: &str, req: &RequestHeader) -> Option<Arc<CachedResponse>> {
        self.lookup_primary(upstream, &self.primary_key(upstream, req), req)
    }

    /// [`Self::lookup`] for a caller that already has the primary key.
    pub fn lookup_primary(
        &self,
        upstream: &str,
        primary: &MemKey,
        req: &RequestHeader,
    ) -> Option<Arc<CachedResponse>> {
        match self.cache.get(primary) {
            Some(Slot::Copy(c)) => Some(c),
            Some(Slot::Vary(names)) => {
                match self.cache.get(&self.keyer.variant(primary, &names, req)) {
                    Some(Slot::Copy(c)) => Some(c),
                    _ => self.find_loaded(upstream, req, primary, Some(names)),
                }
            }
            _ => self.find_loaded(upstream, req, primary, None),
        }
    }

    /// Stores a copy under `primary` (and its variant key when the response
    /// varies). `persist` is false when the copy came from the persist file
    /// or the fleet tier.
    pub fn insert(
        &self,
        primary: MemKey,
        variant: Option<(Arc<[HeaderName]>, MemKey)>,
        copy: Arc<CachedResponse>,
        persist: bool,
    ) {
        let key = match variant {
            None => primary,
            Some((names, v)) => {
                self.put(primary, Slot::Vary(names));
                v
            }
        };
        if persist {
            if let Some(p) = &self.persist {
                p.put(&copy);
            }
        }
        self.put(key, Slot::Copy(copy));
    }

    fn put(&self, key: MemKey, slot: Slot) {
        let w = i64::from(slot.weight());
        if let Some(c) = slot.copy() {
            c.owner.stored_entries.fetch_add(1, Ordering::Relaxed);
            c.owner.stored_bytes.fetch_add(w, Ordering::Relaxed);
        }
        self.bytes.fetch_add(w, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key, slot);
        if self.bytes.load(Ordering::Relaxed) > self.budget as i64 {
            // Apply moka's pending evictions now rather than at its next
            // housekeeping, so the budget holds at every moment.
            self.cache.run_pending_tasks();
        }
        self.publish();
    }

    fn publish(&self) {
        let m = metrics();
        m.cache_bytes.set(self.bytes());
        m.cache_entries.set(self.entries());
    }

    pub fn bytes(&self) -> i64 {
        self.bytes.load(Ordering::Relaxed).max(0)
    }

    pub fn entries(&self) -> i64 {
        self.entries.load(Ordering::Relaxed).max(0)
    }

    /// The persist tier's file and dropped-write count, for `/status`.
    pub fn persist_status(&self) -> Option<persist::PersistView> {
        self.persist.as_ref().map(|p| persist::PersistView {
            path: p.path.display().to_string(),
            open: p.is_open(),
            dropped_writes: p.dropped(),
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Runs moka's housekeeping and refreshes the gauges (called from the
    /// control loop every second).
    pub fn maintain(&self) {
        self.retire_loaded(SystemTime::now());
        self.cache.run_pending_tasks();
        self.publish();
    }

    /// Removes the oldest copies until at least `bytes` are freed (or the
    /// cache is empty). Returns (entries, bytes) removed.
    pub fn shed_oldest(&self, bytes: u64) -> (u64, u64) {
        let mut copies: Vec<(SystemTime, u32, MemKey)> = self
            .cache
            .iter()
            .filter_map(|(k, v)| Some((v.copy()?.recorded.stored_at, v.weight(), *k)))
            .collect();
        copies.sort_by_key(|(t, _, _)| *t);
        let (mut n, mut freed) = (0u64, 0u64);
        for (_, w, k) in copies {
            if freed >= bytes {
                break;
            }
            self.cache.invalidate(&k);
            freed += u64::from(w);
            n += 1;
        }
        self.maintain();
        (n, freed)
    }

    /// Starts the persist writer (see [`persist::Writer::start`]); `on_open`
    /// runs if the file was held by another process and has been opened.
    pub fn start_persist(&self, on_open: impl FnOnce() + Send + 'static) {
        if let Some(p) = &self.persist {
            p.start(on_open);
        }
    }

    /// Flushes the persist writer and releases its file (at exit).
    pub fn close_persist(&self, limit: Duration) {
        if let Some(p) = &self.persist {
            p.close(limit);
        }
    }
}

/// The high 24 bits of a key, as [`Cache::kept_within`] stores them.
fn recent_tag(key: &MemKey) -> u64 {
    (key.high64() >> MS_BITS) << MS_BITS
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    pub(super) fn recorded(body: &str, headers: &[(&str, &str)]) -> Recorded {
        Recorded {
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            body: bytes::Bytes::from(body.to_string()),
            stored_at: SystemTime::now(),
            fresh_for: Duration::ZERO,
            must_revalidate: false,
            stale_if_error: None,
        }
    }

    pub(super) fn owner() -> Arc<UpstreamStatus> {
        Arc::new(UpstreamStatus::new("u"))
    }

    /// Keeps `body` as the answer to `r`, as the proxy does.
    pub(super) fn keep(cache: &Cache, r: &RequestHeader, body: &str, headers: &[(&str, &str)]) {
        let rec = recorded(body, headers);
        let key = cache.capture_key("u", &cache.primary_key("u", r), &rec.headers, r);
        cache.keep(key, rec, owner(), Duration::from_secs(60));
    }

    pub(super) fn body_of(c: Option<Arc<CachedResponse>>) -> Option<String> {
        c.map(|c| String::from_utf8_lossy(&c.recorded.body).into_owned())
    }

    #[test]
    fn the_byte_budget_holds_at_every_insert() {
        let budget = 64 * 1024;
        let cache = Cache::new(budget, 16 * 1024, None);
        let body = "x".repeat(1500);
        for i in 0..200 {
            let r = req(&format!("/v1/{i}"), &[]);
            cache.insert(
                cache.primary_key("u", &r),
                None,
                Arc::new(CachedResponse::new(
                    recorded(&body, &[("content-type", "application/json")]),
                    owner(),
                    StoreKey::of_request("u", &r),
                )),
                false,
            );
            assert!(
                cache.bytes() as u64 <= budget + 4096,
                "{} after {i}",
                cache.bytes()
            );
        }
        assert!(cache.entries() > 10);
        // Past half the budget a new key waits for its second ask.
        let never = cache.primary_key("u", &req("/never-seen", &[]));
        assert!(!cache.admit(&never));
        assert!(cache.admit(&never));
    }

    #[test]
    fn a_copy_kept_lately_is_known_without_a_lookup() {
        let cache = Cache::new(1 << 20, 1 << 16, None);
        let (p, q) = (req("/p", &[]), req("/q", &[]));
        let (kp, kq) = (cache.primary_key("u", &p), cache.primary_key("u", &q));
        assert!(!cache.kept_within(&kp, Duration::from_secs(1)));
        keep(&cache, &p, "p", &[]);
        assert!(cache.kept_within(&kp, Duration::from_secs(1)));
        assert!(!cache.kept_within(&kp, Duration::ZERO));
        assert!(!cache.kept_within(&kq, Duration::from_secs(1)));
        // A varied copy is one of several under its primary key: not noted.
        let v = req("/v", &[("accept-language", "de")]);
        keep(&cache, &v, "de", &[("vary", "accept-language")]);
        let kv = cache.primary_key("u", &v);
        assert!(!cache.kept_within(&kv, Duration::from_secs(1)));
    }

    #[test]
    fn kept_copies_are_found_by_path_and_varied_headers() {
        let cache = Cache::new(1 << 20, 1 << 16, None);
        keep(&cache, &req("/plain?a=1", &[]), "plain", &[]);
        let vary = [("vary", "Accept-Language")];
        let de = req("/v", &[("accept-language", "de")]);
        let fr = req("/v", &[("accept-language", "fr")]);
        keep(&cache, &de, "de", &vary);
        keep(&cache, &fr, "fr", &vary);
        let get = |r: &RequestHeader| body_of(cache.lookup("u", r));
        assert_eq!(get(&req("/plain?a=1", &[])).as_deref(), Some("plain"));
        assert_eq!(get(&req("/plain?a=2", &[])), None);
        assert_eq!(
            cache.lookup("other", &req("/plain?a=1", &[])).map(|_| ()),
            None
        );
        assert_eq!(get(&de).as_deref(), Some("de"));
        assert_eq!(get(&fr).as_deref(), Some("fr"));
        assert_eq!(get(&req("/v", &[("accept-language", "en")])), None);
        // The copy knows its key outside the process.
        let c = cache.lookup("u", &de).unwrap();
        let names = [HeaderName::from_static("accept-language")];
        assert_eq!(
            c.store,
            StoreKey::of_request("u", &de).with_variant(&names, &de)
        );
        // Another cache, another secret: its keys are not these.
        let other = Cache::new(1 << 20, 1 << 16, None);
        assert_ne!(other.primary_key("u", &de), cache.primary_key("u", &de));
    }
}

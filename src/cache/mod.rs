//! The last-good cache: the newest 200 answer per upstream, path, query and
//! `Vary`'d request headers, kept to answer when the upstream turns the
//! token away or fails.
//!
//! Three tiers, all behind this module:
//! - memory ([`Cache`]): a moka cache weighted by the memory a copy holds
//!   (key, headers, the body's allocation size class and a measured
//!   per-entry overhead, see [`Cache::weigh`]). graceway keeps its own
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

pub mod fleet;
mod key;
pub mod ledger;
pub mod persist;
pub mod stored;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use moka::notification::RemovalCause;
use pingora::http::RequestHeader;

use crate::metrics::metrics;
use key::read_key;
pub use key::{key_of, primary_key, variant_key};
pub use stored::{CachedResponse, Recorded};

/// What a key holds: a copy, or (for a response with `Vary`) the list of
/// request headers that pick the copy.
#[derive(Clone)]
enum Slot {
    Copy(Arc<CachedResponse>),
    Vary(Arc<[HeaderName]>),
}

impl Slot {
    fn weight(&self, key: &str) -> u32 {
        let w = match self {
            Slot::Copy(c) => c.weight as usize,
            Slot::Vary(names) => {
                stored::ENTRY_OVERHEAD + names.iter().map(|n| n.as_str().len() + 24).sum::<usize>()
            }
        };
        (w + key.len()).min(u32::MAX as usize) as u32
    }
}

/// Slots of the admission doorkeeper (128 KiB of key hashes).
const DOORKEEPER_SLOTS: usize = 1 << 14;

pub struct Cache {
    cache: moka::sync::Cache<Arc<str>, Slot, ahash::RandomState>,
    /// Hashes of keys asked for once while the tier was half full (see
    /// [`Cache::admit`]); direct-mapped, an old hash is overwritten.
    doorkeeper: Box<[std::sync::atomic::AtomicU64]>,
    door_hasher: ahash::RandomState,
    budget: u64,
    pub max_object: u64,
    /// Bytes held, by graceway's own count (see the module doc).
    bytes: Arc<AtomicI64>,
    entries: Arc<AtomicI64>,
    persist: Option<persist::Writer>,
    /// The fleet tier (`cache.redis`), set once at start.
    fleet: Option<Arc<fleet::FleetTier>>,
}

impl Cache {
    pub fn new(budget: u64, max_object: u64, persist: Option<persist::Writer>) -> Cache {
        let bytes = Arc::new(AtomicI64::new(0));
        let entries = Arc::new(AtomicI64::new(0));
        let (b, e) = (bytes.clone(), entries.clone());
        let persist_for_listener = persist.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|k: &Arc<str>, v: &Slot| v.weight(k))
            .eviction_listener(move |k: Arc<Arc<str>>, v: Slot, cause: RemovalCause| {
                let w = i64::from(v.weight(&k));
                b.fetch_sub(w, Ordering::Relaxed);
                e.fetch_sub(1, Ordering::Relaxed);
                if let Slot::Copy(c) = &v {
                    c.owner.stored_entries.fetch_sub(1, Ordering::Relaxed);
                    c.owner.stored_bytes.fetch_sub(w, Ordering::Relaxed);
                }
                if cause == RemovalCause::Size {
                    metrics().cache_evictions_total.inc();
                }
                if cause != RemovalCause::Replaced {
                    if let Some(p) = &persist_for_listener {
                        p.delete(&k);
                    }
                }
            })
            .support_invalidation_closures()
            .build_with_hasher(ahash::RandomState::new());
        Cache {
            cache,
            doorkeeper: (0..DOORKEEPER_SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            door_hasher: ahash::RandomState::new(),
            budget,
            max_object,
            bytes,
            entries,
            persist,
            fleet: None,
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

    /// Keeps a fresh copy in every tier: memory (which mirrors it to the
    /// persist file) and, when configured, the fleet tier, under `ttl`.
    /// Requests never wait: the persist and fleet writes are queued.
    pub fn keep(
        &self,
        upstream: &str,
        primary: &str,
        variant: Option<(Arc<[HeaderName]>, String)>,
        copy: Arc<CachedResponse>,
        ttl: std::time::Duration,
    ) {
        if let Some(fleet) = &self.fleet {
            fleet.put(upstream, primary, &copy, ttl);
            if let Some((_, vkey)) = &variant {
                fleet.put(upstream, vkey, &copy, ttl);
            }
        }
        self.insert(primary, variant, copy, true);
    }

    /// A local miss's second chance, for a degraded answer only: the fleet
    /// tier's copy of this request (the primary key, then the variant its
    /// `Vary` names select), kept in the memory tier. True when one came.
    /// The only place a request waits on Redis, bounded by
    /// `cache.redis.timeout`.
    pub async fn fill_from_fleet(
        &self,
        upstream: &str,
        req: &RequestHeader,
        owner: Arc<crate::generation::UpstreamStatus>,
    ) -> bool {
        let Some(fleet) = &self.fleet else {
            return false;
        };
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return false;
        }
        let primary = primary_key(upstream, req);
        let Some(found) = fleet.get(upstream, &primary).await else {
            return false;
        };
        let names = stored::vary_names(&found.headers);
        let (found, variant) = if names.is_empty() {
            (found, None)
        } else {
            let vkey = variant_key(&primary, &names, req);
            match fleet.get(upstream, &vkey).await {
                Some(v) => (v, Some((Arc::from(names), vkey))),
                None => return false,
            }
        };
        self.adopt(&primary, variant, found, owner);
        true
    }

    /// Whether a new key's copy may be kept now. Below half the budget,
    /// always; above it, only on the key's second ask within the
    /// doorkeeper's memory (the first is remembered, and counted in
    /// `graceway_cache_admissions_deferred_total`). So a client sending
    /// one-off paths, however fast, never pushes out the copies other
    /// clients keep asking for. Lock-free: one hash and one atomic swap.
    pub fn admit(&self, key: &str) -> bool {
        if (self.bytes() as u64) < self.budget / 2 {
            return true;
        }
        let h = self.door_hasher.hash_one(key) | 1;
        let slot = &self.doorkeeper[(h as usize) & (DOORKEEPER_SLOTS - 1)];
        if slot.swap(h, Ordering::Relaxed) == h {
            slot.store(0, Ordering::Relaxed);
            return true;
        }
        metrics().cache_admissions_deferred_total.inc();
        false
    }

    /// The copy for this request, if any (servability is the caller's call).
    pub fn lookup(&self, upstream: &str, req: &RequestHeader) -> Option<Arc<CachedResponse>> {
        self.lookup_primary(&primary_key(upstream, req), req)
    }

    /// [`Self::lookup`] for a caller that already built the primary key.
    pub fn lookup_primary(
        &self,
        primary: &str,
        req: &RequestHeader,
    ) -> Option<Arc<CachedResponse>> {
        match self.cache.get(primary)? {
            Slot::Copy(c) => Some(c),
            Slot::Vary(names) => {
                match self.cache.get(variant_key(primary, &names, req).as_str())? {
                    Slot::Copy(c) => Some(c),
                    Slot::Vary(_) => None,
                }
            }
        }
    }

    /// Stores a copy under `primary` (and its variant key when the response
    /// varies). `persist` is false when the copy came from the persist file.
    pub fn insert(
        &self,
        primary: &str,
        variant: Option<(Arc<[HeaderName]>, String)>,
        copy: Arc<CachedResponse>,
        persist: bool,
    ) {
        let key: Arc<str> = match variant {
            None => Arc::from(primary),
            Some((names, vkey)) => {
                self.put(Arc::from(primary), Slot::Vary(names));
                Arc::from(vkey.as_str())
            }
        };
        if persist {
            if let Some(p) = &self.persist {
                p.put(&key, &copy);
            }
        }
        self.put(key, Slot::Copy(copy));
    }

    fn put(&self, key: Arc<str>, slot: Slot) {
        let w = i64::from(slot.weight(&key));
        if let Slot::Copy(c) = &slot {
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
        self.cache.run_pending_tasks();
        self.publish();
    }

    /// Weight a copy will have under `key`: the memory it holds (measured
    /// with `benches/compare.sh`'s full-cache row and 28,317 small copies:
    /// within a few percent of the resident growth, on the safe side).
    pub fn weigh(
        key_len: usize,
        headers: &[(HeaderName, http::HeaderValue)],
        body_len: usize,
    ) -> u32 {
        let h: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + stored::HEADER_OVERHEAD)
            .sum();
        let body = stored::allocation_size(body_len);
        (key_len + h + body + stored::ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
    }

    /// Refills the memory tier from the persist file at start.
    pub fn load_persisted(
        &self,
        status_for: &dyn Fn(&str) -> Arc<crate::generation::UpstreamStatus>,
        max_age: std::time::Duration,
    ) -> usize {
        let Some(p) = &self.persist else { return 0 };
        let now = SystemTime::now();
        let mut loaded = 0;
        let mut expired = Vec::new();
        for (key, d) in p.load_all() {
            let Some(k) = read_key(&key) else {
                expired.push(key.to_string());
                continue;
            };
            if now.duration_since(d.stored_at).unwrap_or_default() > max_age {
                expired.push(key.to_string());
                continue;
            }
            let mem_key = k.variant.as_deref().unwrap_or(&k.primary);
            // Loaded late (after a graceful upgrade), the memory tier may
            // already hold a newer copy.
            if self.holds_newer(mem_key, d.stored_at) {
                continue;
            }
            let names = stored::vary_names(&d.headers);
            let variant = match (names.is_empty(), &k.variant) {
                (false, Some(v)) => Some((Arc::from(names), v.clone())),
                _ => None,
            };
            let owner = status_for(&k.upstream);
            if k.migrated {
                // Written again under its hash, the raw key deleted.
                expired.push(key.to_string());
                let key_len = variant.as_ref().map_or(k.primary.len(), |(_, v)| v.len());
                let copy = Arc::new(CachedResponse::new(d, key_len, owner));
                self.insert(&k.primary, variant, copy, true);
            } else {
                self.adopt(&k.primary, variant, d, owner);
            }
            loaded += 1;
        }
        p.remove_now(&expired);
        self.maintain();
        loaded
    }

    /// Removes the oldest copies until at least `bytes` are freed (or the
    /// cache is empty). Returns (entries, bytes) removed.
    pub fn shed_oldest(&self, bytes: u64) -> (u64, u64) {
        let mut copies: Vec<(SystemTime, u32, Arc<str>)> = self
            .cache
            .iter()
            .filter_map(|(k, v)| match &v {
                Slot::Copy(c) => Some((c.recorded.stored_at, v.weight(&k), Arc::clone(&*k))),
                Slot::Vary(_) => None,
            })
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

    /// Keeps a copy read from the persist file or the fleet tier in the
    /// memory tier (not written back to either).
    pub fn adopt(
        &self,
        primary: &str,
        variant: Option<(Arc<[HeaderName]>, String)>,
        d: stored::Recorded,
        owner: Arc<crate::generation::UpstreamStatus>,
    ) {
        let key_len = variant.as_ref().map_or(primary.len(), |(_, k)| k.len());
        let copy = Arc::new(CachedResponse::new(d, key_len, owner));
        self.insert(primary, variant, copy, false);
    }

    /// Whether the memory tier holds a copy under `key` stored at or
    /// after `at`.
    fn holds_newer(&self, key: &str, at: SystemTime) -> bool {
        matches!(self.cache.get(key), Some(Slot::Copy(c)) if c.recorded.stored_at >= at)
    }

    /// Starts the persist writer (see [`persist::Writer::start`]); `on_open`
    /// runs if the file was held by another process and has been opened.
    pub fn start_persist(&self, on_open: impl FnOnce() + Send + 'static) {
        if let Some(p) = &self.persist {
            p.start(on_open);
        }
    }

    /// Flushes the persist writer and releases its file (at exit).
    pub fn close_persist(&self, limit: std::time::Duration) {
        if let Some(p) = &self.persist {
            p.close(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(body: usize, key_len: usize) -> Arc<CachedResponse> {
        let recorded = Recorded {
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )],
            body: bytes::Bytes::from(vec![b'x'; body]),
            stored_at: SystemTime::now(),
            fresh_for: std::time::Duration::ZERO,
            must_revalidate: false,
            stale_if_error: None,
        };
        let owner = Arc::new(crate::generation::UpstreamStatus::new("u"));
        Arc::new(CachedResponse::new(recorded, key_len, owner))
    }

    #[test]
    fn weights_count_key_headers_size_class_and_entry_overhead() {
        let h = [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )];
        let w = |body| Cache::weigh(70, &h, body) as usize;
        let fixed =
            70 + "content-type".len() + 16 + stored::HEADER_OVERHEAD + stored::ENTRY_OVERHEAD;
        assert_eq!(w(100), fixed + stored::allocation_size(100));
        assert!(
            w(40_000) >= fixed + 40_000,
            "a body is never weighed below its size"
        );
        assert!(w(1) < w(1000) && w(1000) < w(40_000));
    }

    #[test]
    fn the_byte_budget_holds_at_every_insert() {
        let budget = 64 * 1024;
        let cache = Cache::new(budget, 16 * 1024, None);
        for i in 0..200 {
            let key = key_of("u", &format!("/v1/{i}"));
            cache.insert(&key, None, copy(1500, key.len()), false);
            assert!(
                cache.bytes() as u64 <= budget + 4096,
                "{} after {i}",
                cache.bytes()
            );
        }
        assert!(cache.entries() > 10);
        // Past half the budget a new key waits for its second ask.
        assert!(!cache.admit("u\nnever-seen"));
        assert!(cache.admit("u\nnever-seen"));
    }
}

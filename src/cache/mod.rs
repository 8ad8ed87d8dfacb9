//! The last-good cache: the newest 200 answer per upstream, path, query and
//! `Vary`'d request headers, kept to answer when the upstream turns the
//! token away or fails.
//!
//! Two tiers:
//! - memory ([`Cache`]): a moka cache weighted by the memory a copy holds
//!   (key, headers, the body's allocation size class and a measured
//!   per-entry overhead, see [`Cache::weigh`]). moka's TinyLFU admission
//!   keeps hot keys when the budget is full, so a scan of one-off paths does
//!   not push out the copies users actually ask for. graceway keeps its own
//!   byte counter and runs moka's pending evictions as soon as it passes the
//!   budget, so the memory held never exceeds `cache.memory_bytes` by more
//!   than the one copy being inserted.
//! - persist ([`persist`]): an embedded redb file that mirrors the memory
//!   tier off the request path and refills it at start, so a graceway
//!   restarted in the middle of an outage still has copies to serve.

pub mod fleet;
pub mod persist;
pub mod stored;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use moka::notification::RemovalCause;
use pingora::http::RequestHeader;

use crate::metrics::metrics;
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

pub struct Cache {
    cache: moka::sync::Cache<Arc<str>, Slot, ahash::RandomState>,
    budget: u64,
    pub max_object: u64,
    /// Bytes held, by graceway's own count (see the module doc).
    bytes: Arc<AtomicI64>,
    entries: Arc<AtomicI64>,
    persist: Option<persist::Writer>,
}

/// The key of a request's copy without `Vary`: upstream, path and query.
pub fn primary_key(upstream: &str, req: &RequestHeader) -> String {
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut k = String::with_capacity(upstream.len() + pq.len() + 1);
    k.push_str(upstream);
    k.push('\n');
    k.push_str(pq);
    k
}

/// The key of one `Vary` variant: the primary key plus the request's values
/// of the named headers.
pub fn variant_key(primary: &str, names: &[HeaderName], req: &RequestHeader) -> String {
    let mut k = String::from(primary);
    for n in names {
        k.push('\n');
        k.push_str(n.as_str());
        k.push('=');
        let mut first = true;
        for v in req.headers.get_all(n) {
            if !first {
                k.push(',');
            }
            first = false;
            k.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    k
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
            budget,
            max_object,
            bytes,
            entries,
            persist,
        }
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
    pub fn persist_status(&self) -> serde_json::Value {
        match &self.persist {
            None => serde_json::Value::Null,
            Some(p) => serde_json::json!({
                "path": p.path.display().to_string(),
                "open": p.is_open(),
                "dropped_writes": p.dropped(),
            }),
        }
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
            let Some((upstream, rest)) = key.split_once('\n') else {
                expired.push(key.to_string());
                continue;
            };
            if now.duration_since(d.stored_at).unwrap_or_default() > max_age {
                expired.push(key.to_string());
                continue;
            }
            // Loaded late (after a graceful upgrade), the memory tier may
            // already hold a newer copy.
            if self.holds_newer(&key, d.stored_at) {
                continue;
            }
            let names = stored::vary_names(&d.headers);
            if names.is_empty() {
                self.adopt(&key, None, d, status_for(upstream));
            } else {
                // rest = path?query + "\nname=value"...: the primary key is
                // upstream + the first line.
                let pq = rest.split('\n').next().unwrap_or("");
                let primary = format!("{upstream}\n{pq}");
                self.adopt(
                    &primary,
                    Some((Arc::from(names), key.to_string())),
                    d,
                    status_for(upstream),
                );
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

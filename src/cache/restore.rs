//! Copies read back from the persist file, and how a request finds them.
//!
//! A persisted copy is known by its [`StoreKey`] only: the path it came
//! from is not kept, so the request's [`MemKey`] cannot be computed for it.
//! It is held in the memory tier as [`Slot::Loaded`] under
//! `Keyer::stored` of its key until a request that misses asks for it
//! ([`Cache::find_loaded`], one SHA-256 of the request's key), then moved
//! to the request's own key, where the next ask is a plain hit. The look
//! costs nothing once no loaded copy is left: all asked for, evicted, or
//! past `loaded_until`, when none could be served any more.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use pingora::http::RequestHeader;

use super::{stored, Cache, CachedResponse, MemKey, Slot, StoreKey};
use crate::generation::UpstreamStatus;

impl Cache {
    /// Refills the memory tier from the persist file (at start, or once
    /// the previous process of an upgrade has let go of it). Each copy is
    /// held under its stored key until a request asks for it (see
    /// [`Slot::Loaded`]); copies older than `max_age` are deleted.
    pub fn load_persisted(
        &self,
        status_for: &dyn Fn(&str) -> Arc<UpstreamStatus>,
        max_age: Duration,
    ) -> usize {
        let Some(p) = &self.persist else { return 0 };
        let now = SystemTime::now();
        let mut loaded = 0;
        let mut expired = Vec::new();
        let mut newest = None;
        for (key, d) in p.load_all() {
            if now.duration_since(d.stored_at).unwrap_or_default() > max_age {
                expired.push(key);
                continue;
            }
            // A variant under its own key, its `Vary` names under the
            // primary; a copy that does not vary (any more) under the
            // primary.
            let names = stored::vary_names(&d.headers);
            let varies = !names.is_empty() && key.variant.is_some();
            let at = if varies {
                self.keyer.stored(&key)
            } else {
                self.keyer.stored(&key.primary_only())
            };
            if self.holds_newer(&at, d.stored_at) {
                continue;
            }
            if varies {
                let names = Slot::Vary(Arc::from(names));
                self.put(self.keyer.stored(&key.primary_only()), names);
            }
            newest = newest.max(Some(d.stored_at));
            let owner = status_for(&key.upstream);
            self.loaded.fetch_add(1, Ordering::Relaxed);
            self.put(
                at,
                Slot::Loaded(Arc::new(CachedResponse::new(d, owner, key))),
            );
            loaded += 1;
        }
        if let Some(t) = newest {
            // The later of this load's deadline and an earlier load's
            // (u64::MAX: none pending).
            let until = crate::clock::unix(t).saturating_add(max_age.as_secs());
            let _ = self
                .loaded_until
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                    Some(if cur == u64::MAX {
                        until
                    } else {
                        cur.max(until)
                    })
                });
        }
        p.remove_now(&expired);
        self.maintain();
        loaded
    }

    /// A miss's look at the copies read from the persist file (none once
    /// all have been asked for): the request's [`StoreKey`] (SHA-256) finds
    /// its copy, which moves to the request's memory keys, so that the next
    /// ask is a plain hit. `names`: the `Vary` names when the memory tier
    /// knows them already.
    pub(super) fn find_loaded(
        &self,
        upstream: &str,
        req: &RequestHeader,
        primary: &MemKey,
        names: Option<Arc<[HeaderName]>>,
    ) -> Option<Arc<CachedResponse>> {
        if self.loaded.load(Ordering::Relaxed) <= 0 {
            return None;
        }
        let store = StoreKey::of_request(upstream, req);
        let (names, vary_known) = match names {
            Some(n) => (n, true),
            None => match self.cache.get(&self.keyer.stored(&store))? {
                Slot::Loaded(c) => return Some(self.promote(c, &store, *primary)),
                Slot::Vary(n) => (n, false),
                Slot::Copy(_) => return None,
            },
        };
        let store = store.with_variant(&names, req);
        let Some(Slot::Loaded(c)) = self.cache.get(&self.keyer.stored(&store)) else {
            return None;
        };
        let variant = self.keyer.variant(primary, &names, req);
        if !vary_known {
            self.put(*primary, Slot::Vary(names));
        }
        Some(self.promote(c, &store, variant))
    }

    /// Moves a loaded copy from its stored key to a request's key (its row
    /// in the persist file stays: it is the same copy).
    fn promote(&self, c: Arc<CachedResponse>, from: &StoreKey, to: MemKey) -> Arc<CachedResponse> {
        self.put(to, Slot::Copy(c.clone()));
        c.asked.store(true, Ordering::Relaxed);
        self.cache.invalidate(&self.keyer.stored(from));
        c
    }

    /// Drops the loaded copies once none can be served any more (see
    /// `loaded_until`), which also ends the misses' look for them.
    pub(super) fn retire_loaded(&self, now: SystemTime) {
        let until = self.loaded_until.load(Ordering::Relaxed);
        if self.loaded.load(Ordering::Relaxed) <= 0 || crate::clock::unix(now) <= until {
            return;
        }
        if self.loaded_until.swap(u64::MAX, Ordering::Relaxed) == until {
            // Only fails without `support_invalidation_closures`, set in new.
            let _ = self
                .cache
                .invalidate_entries_if(|_, v| matches!(v, Slot::Loaded(_)));
        }
    }

    /// Whether the memory tier holds a copy under `key` stored at or
    /// after `at`.
    fn holds_newer(&self, key: &MemKey, at: SystemTime) -> bool {
        self.cache
            .get(key)
            .is_some_and(|s| s.copy().is_some_and(|c| c.recorded.stored_at >= at))
    }
}

#[cfg(test)]
mod tests {
    use super::super::persist::Writer;
    use super::super::tests::{body_of, keep, owner, req};
    use super::*;

    fn open(path: &std::path::Path) -> Cache {
        let cache = Cache::new(1 << 20, 1 << 16, Some(Writer::open(path).unwrap()));
        cache.start_persist(|| {});
        cache
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn persisted_copies_are_found_after_a_restart_and_keep_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let vary = [("vary", "accept-language")];
        let (de, fr) = (
            req("/v?id=7", &[("accept-language", "de")]),
            req("/v?id=7", &[("accept-language", "fr")]),
        );
        let a = open(&path);
        keep(&a, &req("/p?q=1", &[]), "plain", &[]);
        keep(&a, &de, "de", &vary);
        keep(&a, &fr, "fr", &vary);
        a.close_persist(Duration::from_secs(5));
        drop(a);

        let b = open(&path);
        assert_eq!(b.load_persisted(&|_| owner(), HOUR), 3);
        let loaded = || b.loaded.load(Ordering::Relaxed);
        assert_eq!(loaded(), 3);
        assert_eq!(b.lookup("u", &req("/elsewhere", &[])).map(|_| ()), None);
        let get = |r: &RequestHeader| body_of(b.lookup("u", r));
        assert_eq!(get(&req("/p?q=1", &[])).as_deref(), Some("plain"));
        assert_eq!(loaded(), 2, "moved to the request's key");
        assert_eq!(get(&req("/p?q=1", &[])).as_deref(), Some("plain"));
        assert_eq!(get(&req("/v?id=7", &[("accept-language", "en")])), None);
        assert_eq!(get(&de).as_deref(), Some("de"));
        // The second variant: the Vary names are known under the request's
        // key now, the copy still under its stored key.
        assert_eq!(get(&fr).as_deref(), Some("fr"));
        assert_eq!(loaded(), 0);
        assert_eq!(get(&de).as_deref(), Some("de"));
        b.close_persist(Duration::from_secs(5));
        drop(b);

        let c = open(&path);
        assert_eq!(
            c.load_persisted(&|_| owner(), HOUR),
            3,
            "moving a copy deleted no row"
        );
        // A copy that leaves the memory tier leaves the file.
        assert_eq!(c.shed_oldest(u64::MAX).0, 3);
        c.close_persist(Duration::from_secs(5));
        drop(c);
        let d = open(&path);
        assert_eq!(d.load_persisted(&|_| owner(), HOUR), 0);
    }

    #[test]
    fn loaded_copies_are_retired_once_none_is_servable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let a = open(&path);
        keep(&a, &req("/p", &[]), "plain", &[]);
        a.close_persist(Duration::from_secs(5));
        drop(a);
        let b = open(&path);
        assert_eq!(b.load_persisted(&|_| owner(), HOUR), 1);
        b.retire_loaded(SystemTime::now());
        b.cache.run_pending_tasks();
        assert_eq!(b.loaded.load(Ordering::Relaxed), 1, "still servable");
        b.retire_loaded(SystemTime::now() + 2 * HOUR);
        b.cache.run_pending_tasks();
        assert_eq!(b.loaded.load(Ordering::Relaxed), 0);
        assert_eq!(b.lookup("u", &req("/p", &[])).map(|_| ()), None);
    }
}

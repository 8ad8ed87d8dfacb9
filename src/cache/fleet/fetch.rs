//! Collapsed forwarding across the fleet (`cache.coalesce.fleet`): one
//! replica fetches a key for every replica sharing the fleet tier.
//!
//! A replica whose request leads the fetch of a key locally (see
//! [`crate::cache::flight`]) first takes the key's fetch lock in Redis:
//! `SET <prefix>fetch:v1:<upstream>:<sha256 of the cache key> <holder> NX
//! PX <cache.coalesce.wait>`. The holder value is `<unix ms>:<pid>:<n>`,
//! unique, and its time tells the others which copy is the new one.
//!
//! - **Taken**: the replica fetches. When the fetch lands, a kept copy is
//!   written to Redis at once (not behind the write queue) and then the
//!   lock is deleted, only if it is still this holder's (a compare and
//!   delete script); an answer that was not kept deletes the lock at once,
//!   so the others go to the vendor themselves without waiting it out.
//! - **Held by another**: the replica waits while the lock exists, checking
//!   every 25 ms, at most `cache.coalesce.wait` (the lock's TTL bounds it
//!   too: a holder that dies frees the key when its lock expires); then it
//!   reads the copy from the fleet tier, and serves it when it was stored
//!   after the lock was taken. Otherwise it fetches itself.
//! - **Redis down or slow**: every call is bounded by `cache.redis.timeout`
//!   and the fleet tier's breaker; without an answer the replica fetches
//!   alone, as without the option.
//!
//! The lock is per primary key: two variants of a `Vary`'d resource
//! fetched at the same moment on two replicas wait on each other once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::http::RequestHeader;

use super::{count, metrics, redis_key, FleetTier};
use crate::cache::key::StoreKey;
use crate::cache::stored::CachedResponse;

/// Deletes the lock only while it is still `ARGV[1]`'s.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// How often a replica waiting on another's fetch checks the lock.
const POLL: Duration = Duration::from_millis(25);

/// What taking a key's fetch lock came to.
pub enum Taken {
    /// This replica fetches; the hold is released when the fetch lands.
    Mine(Hold),
    /// Another replica fetches: wait on [`FleetTier::await_fetch`].
    Theirs(Theirs),
}

/// Another replica's fetch of a key.
pub struct Theirs {
    lock: String,
    /// When the holder took the lock (its clock, as its copy's).
    since: SystemTime,
}

/// This replica's fetch lock of a key.
pub struct Hold {
    tier: Arc<FleetTier>,
    lock: String,
    holder: String,
}

impl FleetTier {
    fn fetch_lock(&self, key: &StoreKey) -> String {
        redis_key(
            &format!("{}fetch:", self.config.key_prefix),
            &key.upstream,
            &key.legacy(),
        )
    }

    /// Takes the fleet's fetch of `key` for `ttl`, or learns who holds
    /// it. `None` when Redis does not answer (the replica fetches alone).
    pub async fn take_fetch(
        self: &Arc<Self>,
        upstream: &str,
        req: &RequestHeader,
        ttl: Duration,
    ) -> Option<Taken> {
        static N: AtomicU64 = AtomicU64::new(0);
        let lock = self.fetch_lock(&StoreKey::of_request(upstream, req));
        let now_ms = crate::clock::unix_ms();
        let holder = format!(
            "{now_ms}:{}:{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let set = redis::cmd("SET")
            .arg(&lock)
            .arg(&holder)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .to_owned();
        if self
            .query::<Option<String>>("fetch-lock", &set)
            .await?
            .is_some()
        {
            count("fetch-lock", "taken");
            return Some(Taken::Mine(Hold {
                tier: self.clone(),
                lock,
                holder,
            }));
        }
        count("fetch-lock", "held");
        let get = redis::cmd("GET").arg(&lock).to_owned();
        let since_ms = self
            .query::<Option<String>>("fetch-lock", &get)
            .await
            .flatten()
            .and_then(|v| v.split(':').next()?.parse::<u64>().ok())
            // Released between the two calls: a copy stored within the
            // lock's lifetime is the new one.
            .unwrap_or(now_ms.saturating_sub(ms));
        Some(Taken::Theirs(Theirs {
            lock,
            since: UNIX_EPOCH + Duration::from_millis(since_ms),
        }))
    }

    /// Waits, at most `limit`, while another replica holds the fetch; the
    /// time after which a copy in the fleet tier is that fetch's.
    pub async fn await_fetch(&self, theirs: Theirs, limit: Duration) -> SystemTime {
        let deadline = tokio::time::Instant::now() + limit;
        let exists = redis::cmd("EXISTS").arg(&theirs.lock).to_owned();
        while tokio::time::Instant::now() < deadline {
            match self.query::<u64>("fetch-wait", &exists).await {
                Some(1) => {}
                // Released, or Redis stopped answering: read what is there.
                _ => break,
            }
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
        theirs.since
    }
}

impl Hold {
    /// The fetch landed: `copy` (kept under `ttl`) is written to Redis
    /// before the lock goes, so the replicas waiting read it. Runs in the
    /// background; the request never waits on it.
    pub fn release(self, copy: Option<Arc<CachedResponse>>, ttl: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if let (Some(copy), Some(conn)) = (copy, self.tier.usable()) {
                let writes = self.tier.writes(&copy, ttl);
                let mut conn = (*conn).clone();
                let limit = self.tier.config.timeout;
                let written = tokio::time::timeout(limit, conn.set_all(&writes)).await;
                let n = writes.len() as u64;
                let result = if matches!(written, Ok(Ok(()))) {
                    "ok"
                } else {
                    "error"
                };
                metrics()
                    .fleet_operations_total
                    .with_label_values(&["set", result])
                    .inc_by(n);
            }
            let del = redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(&self.lock)
                .arg(&self.holder)
                .to_owned();
            let _ = self.tier.query::<u64>("fetch-lock", &del).await;
        });
    }
}

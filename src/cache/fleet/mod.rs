//! The fleet tier: one Redis (or Redis Cluster) shared by every replica, so
//! that a replica answers from what any replica stored, and a replica that
//! restarts during an outage is not empty-handed.
//!
//! - **Write-behind.** Every copy the memory tier keeps is queued here
//!   (`try_send` on a bounded queue: full means dropped and counted, never
//!   a wait) and written by one task in pipelined batches (on a cluster,
//!   one pipeline per hash slot: it refuses one that crosses slots), with a TTL equal
//!   to the upstream's `stale.max_stale`, in the persist tier's versioned
//!   record format ([`record`]: version 2 written; version 1, from an older
//!   graceway, still read).
//! - **Read-through.** Only when a degraded answer is needed and the memory
//!   tier has no servable copy, graceway asks Redis, within
//!   `cache.redis.timeout`; a hit is served (marked `graceway-fleet; hit` in
//!   `Cache-Status`) and kept locally. A healthy request never waits on
//!   Redis.
//! - **Never a new way to fail.** Every call is bounded by the timeout; a
//!   breaker stops asking a Redis that fails (3 failures in a row) and a
//!   background ping closes it again; the client reconnects by itself
//!   (`ConnectionManager`, the cluster client). A record of an unknown
//!   version or that does not decode is ignored and counted, never served.
//!
//! Keys are `<key_prefix>v1:<upstream>:<sha256 of the cache key>` (the
//! cache key in its string form, [`StoreKey::legacy`]; `v1` is the key's
//! version, the record carries its own): bounded in length whatever the
//! path and query, and never a token (copies of requests that carried the
//! client's own credentials are never stored). Only here, on a write or a
//! read of Redis, is a key hashed with SHA-256 for Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderName;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

mod conn;
pub mod fetch;

use conn::{answered, Client, Conn, Write};

use super::key::StoreKey;
use super::record;
use super::stored::{self, CachedResponse, Recorded};
use super::{Cache, MemKey};
use crate::config::{RedisConfig, RedisTarget};
use crate::generation::breaker::Breaker;
use crate::generation::UpstreamStatus;
use crate::metrics::fleet_metrics as metrics;
use crate::outcome::Reason;

/// Counts for `/status` (the metrics carry the same by result).
#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    dropped: AtomicU64,
}

pub struct FleetTier {
    config: RedisConfig,
    client: Client,
    conn: ArcSwapOption<Conn>,
    /// Opens after 3 failures in a row; while open, reads return at once
    /// and writes are dropped. A background ping closes it.
    breaker: Breaker,
    tx: mpsc::Sender<Write>,
    rx: Mutex<Option<mpsc::Receiver<Write>>>,
    counts: Counts,
    last_error: Mutex<Option<String>>,
    /// The state last logged, so each transition is logged once.
    logged_up: AtomicBool,
    corrupt_logged: AtomicBool,
}

impl FleetTier {
    /// Builds the client (nothing is connected yet: see [`FleetTier::start`]).
    pub fn new(config: &RedisConfig) -> Result<Arc<FleetTier>, String> {
        let client = Client::new(config)?;
        let (tx, rx) = mpsc::channel(config.queue);
        let m = metrics();
        m.fleet_up.set(0);
        Ok(Arc::new(FleetTier {
            config: config.clone(),
            client,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::new(3, Duration::from_secs(1), Duration::from_secs(30)),
            tx,
            rx: Mutex::new(Some(rx)),
            counts: Counts::default(),
            last_error: Mutex::new(None),
            logged_up: AtomicBool::new(false),
            corrupt_logged: AtomicBool::new(false),
        }))
    }

    /// Starts the connection, the writer and the health ping on the
    /// current runtime (the control service's). A connection made for the
    /// start ([`FleetTier::connect_for_start`]) is dropped first: its
    /// runtime has ended.
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        self.conn.store(None);
        let me = self.clone();
        tokio::spawn(async move { me.keep_connected().await });
        let me = self.clone();
        tokio::spawn(async move { me.write_loop(rx).await });
    }

    fn key(&self, key: &StoreKey) -> String {
        redis_key(&self.config.key_prefix, &key.upstream, &key.legacy())
    }

    /// The writes that keep `copy` in Redis under `ttl`: its key, and for a
    /// `Vary` variant also the key without it (another replica reads that
    /// first to learn the varied names).
    fn writes(&self, copy: &CachedResponse, ttl: Duration) -> Vec<Write> {
        let value = record::encode(&copy.recorded);
        let mut out = Vec::with_capacity(2);
        if copy.store.variant.is_some() {
            out.push(Write {
                key: self.key(&copy.store.primary_only()),
                value: value.clone(),
                ttl,
            });
        }
        out.push(Write {
            key: self.key(&copy.store),
            value,
            ttl,
        });
        out
    }

    /// Queues a copy for Redis; never waits (a full queue drops it).
    pub fn put(&self, copy: &CachedResponse, ttl: Duration) {
        for w in self.writes(copy, ttl) {
            if self.tx.try_send(w).is_err() {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                metrics().fleet_queue_dropped_total.inc();
            }
        }
    }

    /// Reads the copy of a cache key, within the timeout; `None` for a
    /// miss, a timeout, an error, a corrupt record, or while Redis is down.
    pub async fn get(&self, key: &StoreKey) -> Option<Recorded> {
        let cmd = redis::cmd("GET").arg(self.key(key)).to_owned();
        let got: Option<Vec<u8>> = self.query("get", &cmd).await?;
        let Some(bytes) = got else {
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            count("get", "miss");
            return None;
        };
        match record::decode(&bytes) {
            Some(d) => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                count("get", "hit");
                Some(d)
            }
            None => {
                self.counts.corrupt.fetch_add(1, Ordering::Relaxed);
                count("get", "corrupt");
                if !self.corrupt_logged.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "fleet tier: a record under {}* is of an unknown version or does not decode; ignored (counted in graceway_fleet_operations_total{{result=\"corrupt\"}}, logged once)",
                        self.config.key_prefix
                    );
                }
                None
            }
        }
    }

    /// Runs one command (a copy's `GET`, the fleet ledger's calls) within
    /// `cache.redis.timeout` and under the breaker: `None` while Redis is
    /// down, on a timeout or on an error, each counted under `op` in
    /// `graceway_fleet_operations_total`; the caller counts what an
    /// answer was (hit, miss, ok).
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &str,
        cmd: &redis::Cmd,
    ) -> Option<T> {
        let Some(conn) = self.usable() else {
            count(op, "skipped");
            return None;
        };
        let mut conn = (*conn).clone();
        match tokio::time::timeout(self.config.timeout, conn.run(cmd)).await {
            Err(_) => {
                self.failed(
                    &format!("{} timed out", op.to_ascii_uppercase()),
                    Reason::UpstreamTimeout,
                );
                count(op, "timeout");
                None
            }
            Ok(Err(e)) => {
                if answered(&e) {
                    self.counts.errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed(&e.to_string(), Reason::UpstreamUnreachable);
                }
                count(op, "error");
                None
            }
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
        }
    }

    /// Connects on the current runtime, within `limit`, for what must read
    /// Redis before the services start: the first generation's shared
    /// OAuth2 tokens, built on a short-lived start-up runtime (Pingora
    /// starts its own runtimes later, after a fork when it daemonizes).
    /// [`FleetTier::start`] drops this connection and connects again on
    /// the control service's runtime. True when connected.
    pub async fn connect_for_start(&self, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.client.connect(self.config.timeout)).await {
            Ok(Ok(c)) => {
                self.conn.store(Some(Arc::new(c)));
                self.succeeded();
                true
            }
            Ok(Err(e)) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                false
            }
            Err(_) => false,
        }
    }

    /// Waits at most `limit` for the first connection (a replica reads the
    /// ledger before its first request); true when connected.
    pub(super) async fn connected_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.usable().is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Start-up only, bounded: the connection task sets `conn`.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A connection subscribed to `channel` (see `conn::Client::subscribe`).
    pub(super) async fn subscribe(
        &self,
        channel: &str,
        start: usize,
    ) -> Result<redis::aio::PubSub, String> {
        self.client
            .subscribe(channel, self.config.timeout, start)
            .await
    }

    pub(super) fn key_prefix(&self) -> &str {
        &self.config.key_prefix
    }

    pub(super) fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The connection when Redis is believed up.
    fn usable(&self) -> Option<Arc<Conn>> {
        if self.breaker.is_open() {
            return None;
        }
        self.conn.load_full()
    }

    fn failed(&self, error: &str, reason: Reason) {
        self.counts.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        self.breaker.failure(reason);
        self.report();
    }

    fn succeeded(&self) {
        self.breaker.success();
        self.report();
    }

    /// Publishes `graceway_fleet_up` and logs a transition once.
    fn report(&self) {
        let up = self.conn.load().is_some() && !self.breaker.is_open();
        metrics().fleet_up.set(i64::from(up));
        if self.logged_up.swap(up, Ordering::Relaxed) != up {
            if up {
                log::info!("fleet tier: Redis {} is up", self.config.target.redacted());
            } else {
                log::warn!(
                    "fleet tier: Redis {} is down ({}); degraded answers use local copies only, retrying in the background",
                    self.config.target.redacted(),
                    self.last_error().unwrap_or_default()
                );
            }
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connects (retrying with backoff), then pings every second while the
    /// breaker is open or every 5 s while closed, to notice recovery and
    /// loss without waiting for traffic.
    async fn keep_connected(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            if self.conn.load().is_none() {
                match self.client.connect(self.config.timeout).await {
                    Ok(c) => {
                        self.conn.store(Some(Arc::new(c)));
                        self.breaker.success();
                        failures = 0;
                    }
                    Err(e) => {
                        // Once per distinct error (a wrong password, a
                        // refused connection), not once per retry.
                        if self.last_error().as_deref() != Some(e.as_str()) {
                            log::warn!(
                                "fleet tier: cannot connect to Redis {}: {e}; serving without it, retrying",
                                self.config.target.redacted()
                            );
                        }
                        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        self.report();
                        failures += 1;
                        let delay = crate::clock::backoff(
                            Duration::from_millis(200),
                            failures,
                            Duration::from_secs(10),
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
            }
            if let Some(conn) = self.conn.load_full() {
                let mut conn = (*conn).clone();
                let ping = redis::cmd("PING").to_owned();
                match tokio::time::timeout(Duration::from_secs(1), conn.run::<String>(&ping)).await
                {
                    Ok(Ok(_)) => self.succeeded(),
                    Ok(Err(e)) => self.failed(&e.to_string(), Reason::UpstreamUnreachable),
                    Err(_) => self.failed("PING timed out", Reason::UpstreamTimeout),
                }
            }
            self.report();
            let pause = if self.breaker.is_open() { 1 } else { 5 };
            tokio::time::sleep(Duration::from_secs(pause)).await;
        }
    }

    /// Writes queued copies in pipelined batches of up to 64.
    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Write>) {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 64).await > 0 {
            let n = batch.len() as u64;
            let Some(conn) = self.usable() else {
                self.counts.dropped.fetch_add(n, Ordering::Relaxed);
                metrics()
                    .fleet_operations_total
                    .with_label_values(&["set", "skipped"])
                    .inc_by(n);
                batch.clear();
                continue;
            };
            let mut conn = (*conn).clone();
            let limit = self.config.timeout.max(Duration::from_secs(1));
            let sent = tokio::time::timeout(limit, conn.set_all(&batch)).await;
            batch.clear();
            let result = match sent {
                Err(_) => Err((
                    "timeout",
                    "SET batch timed out".to_string(),
                    Reason::UpstreamTimeout,
                )),
                Ok(Err(e)) if answered(&e) => {
                    // Redis answered with an error (full under `noeviction`:
                    // OOM, a read-only replica): it is up, and reads still
                    // work, so the breaker stays closed.
                    self.counts.errors.fetch_add(n, Ordering::Relaxed);
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                    metrics()
                        .fleet_operations_total
                        .with_label_values(&["set", "error"])
                        .inc_by(n);
                    continue;
                }
                Ok(Err(e)) => Err(("error", e.to_string(), Reason::UpstreamUnreachable)),
                Ok(Ok(())) => Ok(()),
            };
            match result {
                Ok(()) => {
                    self.counts.writes.fetch_add(n, Ordering::Relaxed);
                    metrics()
                        .fleet_operations_total
                        .with_label_values(&["set", "ok"])
                        .inc_by(n);
                    self.succeeded();
                }
                Err((result, e, reason)) => {
                    metrics()
                        .fleet_operations_total
                        .with_label_values(&["set", result])
                        .inc_by(n);
                    self.failed(&e, reason);
                }
            }
        }
    }

    /// `/status`'s `cache.fleet`.
    pub fn status(&self) -> FleetView {
        let c = &self.counts;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FleetView {
            target: self.config.target.redacted(),
            mode: match self.config.target {
                RedisTarget::Single(_) => "single",
                RedisTarget::Cluster(_) => "cluster",
            }
            .to_string(),
            up: self.conn.load().is_some() && !self.breaker.is_open(),
            connected: self.conn.load().is_some(),
            breaker_open: self.breaker.is_open(),
            last_error: self.last_error(),
            hits: n(&c.hits),
            misses: n(&c.misses),
            writes: n(&c.writes),
            errors: n(&c.errors),
            corrupt: n(&c.corrupt),
            dropped: n(&c.dropped),
            timeout_ms: self.config.timeout.as_millis() as u64,
        }
    }
}

/// The fleet tier's read-through, on the cache that owns it.
impl Cache {
    /// A local miss's second chance, for a degraded answer only: the fleet
    /// tier's copy of this request (the primary key, then the variant its
    /// `Vary` names select), kept in the memory tier. True when one came.
    /// The only place a request waits on Redis, bounded by
    /// `cache.redis.timeout`.
    pub async fn fill_from_fleet(
        &self,
        upstream: &str,
        req: &RequestHeader,
        owner: Arc<UpstreamStatus>,
    ) -> bool {
        self.fill_stored_since(upstream, req, owner, None).await
    }

    /// [`Cache::fill_from_fleet`] of a copy stored at `since` or later
    /// only (another replica's fetch that this one waited for, see
    /// [`fetch`]), when `since` is given.
    pub async fn fill_stored_since(
        &self,
        upstream: &str,
        req: &RequestHeader,
        owner: Arc<UpstreamStatus>,
        since: Option<std::time::SystemTime>,
    ) -> bool {
        let new_enough = |r: &Recorded| since.is_none_or(|t| r.stored_at >= t);
        let Some(fleet) = &self.fleet else {
            return false;
        };
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return false;
        }
        let primary = self.primary_key(upstream, req);
        let store = StoreKey::of_request(upstream, req);
        let Some(found) = fleet.get(&store).await else {
            return false;
        };
        let names = stored::vary_names(&found.headers);
        if names.is_empty() {
            if !new_enough(&found) {
                return false;
            }
            self.adopt(primary, None, found, owner, store);
            return true;
        }
        let store = store.with_variant(&names, req);
        let Some(found) = fleet.get(&store).await.filter(new_enough) else {
            return false;
        };
        let variant = self.keyer.variant(&primary, &names, req);
        self.adopt(
            primary,
            Some((Arc::from(names), variant)),
            found,
            owner,
            store,
        );
        true
    }

    /// Keeps a copy read from the fleet tier in the memory tier (not
    /// written back to either tier outside the process).
    fn adopt(
        &self,
        primary: MemKey,
        variant: Option<(Arc<[HeaderName]>, MemKey)>,
        d: Recorded,
        owner: Arc<UpstreamStatus>,
        store: StoreKey,
    ) {
        let copy = Arc::new(CachedResponse::new(d, owner, store));
        self.insert(primary, variant, copy, false);
    }
}

/// The fleet tier in `/status` (`cache.fleet`); the password of the
/// target is shown as `***`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FleetView {
    pub target: String,
    /// `single` or `cluster`.
    pub mode: String,
    pub up: bool,
    pub connected: bool,
    pub breaker_open: bool,
    pub last_error: Option<String>,
    pub hits: u64,
    pub misses: u64,
    pub writes: u64,
    pub errors: u64,
    pub corrupt: u64,
    pub dropped: u64,
    pub timeout_ms: u64,
}

/// The Redis key of a cache key in its string form (`store_key`, see
/// [`StoreKey::legacy`]): bounded whatever the path, and never a token.
pub fn redis_key(prefix: &str, upstream: &str, store_key: &str) -> String {
    let digest = Sha256::digest(store_key.as_bytes());
    format!("{prefix}v1:{upstream}:{}", crate::config::hex(&digest))
}

pub(super) fn count(op: &str, result: &str) {
    metrics()
        .fleet_operations_total
        .with_label_values(&[op, result])
        .inc();
}

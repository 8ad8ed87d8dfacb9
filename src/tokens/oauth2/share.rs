//! One OAuth2 fetch per fleet (`oauth2.share: true`): the replicas sharing
//! the fleet tier use one token, fetched by one of them, until its refresh
//! point.
//!
//! - **Name.** The fleet's token for a provider and client is named by the
//!   SHA-256 of the token URL, client id, scope and audience ([`fleet_id`];
//!   each field length-prefixed, so no two combinations meet). The Redis
//!   side (`cache::oauth2`) keeps it under `<key_prefix>oauth2:v1:{<hex>}:token`
//!   and locks its fetch under `...:lock`.
//! - **Sealed.** The record ([`Record::V1`]: a random 96-bit nonce and the
//!   ChaCha20-Poly1305 ciphertext of value, expiry, fetch time and origin)
//!   is sealed with the key of `cache.redis.secret_file`, the Redis key's
//!   name as associated data (a record moved to another key does not open).
//!   Whoever writes Redis without the key can delete or spoil a record
//!   (spoilt ones are ignored and counted), never bring a value into use;
//!   an old record replayed is past its refresh point and is not used.
//! - **Single flight** ([`Fleet::obtain`]): a replica that needs a token
//!   (at start, at its refresh point, after a refusal) reads the record
//!   first and uses it when it holds a token this replica has not seen
//!   refused and not past its refresh point. Otherwise it takes the lock
//!   (`SET NX PX`, `oauth2.timeout` + 2 s), reads once more (the token may
//!   have come between the two calls), fetches, stores the record until
//!   the token's expiry and frees the lock if it still holds it. The
//!   others poll the record in [`POLL_STEP`]s for as long as the lock
//!   lives, taking the lock themselves when it is freed without a token
//!   (the holder's fetch failed, or it died), and fetch alone only when
//!   nothing came.
//! - **Never a new way to fail.** Every call is the fleet tier's bounded
//!   query; when Redis cannot be asked the replica fetches alone, as
//!   without `share`. Counted in `graceway_oauth2_share_total{result}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Minted, SourceError};
use crate::config::OAuth2Spec;
use crate::tokens::value::Secret;

/// How often a replica waiting on another's fetch reads the record.
pub const POLL_STEP: Duration = Duration::from_millis(100);

/// Added to `oauth2.timeout` for the lock's life: the holder's fetch is
/// bounded by the timeout, its two Redis calls by the fleet tier's.
pub const LOCK_MARGIN: Duration = Duration::from_secs(2);

/// Redis could not be asked (down, slow, its breaker open): the replica
/// decides alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// The Redis side of sharing (implemented by `cache::oauth2` over the
/// fleet tier's connection, breaker and timeout). Every call is bounded.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The Redis key of `slot` (`token`, `lock`) of the fleet's token `id`.
    fn key(&self, id: &[u8; 32], slot: &str) -> String;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unreachable>;
    /// `SET key value PX ttl`.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Unreachable>;
    /// `SET key holder NX PX ttl`: true when this call took it.
    async fn lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Unreachable>;
    /// Deletes `key` only while `holder` holds it.
    async fn unlock(&self, key: &str, holder: &str);
}

/// The fleet's name for the token of `spec`'s provider and client.
pub fn fleet_id(spec: &OAuth2Spec, client_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |tag: u8, v: Option<&str>| {
        h.update([tag]);
        match v {
            None => h.update([0]),
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
        }
    };
    field(b'u', Some(&spec.token_url));
    field(b'c', Some(client_id));
    field(b's', spec.scope.as_deref());
    field(b'a', spec.audience.as_deref());
    h.finalize().into()
}

/// The AEAD key of `cache.redis.secret_file`.
pub struct SealKey(LessSafeKey);

impl SealKey {
    pub fn new(bytes: &[u8; 32]) -> Option<SealKey> {
        UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .ok()
            .map(|k| SealKey(LessSafeKey::new(k)))
    }
}

/// What the record holds once opened.
#[derive(Serialize, Deserialize)]
struct Plain {
    value: String,
    /// Unix milliseconds; `None` when the provider stated no lifetime.
    expires_at_ms: Option<u64>,
    fetched_at_ms: u64,
    origin: String,
}

/// The record in Redis. A future version adds a variant.
#[derive(Serialize, Deserialize)]
enum Record {
    V1 {
        nonce: [u8; NONCE_LEN],
        sealed: Vec<u8>,
    },
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The record of `m` fetched by `origin`, sealed for the Redis key `at`;
/// `None` when the system's random numbers fail (nothing is stored).
pub fn seal(key: &SealKey, at: &str, m: &Minted, origin: &str) -> Option<Vec<u8>> {
    let plain = Plain {
        value: m.secret.expose().to_string(),
        expires_at_ms: m.expires_at.map(ms),
        fetched_at_ms: ms(m.fetched_at),
        origin: origin.to_string(),
    };
    let mut sealed = postcard::to_allocvec(&plain).ok()?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    key.0
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(at.as_bytes()),
            &mut sealed,
        )
        .ok()?;
    postcard::to_allocvec(&Record::V1 { nonce, sealed }).ok()
}

/// The token in a record read from the Redis key `at`, with the replica
/// that fetched it; `None` for anything that is not a record of a known
/// version sealed with this key for this key name, or whose value or
/// origin would not be accepted from a config (never panics).
pub fn open(key: &SealKey, at: &str, bytes: &[u8]) -> Option<(Minted, String)> {
    let Record::V1 { nonce, mut sealed } = postcard::from_bytes::<Record>(bytes).ok()?;
    let plain = key
        .0
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(at.as_bytes()),
            &mut sealed,
        )
        .ok()?;
    let p: Plain = postcard::from_bytes(plain).ok()?;
    if p.origin.len() > 256 || p.origin.chars().any(char::is_control) {
        return None;
    }
    let minted = Minted {
        secret: Secret::parse(&p.value).ok()?,
        expires_at: p.expires_at_ms.map(at_ms),
        fetched_at: at_ms(p.fetched_at_ms),
        shared_by: Some(p.origin.clone()),
    };
    Some((minted, p.origin))
}

/// Whether a token read from the fleet may serve here now: not the one
/// this replica saw refused, not past its refresh point or its expiry.
pub fn usable(m: &Minted, refused: Option<&Secret>, fraction: f64, now: SystemTime) -> bool {
    refused != Some(&m.secret)
        && m.expires_at.is_none_or(|e| e > now)
        && super::refresh_point(m.fetched_at, m.expires_at, fraction) > now
}

/// This replica's part in sharing: the store, the key, its name.
pub struct Fleet {
    store: Arc<dyn Store>,
    key: SealKey,
    origin: String,
    /// A record that does not open is logged once (and counted always).
    spoilt_logged: AtomicBool,
}

fn count(result: &str) {
    crate::metrics::fleet_metrics()
        .oauth2_share_total
        .with_label_values(&[result])
        .inc();
}

/// What reading the record found.
enum Found {
    Usable(Minted),
    Nothing,
    Unreachable,
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, key: &[u8; 32], origin: &str) -> Option<Fleet> {
        Some(Fleet {
            store,
            key: SealKey::new(key)?,
            origin: origin.to_string(),
            spoilt_logged: AtomicBool::new(false),
        })
    }

    /// The fleet's token for `spec` when one is usable here, else one
    /// fetched once for the fleet (or alone when Redis cannot be asked or
    /// no token came while the lock lived). `refused` is the token this
    /// replica saw refused, if that is why it asks.
    pub async fn obtain(
        &self,
        spec: &OAuth2Spec,
        refused: Option<&Secret>,
    ) -> Result<Minted, SourceError> {
        // The client id names the token; a source that cannot be read
        // fails the fetch the same way.
        let client_id = super::client_name(spec).await?;
        let id = fleet_id(spec, &client_id);
        let at = self.store.key(&id, "token");
        let lock = self.store.key(&id, "lock");
        match self.read(&at, spec, refused).await {
            Found::Usable(m) => return Ok(self.adopted(spec, m)),
            Found::Unreachable => return self.alone(spec, &at).await,
            Found::Nothing => {}
        }
        let holder = holder(&self.origin);
        let ttl = spec.timeout.saturating_add(LOCK_MARGIN);
        // Waiting ends with the lock's life, however slow Redis answers;
        // the step count bounds the loop on its own too.
        let start = tokio::time::Instant::now();
        let steps = (ttl.as_millis() / POLL_STEP.as_millis()).clamp(1, 100_000) as u32;
        for step in 0..=steps {
            if step > 0 {
                if start.elapsed() >= ttl {
                    break;
                }
                tokio::time::sleep(POLL_STEP).await;
                match self.read(&at, spec, refused).await {
                    Found::Usable(m) => return Ok(self.adopted(spec, m)),
                    Found::Unreachable => return self.alone(spec, &at).await,
                    Found::Nothing => {}
                }
            }
            match self.store.lock(&lock, &holder, ttl).await {
                Err(Unreachable) => return self.alone(spec, &at).await,
                Ok(false) => continue,
                Ok(true) => {}
            }
            // The holder before may have stored its token between this
            // replica's read and its lock.
            if let Found::Usable(m) = self.read(&at, spec, refused).await {
                self.store.unlock(&lock, &holder).await;
                return Ok(self.adopted(spec, m));
            }
            let got = super::fetch_here(spec).await;
            if let Ok(m) = &got {
                self.publish(&at, m).await;
                count("fetched");
            }
            self.store.unlock(&lock, &holder).await;
            return got;
        }
        log::warn!(
            "oauth2 {}: no token from the fleet within the lock's {}s; fetching alone",
            spec.token_url,
            ttl.as_secs()
        );
        self.alone(spec, &at).await
    }

    fn adopted(&self, spec: &OAuth2Spec, m: Minted) -> Minted {
        count("shared");
        log::info!(
            "oauth2 {}: token {} shared by replica {} {}s ago (oauth2.share)",
            spec.token_url,
            m.secret.fingerprint(),
            m.shared_by.as_deref().unwrap_or("?"),
            SystemTime::now()
                .duration_since(m.fetched_at)
                .unwrap_or_default()
                .as_secs()
        );
        m
    }

    /// Fetches for this replica alone; the token is still offered to the
    /// fleet (a bounded write, skipped while Redis is down).
    async fn alone(&self, spec: &OAuth2Spec, at: &str) -> Result<Minted, SourceError> {
        count("alone");
        let got = super::fetch_here(spec).await;
        if let Ok(m) = &got {
            self.publish(at, m).await;
        }
        got
    }

    async fn read(&self, at: &str, spec: &OAuth2Spec, refused: Option<&Secret>) -> Found {
        let bytes = match self.store.get(at).await {
            Err(Unreachable) => return Found::Unreachable,
            Ok(None) => return Found::Nothing,
            Ok(Some(b)) => b,
        };
        let Some((mut m, origin)) = open(&self.key, at, &bytes) else {
            count("undecryptable");
            if !self.spoilt_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "oauth2 {}: the fleet's token record does not open with cache.redis.secret_file (another key, or written by someone without it); ignored (counted in graceway_oauth2_share_total{{result=\"undecryptable\"}}, logged once)",
                    spec.token_url
                );
            }
            return Found::Nothing;
        };
        if origin == self.origin {
            m.shared_by = None;
        }
        if usable(&m, refused, spec.refresh_fraction, SystemTime::now()) {
            Found::Usable(m)
        } else {
            Found::Nothing
        }
    }

    async fn publish(&self, at: &str, m: &Minted) {
        let now = SystemTime::now();
        let ttl = m.expires_at.map_or(Duration::from_secs(3600), |e| {
            e.duration_since(now).unwrap_or_default()
        });
        if ttl < Duration::from_secs(1) {
            return;
        }
        if let Some(record) = seal(&self.key, at, m, &self.origin) {
            let _ = self.store.put(at, record, ttl).await;
        }
    }
}

/// The lock's value: the replica's name and a random part, so that only
/// this attempt frees it.
fn holder(origin: &str) -> String {
    let mut r = [0u8; 8];
    // Without random numbers the attempt is still told apart by the time.
    if SystemRandom::new().fill(&mut r).is_err() {
        r = ms(SystemTime::now()).to_le_bytes();
    }
    format!("{origin} {}", crate::config::hex(&r))
}

#[cfg(test)]
mod tests;

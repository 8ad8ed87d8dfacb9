//! The sealed record, the fleet's name for a token, and the flow's
//! decisions against an in-memory store.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

const KEY: [u8; 32] = [7; 32];
const AT: &str = "graceway:oauth2:v1:{ab}:token";

fn minted(value: &str, fetched_ago: u64, lifetime: u64) -> Minted {
    let now = SystemTime::now();
    let fetched_at = now - Duration::from_secs(fetched_ago);
    Minted {
        secret: Secret::parse(value).unwrap(),
        expires_at: Some(fetched_at + Duration::from_secs(lifetime)),
        fetched_at,
        shared_by: None,
    }
}

fn key() -> SealKey {
    SealKey::new(&KEY).unwrap()
}

#[test]
fn a_record_opens_with_its_key_under_its_name_only_and_never_holds_the_value() {
    let m = minted("tok-shared-value-1", 0, 600);
    let b = seal(&key(), AT, &m, "replica-a/42").unwrap();
    assert!(
        !b.windows(10).any(|w| w == b"tok-shared"),
        "the value is not in the record in clear"
    );
    assert!(!b.windows(9).any(|w| w == b"replica-a"), "nor the origin");
    let (back, origin) = open(&key(), AT, &b).unwrap();
    assert_eq!(back.secret, m.secret);
    assert_eq!(origin, "replica-a/42");
    assert_eq!(back.shared_by.as_deref(), Some("replica-a/42"));
    assert_eq!(ms(back.fetched_at), ms(m.fetched_at));
    assert_eq!(back.expires_at.map(ms), m.expires_at.map(ms));
    // Two seals of one token differ (a fresh nonce each).
    assert_ne!(seal(&key(), AT, &m, "replica-a/42").unwrap(), b);
    // Moved to another key, or opened with another key: nothing.
    assert!(open(&key(), "graceway:oauth2:v1:{cd}:token", &b).is_none());
    assert!(open(&SealKey::new(&[8; 32]).unwrap(), AT, &b).is_none());
    // Every truncation, an unknown version, a flipped ciphertext byte.
    for n in 0..b.len() {
        assert!(open(&key(), AT, &b[..n]).is_none(), "{n} of {}", b.len());
    }
    let mut unknown = b.clone();
    unknown[0] = 3;
    assert!(open(&key(), AT, &unknown).is_none());
    let mut flipped = b.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(open(&key(), AT, &flipped).is_none());
}

#[test]
fn a_record_whose_origin_would_forge_a_log_line_is_refused() {
    let m = minted("tok-shared-value-1", 0, 600);
    for origin in ["a\nFAKE LOG LINE", "\u{1b}[2J", &"r".repeat(257)] {
        let b = seal(&key(), AT, &m, origin).unwrap();
        assert!(open(&key(), AT, &b).is_none(), "{origin:?}");
    }
}

fn spec(extra: &str) -> OAuth2Spec {
    let yaml = format!(
        "upstreams:\n  - {{ name: a, url: 'http://127.0.0.1:1', credentials: {{ tokens: [{{ oauth2: {{ token_url: 'http://127.0.0.1:9/token', client_id: c, client_secret_env: S, timeout: 1s{extra} }} }}] }} }}\ncache: {{ redis: {{ url: 'redis://127.0.0.1:9', secret_file: key }} }}\n"
    );
    let cfg = crate::config::parse(&yaml, std::path::Path::new("/cfg")).unwrap();
    let creds = cfg.upstreams[0].credentials.as_ref().unwrap();
    match &creds.tokens[0].source {
        crate::config::SourceSpec::OAuth2(o) => (**o).clone(),
        _ => unreachable!("an oauth2 source"),
    }
}

#[test]
fn the_fleet_name_covers_url_client_scope_and_audience_unambiguously() {
    let base = spec("");
    let id = fleet_id(&base, "c");
    assert_eq!(id, fleet_id(&spec(""), "c"), "stable");
    assert_ne!(id, fleet_id(&base, "d"), "the client id");
    let scoped = spec(", scope: ''");
    assert_ne!(id, fleet_id(&scoped, "c"), "no scope is not an empty one");
    // A field's end cannot move into the next one.
    let a = spec(", scope: 'ab', audience: 'c'");
    let b = spec(", scope: 'a', audience: 'bc'");
    assert_ne!(fleet_id(&a, "c"), fleet_id(&b, "c"));
    let mut other_url = base.clone();
    other_url.token_url.push('x');
    assert_ne!(id, fleet_id(&other_url, "c"));
}

#[test]
fn a_fleet_token_serves_until_its_refresh_point_unless_seen_refused() {
    let now = SystemTime::now();
    // 100 s lifetime, refresh at 80 %.
    assert!(usable(&minted("tok-a", 10, 100), None, 0.8, now));
    assert!(
        !usable(&minted("tok-a", 81, 100), None, 0.8, now),
        "past the refresh point"
    );
    assert!(
        !usable(&minted("tok-a", 200, 100), None, 0.8, now),
        "expired"
    );
    let refused = Secret::parse("tok-a").unwrap();
    assert!(!usable(&minted("tok-a", 10, 100), Some(&refused), 0.8, now));
    assert!(usable(&minted("tok-b", 10, 100), Some(&refused), 0.8, now));
}

/// Redis in a map; `down` makes every call unreachable.
#[derive(Default)]
struct MemStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
    down: bool,
    calls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Store for MemStore {
    fn key(&self, id: &[u8; 32], slot: &str) -> String {
        format!("t:{{{}}}:{slot}", crate::config::hex(id))
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unreachable> {
        self.calls.lock().unwrap().push(format!("GET {key}"));
        if self.down {
            return Err(Unreachable);
        }
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    async fn put(&self, key: &str, value: Vec<u8>, _: Duration) -> Result<(), Unreachable> {
        self.calls.lock().unwrap().push(format!("SET {key}"));
        if self.down {
            return Err(Unreachable);
        }
        self.map.lock().unwrap().insert(key.into(), value);
        Ok(())
    }
    async fn lock(&self, key: &str, holder: &str, _: Duration) -> Result<bool, Unreachable> {
        self.calls.lock().unwrap().push(format!("LOCK {key}"));
        if self.down {
            return Err(Unreachable);
        }
        let mut m = self.map.lock().unwrap();
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.into(), holder.as_bytes().to_vec());
        Ok(true)
    }
    async fn unlock(&self, key: &str, holder: &str) {
        self.calls.lock().unwrap().push(format!("UNLOCK {key}"));
        let mut m = self.map.lock().unwrap();
        if m.get(key).is_some_and(|v| v == holder.as_bytes()) {
            m.remove(key);
        }
    }
}

fn fleet(store: Arc<MemStore>) -> Fleet {
    Fleet::new(store, &KEY, "replica-b/7").unwrap()
}

#[tokio::test]
async fn a_usable_fleet_token_is_taken_without_a_fetch_and_a_refused_one_is_not() {
    let store = Arc::new(MemStore::default());
    let s = spec(", share: true");
    let id = fleet_id(&s, "c");
    let at = store.key(&id, "token");
    let m = minted("tok-from-a", 5, 600);
    let record = seal(&key(), &at, &m, "replica-a/42").unwrap();
    store.map.lock().unwrap().insert(at.clone(), record);
    let f = fleet(store.clone());
    // The provider at 127.0.0.1:9 is never asked: a fetch would fail.
    let got = f.obtain(&s, None).await.unwrap();
    assert_eq!(got.secret, m.secret);
    assert_eq!(got.shared_by.as_deref(), Some("replica-a/42"));
    assert_eq!(store.calls.lock().unwrap().len(), 1, "one GET");
    // Seen refused here: the lock is taken and the fetch tried (and fails,
    // the provider is not there); the lock is freed again.
    store.calls.lock().unwrap().clear();
    assert!(f.obtain(&s, Some(&m.secret)).await.is_err());
    let calls = store.calls.lock().unwrap().clone();
    let lock = store.key(&id, "lock");
    assert_eq!(
        calls,
        [
            format!("GET {at}"),
            format!("LOCK {lock}"),
            format!("GET {at}"),
            format!("UNLOCK {lock}")
        ]
    );
    assert!(!store.map.lock().unwrap().contains_key(&lock));
}

#[tokio::test]
async fn a_spoilt_record_is_ignored_and_redis_down_means_alone() {
    let store = Arc::new(MemStore::default());
    let s = spec(", share: true");
    let at = store.key(&fleet_id(&s, "c"), "token");
    store
        .map
        .lock()
        .unwrap()
        .insert(at.clone(), b"not a record".to_vec());
    let spoilt = || {
        crate::metrics::fleet_metrics()
            .oauth2_share_total
            .with_label_values(&["undecryptable"])
            .get()
    };
    let before = spoilt();
    assert!(fleet(store.clone()).obtain(&s, None).await.is_err());
    assert!(spoilt() > before, "counted");
    let calls = store.calls.lock().unwrap().clone();
    assert!(calls.iter().any(|c| c.starts_with("LOCK ")), "{calls:?}");

    let down = Arc::new(MemStore {
        down: true,
        ..Default::default()
    });
    let alone = || {
        crate::metrics::fleet_metrics()
            .oauth2_share_total
            .with_label_values(&["alone"])
            .get()
    };
    let before = alone();
    assert!(fleet(down.clone()).obtain(&s, None).await.is_err());
    assert!(alone() > before);
    let calls = down.calls.lock().unwrap().clone();
    assert!(!calls.iter().any(|c| c.starts_with("LOCK ")), "{calls:?}");
}

proptest::proptest! {
    /// The opener reads what anyone with write access to Redis wrote:
    /// random bytes and mutated records never panic, and a mutated record
    /// never opens (the tag covers every byte).
    #[test]
    fn fuzz_shared_token_records_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        flips in proptest::collection::vec((0usize..256, 1u8..=255), 1..6),
    ) {
        let k = key();
        let _ = open(&k, AT, &bytes);
        let good = seal(&k, AT, &minted("tok-fuzzed-value", 0, 600), "r/1").unwrap();
        let mut b = good.clone();
        for (at, x) in flips {
            let i = at % b.len();
            b[i] ^= x;
        }
        if b != good {
            proptest::prop_assert!(open(&k, AT, &b).is_none());
        }
    }
}

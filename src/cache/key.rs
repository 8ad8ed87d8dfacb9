//! Cache keys, in two kinds, because they have two jobs:
//!
//! - [`MemKey`], what the memory tier looks copies up by on every request:
//!   a 128-bit SipHash-2-4 of the upstream, path and query (and for a
//!   `Vary` variant, the varied request headers), keyed with a random key
//!   drawn per [`Cache`](super::Cache). Cheap (a few hundred instructions),
//!   and never leaves the process.
//! - [`StoreKey`], what the persist file and Redis keep copies under: the
//!   upstream's name and SHA-256 digests of the same inputs. Stable across
//!   restarts and replicas, so it is what a copy read back from either is
//!   known by; and a digest, so that neither ever holds a raw path or query
//!   (a client's `?api_key=` included). Computed only when a copy is kept
//!   and when a tier outside the process is read, never per request.
//!
//! A copy read back from the persist file is known only by its
//! [`StoreKey`] (the path it came from is not kept), so the memory tier
//! holds it under [`Keyer::stored`] until a request asks for it, and then
//! moves it to that request's [`MemKey`] (see `Cache::find_loaded`).

use std::hash::Hasher;

use http::HeaderName;
use pingora::http::RequestHeader;
use sha2::{Digest as _, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};

/// A request's path and query, as every key reads it.
pub(super) fn path_and_query(req: &RequestHeader) -> &str {
    req.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The memory tier's key of a copy (see the module doc).
///
/// Why keyed and 128 bits: clients choose paths, queries and header
/// values, and two requests with one key are answered with one copy. An
/// unkeyed or narrow hash would let a client craft a path whose key is
/// another path's and have its copy served for that one (or have it
/// served someone else's). SipHash is a pseudo-random function of its
/// secret key: without the key, which never leaves the process, no one
/// can compute a key, let alone find two inputs sharing one, and by
/// chance two of 2^32 distinct inputs share a 128-bit key with odds of
/// about 2^-65. So a key stands for its inputs, and no comparison of the
/// inputs themselves is needed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemKey(u128);

impl MemKey {
    /// 64 of the key's bits, for the admission doorkeeper (already keyed
    /// and uniform, so no second hash is needed).
    pub(super) fn low64(&self) -> u64 {
        self.0 as u64
    }

    /// The other 64.
    pub(super) fn high64(&self) -> u64 {
        (self.0 >> 64) as u64
    }

    #[cfg(test)]
    pub(super) fn for_tests(n: u128) -> MemKey {
        MemKey(n)
    }
}

/// The secret key of [`MemKey`]s, one per cache.
pub(super) struct Keyer {
    k0: u64,
    k1: u64,
}

/// Input domains of [`Keyer`], so that no request's key is a stored key's.
const PRIMARY: u8 = 1;
const VARIANT: u8 = 2;
const STORED: u8 = 3;

impl Keyer {
    /// A key drawn at random: std's `RandomState` is seeded from the
    /// operating system's random source, and two SipHash outputs under
    /// that seed are 128 bits no one outside the process can predict.
    pub(super) fn new() -> Keyer {
        use std::hash::BuildHasher;
        let seed = std::hash::RandomState::new();
        Keyer {
            k0: seed.hash_one(0x6772_6163_6577_6179u64),
            k1: seed.hash_one(0x6d65_6d6b_6579_0001u64),
        }
    }

    /// A hasher that has read the domain and the length of the first
    /// field as one 8-byte word (one SipHash block: the fields after it
    /// cannot shift into it, `a` + `bc` is not `ab` + `c`).
    fn hasher(&self, domain: u8, first_len: usize) -> SipHasher24 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(&(u64::from(domain) | (first_len as u64) << 8).to_le_bytes());
        h
    }

    /// The key of a request's copy without `Vary`: three writes, one
    /// finish, no allocation (a few hundred instructions).
    pub(super) fn primary(&self, upstream: &str, path_and_query: &str) -> MemKey {
        let mut h = self.hasher(PRIMARY, upstream.len());
        h.write(upstream.as_bytes());
        h.write(path_and_query.as_bytes());
        MemKey(h.finish128().as_u128())
    }

    /// The key of one variant of `primary`: the request's values of the
    /// `Vary` names, read as [`StoreKey::with_variant`] reads them, so both
    /// keys pick the same copy.
    pub(super) fn variant(
        &self,
        primary: &MemKey,
        names: &[HeaderName],
        req: &RequestHeader,
    ) -> MemKey {
        let mut h = self.hasher(VARIANT, 16);
        h.write(&primary.0.to_le_bytes());
        feed_variant(names, req, &mut |b| h.write(b));
        MemKey(h.finish128().as_u128())
    }

    /// Where the memory tier holds a copy read from the persist file until
    /// a request asks for it.
    pub(super) fn stored(&self, key: &StoreKey) -> MemKey {
        let mut h = self.hasher(STORED, key.upstream.len());
        h.write(key.upstream.as_bytes());
        h.write(&key.primary);
        if let Some(v) = &key.variant {
            h.write(v);
        }
        MemKey(h.finish128().as_u128())
    }
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// A copy's key in the persist file and in Redis (see the module doc):
/// serialized with serde (postcard) as the persist file's key, and written
/// as [`StoreKey::legacy`] under SHA-256 for Redis.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreKey {
    pub upstream: String,
    /// SHA-256 of the path and query.
    pub primary: Digest,
    /// SHA-256 of the varied request headers, for one `Vary` variant.
    pub variant: Option<Digest>,
}

impl StoreKey {
    /// The key of the copy without `Vary` of `path_and_query`.
    pub fn primary_of(upstream: &str, path_and_query: &str) -> StoreKey {
        StoreKey {
            upstream: upstream.to_string(),
            primary: Sha256::digest(path_and_query.as_bytes()).into(),
            variant: None,
        }
    }

    /// The key of a request's copy without `Vary`.
    pub fn of_request(upstream: &str, req: &RequestHeader) -> StoreKey {
        StoreKey::primary_of(upstream, path_and_query(req))
    }

    /// This key's variant for the request's values of the `Vary` names:
    /// SHA-256 of `\nname=v1,v2` per name, `Accept-Encoding` as its set of
    /// codings.
    pub fn with_variant(&self, names: &[HeaderName], req: &RequestHeader) -> StoreKey {
        let mut h = Sha256::new();
        feed_variant(names, req, &mut |b| h.update(b));
        StoreKey {
            variant: Some(h.finalize().into()),
            ..self.primary_only()
        }
    }

    /// The key without its variant: the copy another replica reads first
    /// to learn the `Vary` names.
    pub fn primary_only(&self) -> StoreKey {
        StoreKey {
            upstream: self.upstream.clone(),
            primary: self.primary,
            variant: None,
        }
    }

    /// The string form keys had before they were typed: `upstream`, `\n`,
    /// the hex primary digest, and `\n` and the hex variant digest for a
    /// variant. Redis keys are the SHA-256 of it (see
    /// [`super::fleet::redis_key`]), unchanged so that replicas of either
    /// version read each other's copies.
    pub fn legacy(&self) -> String {
        let mut k = String::with_capacity(self.upstream.len() + 130);
        k.push_str(&self.upstream);
        k.push('\n');
        crate::config::push_hex(&mut k, &self.primary);
        if let Some(v) = &self.variant {
            k.push('\n');
            crate::config::push_hex(&mut k, v);
        }
        k
    }

    /// The persist file's form of the key (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of a string, arrays and an option into a
        // Vec has no failure case; an empty key would only miss.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Reads [`StoreKey::to_bytes`] back; `None` for anything else,
    /// trailing bytes included (never panics).
    pub fn from_bytes(b: &[u8]) -> Option<StoreKey> {
        match postcard::take_from_bytes::<StoreKey>(b) {
            Ok((k, [])) => Some(k),
            _ => None,
        }
    }

    /// Reads a key of the persist file's first table, in either of its
    /// string forms: [`StoreKey::legacy`], or the raw form written before
    /// keys were hashed (`upstream\npath?query`, then `\nname=value` per
    /// varied header), which is hashed here.
    pub fn from_legacy(key: &str) -> Option<StoreKey> {
        let (upstream, rest) = key.split_once('\n')?;
        let mut lines = rest.split('\n');
        let first = lines.next()?;
        let second = lines.next();
        if let (Some(primary), None) = (parse_digest(first), lines.next()) {
            let variant = match second.map(parse_digest) {
                None => None,
                Some(Some(v)) => Some(v),
                // A path that looks like a digest, then a varied header.
                Some(None) => return Some(raw(upstream, first, &rest[first.len()..])),
            };
            return Some(StoreKey {
                upstream: upstream.to_string(),
                primary,
                variant,
            });
        }
        Some(raw(upstream, first, &rest[first.len()..]))
    }
}

/// The key of a raw-form legacy key: its path and query hashed, and its
/// `\nname=value` lines hashed as the variant.
fn raw(upstream: &str, path_and_query: &str, varied: &str) -> StoreKey {
    StoreKey {
        variant: (!varied.is_empty()).then(|| Sha256::digest(varied.as_bytes()).into()),
        ..StoreKey::primary_of(upstream, path_and_query)
    }
}

/// [`StoreKey::legacy`] of the copy without `Vary` of `path_and_query`
/// (what Redis keys are the SHA-256 of).
pub fn key_of(upstream: &str, path_and_query: &str) -> String {
    StoreKey::primary_of(upstream, path_and_query).legacy()
}

/// 64 lower-case hex digits.
fn parse_digest(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(d)
}

/// The bytes both variant keys hash: `\nname=v1,v2` per name (the values
/// of repeated header lines joined as one list, RFC 9110 §5.3), and for
/// `Accept-Encoding` its set of codings.
fn feed_variant(names: &[HeaderName], req: &RequestHeader, out: &mut dyn FnMut(&[u8])) {
    for n in names {
        out(b"\n");
        out(n.as_str().as_bytes());
        out(b"=");
        if n == http::header::ACCEPT_ENCODING {
            out(normalized_codings(req).as_bytes());
            continue;
        }
        for (i, v) in req.headers.get_all(n).iter().enumerate() {
            if i > 0 {
                out(b",");
            }
            out(v.as_bytes());
        }
    }
}

/// `Accept-Encoding` as the set of codings it accepts (RFC 9111 §4.1
/// allows normalizing before matching `Vary`): order, case, whitespace and
/// weights ignored, `q=0` codings left out. `gzip, deflate` and
/// `deflate,gzip;q=0.8` select the same copy.
fn normalized_codings(req: &RequestHeader) -> String {
    let mut codings: Vec<String> = req
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let mut it = part.split(';');
            let name = it.next()?.trim().to_ascii_lowercase();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (!name.is_empty() && !refused).then_some(name)
        })
        .collect();
    codings.sort();
    codings.dedup();
    codings.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn store_keys_hold_digests_never_the_path_or_query() {
        let r = req("/v1/items?api_key=CLIENTSECRET&x=1", &[]);
        let k = StoreKey::of_request("emoji", &r);
        let text = k.legacy();
        assert!(text.starts_with("emoji\n") && text.len() == "emoji\n".len() + 64);
        assert!(!text.contains("items") && !text.contains("CLIENTSECRET"));
        let bytes = k.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("items"));
        assert_eq!(text, key_of("emoji", "/v1/items?api_key=CLIENTSECRET&x=1"));
        assert_ne!(k, StoreKey::of_request("emoji", &req("/v1/items?x=1", &[])));
        assert_ne!(k, StoreKey::of_request("other", &r));
        let names = [HeaderName::from_static("accept-language")];
        let a = k.with_variant(&names, &req("/", &[("accept-language", "de")]));
        let b = k.with_variant(&names, &req("/", &[("accept-language", "fr")]));
        assert!(a.legacy().starts_with(&format!("{text}\n")));
        assert_ne!(a, b);
        assert_eq!(a.primary_only(), k);
        // Repeated header lines are one list.
        let c = k.with_variant(&names, &req("/", &[("accept-language", "de,fr")]));
        let d = k.with_variant(
            &names,
            &req("/", &[("accept-language", "de"), ("accept-language", "fr")]),
        );
        assert_eq!(c, d);
        // Accept-Encoding: the set of codings, however written.
        let ae = [http::header::ACCEPT_ENCODING];
        let v = |s: &str| k.with_variant(&ae, &req("/", &[("accept-encoding", s)]));
        assert_eq!(v("gzip, deflate"), v("deflate,gzip"));
        assert_eq!(v("gzip, deflate"), v("Deflate;q=0.8 , GZIP"));
        assert_eq!(v("gzip, deflate"), v("gzip, deflate, br;q=0"));
        assert_ne!(v("gzip, deflate"), v("gzip"));
        assert_ne!(v("gzip"), v("br"));
    }

    #[test]
    fn memory_keys_are_keyed_per_cache_and_pick_what_store_keys_pick() {
        let (a, b) = (Keyer::new(), Keyer::new());
        let p = a.primary("emoji", "/v1/x?a=1");
        assert_eq!(p, a.primary("emoji", "/v1/x?a=1"));
        assert_ne!(
            p,
            b.primary("emoji", "/v1/x?a=1"),
            "another key, another hash"
        );
        assert_ne!(p, a.primary("emoji", "/v1/x?a=2"));
        assert_ne!(p, a.primary("emojI", "/v1/x?a=1"));
        // The upstream's name cannot run into the path.
        assert_ne!(a.primary("ab", "/c"), a.primary("a", "b/c"));
        let names = [
            HeaderName::from_static("accept-language"),
            http::header::ACCEPT_ENCODING,
        ];
        let r1 = req(
            "/",
            &[
                ("accept-language", "de,fr"),
                ("accept-encoding", "gzip, br"),
            ],
        );
        let r2 = req(
            "/",
            &[
                ("accept-language", "de"),
                ("accept-language", "fr"),
                ("accept-encoding", "BR,gzip;q=0.5"),
            ],
        );
        let r3 = req(
            "/",
            &[("accept-language", "fr"), ("accept-encoding", "gzip")],
        );
        let v = |r: &RequestHeader| a.variant(&p, &names, r);
        let s = |r: &RequestHeader| StoreKey::primary_of("emoji", "/").with_variant(&names, r);
        assert_eq!(v(&r1), v(&r2));
        assert_eq!(s(&r1), s(&r2));
        assert_ne!(v(&r1), v(&r3));
        assert_ne!(s(&r1), s(&r3));
        assert_ne!(v(&r1), a.variant(&a.primary("emoji", "/y"), &names, &r1));
        // Stored keys live in their own domain.
        let k = StoreKey::primary_of("emoji", "/v1/x?a=1");
        assert_ne!(a.stored(&k), p);
        assert_ne!(a.stored(&k), a.stored(&k.with_variant(&names, &r1)));
    }

    #[test]
    fn legacy_keys_read_back_in_both_string_forms() {
        let r = req("/v1/x?a=1", &[("accept-language", "de, en")]);
        let primary = StoreKey::of_request("emoji", &r);
        let names = [HeaderName::from_static("accept-language")];
        let variant = primary.with_variant(&names, &r);
        assert_eq!(
            StoreKey::from_legacy(&primary.legacy()),
            Some(primary.clone())
        );
        assert_eq!(
            StoreKey::from_legacy(&variant.legacy()),
            Some(variant.clone())
        );
        // The form written before keys were hashed maps to the same keys.
        assert_eq!(StoreKey::from_legacy("emoji\n/v1/x?a=1"), Some(primary));
        assert_eq!(
            StoreKey::from_legacy("emoji\n/v1/x?a=1\naccept-language=de, en"),
            Some(variant)
        );
        assert!(StoreKey::from_legacy("no newline").is_none());
        // A digest-looking first line with a second that is not one is a
        // raw path with a varied header.
        let d = "a".repeat(64);
        let k = StoreKey::from_legacy(&format!("u\n{d}\nx=1")).unwrap();
        assert_eq!(
            k,
            StoreKey::primary_of("u", &d).with_variant_digest_of("\nx=1")
        );
    }

    impl StoreKey {
        fn with_variant_digest_of(self, varied: &str) -> StoreKey {
            StoreKey {
                variant: Some(Sha256::digest(varied.as_bytes()).into()),
                ..self
            }
        }
    }

    #[test]
    fn persist_form_round_trips_and_refuses_garbage() {
        let k = StoreKey::primary_of("emoji", "/v1/x");
        let names = [HeaderName::from_static("accept-language")];
        let v = k.with_variant(&names, &req("/", &[("accept-language", "de")]));
        for key in [&k, &v] {
            let b = key.to_bytes();
            assert_eq!(StoreKey::from_bytes(&b).as_ref(), Some(key));
            for cut in 0..b.len() {
                assert!(StoreKey::from_bytes(&b[..cut]).is_none(), "cut at {cut}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(StoreKey::from_bytes(&longer).is_none());
        }
        // A legacy string key is not a typed key.
        assert!(StoreKey::from_bytes(k.legacy().as_bytes()).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn key_readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StoreKey::from_bytes(&bytes);
            let _ = StoreKey::from_legacy(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn typed_keys_round_trip(upstream in "[a-z0-9_-]{1,40}", p in any::<[u8; 32]>(), v in any::<Option<[u8; 32]>>()) {
            let k = StoreKey { upstream, primary: p, variant: v };
            prop_assert_eq!(StoreKey::from_bytes(&k.to_bytes()), Some(k.clone()));
            prop_assert_eq!(StoreKey::from_legacy(&k.legacy()), Some(k));
        }
    }
}

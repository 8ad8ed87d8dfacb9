//! The record a copy is kept as in the persist file and in Redis.
//!
//! A record starts with its version byte; a decoder that does not know the
//! version refuses the record (it is never served).
//! - **Version 2**, written: the byte 2, then [`V2`] serialized with serde
//!   (postcard: varints, length-prefixed strings and bytes, a stable wire
//!   format). The version is the first field of the serialized tuple.
//! - **Version 1**, read only: the hand-written format graceway wrote
//!   before (see [`decode_v1`]). The persist file rewrites its version-1
//!   records as version 2 when it opens (`persist`, read once); a
//!   version-1 record in Redis is read as it is until its TTL ends it.
//!
//! A version 3 adds its struct and an arm in [`decode`] and
//! [`stored_at`], and `FORMAT_VERSION` moves on; versions 1 and 2 stay
//! readable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::stored::Recorded;

/// The version [`encode`] writes.
pub const FORMAT_VERSION: u8 = 2;

/// More headers than any copy has: a record claiming more is damaged.
const MAX_HEADERS: usize = 1000;

/// Version 2 of a record. Times are Unix milliseconds, durations
/// milliseconds (as in version 1).
#[derive(Serialize, Deserialize)]
struct V2<'a> {
    stored_at_ms: u64,
    fresh_for_ms: u64,
    must_revalidate: bool,
    stale_if_error_ms: Option<u64>,
    #[serde(borrow)]
    headers: Vec<(&'a str, Raw<'a>)>,
    #[serde(borrow)]
    body: Raw<'a>,
}

/// Bytes written as one length-prefixed run (serde would otherwise write
/// a `&[u8]` element by element) and read back borrowed, without a copy.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(d).map(Raw)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The record of a copy, in the current version.
pub fn encode(s: &Recorded) -> Vec<u8> {
    let v = V2 {
        stored_at_ms: ms(s.stored_at.duration_since(UNIX_EPOCH).unwrap_or_default()),
        fresh_for_ms: ms(s.fresh_for),
        must_revalidate: s.must_revalidate,
        stale_if_error_ms: s.stale_if_error.map(ms),
        headers: s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Raw(v.as_bytes())))
            .collect(),
        body: Raw(&s.body),
    };
    let room = s.body.len()
        + 64
        + s.headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    // Writing into a Vec cannot fail: postcard's only errors are a full
    // fixed buffer and types it does not support, and V2 has neither.
    postcard::to_extend(&(FORMAT_VERSION, &v), Vec::with_capacity(room)).unwrap_or_default()
}

/// Decodes a record of any version this build reads; `None` for an unknown
/// version and for anything malformed, truncated or followed by extra
/// bytes (never panics).
pub fn decode(b: &[u8]) -> Option<Recorded> {
    match *b.first()? {
        1 => decode_v1(b),
        2 => decode_v2(&b[1..]),
        _ => None,
    }
}

/// When the copy in a record was stored, read without decoding the rest
/// (the persist writer compares it before a delete).
pub fn stored_at(b: &[u8]) -> Option<SystemTime> {
    let ms = match *b.first()? {
        1 => u64::from_le_bytes(b.get(1..9)?.try_into().ok()?),
        2 => postcard::take_from_bytes::<u64>(&b[1..]).ok()?.0,
        _ => return None,
    };
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

fn decode_v2(b: &[u8]) -> Option<Recorded> {
    let (v, rest) = postcard::take_from_bytes::<V2>(b).ok()?;
    if !rest.is_empty() || v.headers.len() > MAX_HEADERS {
        return None;
    }
    let headers = v
        .headers
        .iter()
        .map(|(k, val)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_bytes(val.0).ok()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Recorded {
        headers,
        body: Bytes::copy_from_slice(v.body.0),
        stored_at: UNIX_EPOCH.checked_add(Duration::from_millis(v.stored_at_ms))?,
        fresh_for: Duration::from_millis(v.fresh_for_ms),
        must_revalidate: v.must_revalidate,
        stale_if_error: v.stale_if_error_ms.map(Duration::from_millis),
    })
}

/// Version 1, little-endian, as graceway wrote it before records went
/// through serde:
/// `u8 1 | u64 stored_at (unix ms) | u64 fresh_for (ms) | u8 flags (bit0
/// must_revalidate, bit1 has stale_if_error) | u64 stale_if_error (ms) |
/// u32 header count | (u32 len, name, u32 len, value)* | u32 len, body`.
fn decode_v1(mut b: &[u8]) -> Option<Recorded> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn u64le(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }
    fn u32le(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    if take(&mut b, 1)?[0] != 1 {
        return None;
    }
    let stored_at = UNIX_EPOCH.checked_add(Duration::from_millis(u64le(&mut b)?))?;
    let fresh_for = Duration::from_millis(u64le(&mut b)?);
    let flags = take(&mut b, 1)?[0];
    let sie = Duration::from_millis(u64le(&mut b)?);
    let n = u32le(&mut b)?;
    if n > MAX_HEADERS {
        return None;
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let kl = u32le(&mut b)?;
        let k = HeaderName::from_bytes(take(&mut b, kl)?).ok()?;
        let vl = u32le(&mut b)?;
        let v = HeaderValue::from_bytes(take(&mut b, vl)?).ok()?;
        headers.push((k, v));
    }
    let bl = u32le(&mut b)?;
    let body = Bytes::copy_from_slice(take(&mut b, bl)?);
    if !b.is_empty() {
        return None;
    }
    Some(Recorded {
        headers,
        body,
        stored_at,
        fresh_for,
        must_revalidate: flags & 1 != 0,
        stale_if_error: (flags & 2 != 0).then_some(sie),
    })
}

/// The decoder's fuzz campaign over seeds built in code.
#[cfg(test)]
mod fuzz;

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The version-1 encoder as graceway shipped it (its `stored::encode`),
    /// kept to make the records a file or a Redis of that version holds.
    pub(in crate::cache) fn encode_v1(s: &Recorded) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.body.len() + 256);
        out.push(1);
        let ms = |d: Duration| d.as_millis() as u64;
        out.extend_from_slice(
            &ms(s.stored_at.duration_since(UNIX_EPOCH).unwrap_or_default()).to_le_bytes(),
        );
        out.extend_from_slice(&ms(s.fresh_for).to_le_bytes());
        out.push(u8::from(s.must_revalidate) | (u8::from(s.stale_if_error.is_some()) << 1));
        out.extend_from_slice(&ms(s.stale_if_error.unwrap_or_default()).to_le_bytes());
        out.extend_from_slice(&(s.headers.len() as u32).to_le_bytes());
        for (k, v) in &s.headers {
            out.extend_from_slice(&(k.as_str().len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&(s.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&s.body);
        out
    }

    pub(in crate::cache) fn sample() -> Recorded {
        Recorded {
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    http::header::VARY,
                    HeaderValue::from_static("accept-language"),
                ),
            ],
            body: Bytes::from_static(b"{\"a\":1}"),
            stored_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            fresh_for: Duration::from_secs(60),
            must_revalidate: true,
            stale_if_error: Some(Duration::from_secs(5)),
        }
    }

    fn same(a: &Recorded, b: &Recorded) {
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
        assert_eq!(a.stored_at, b.stored_at);
        assert_eq!(a.fresh_for, b.fresh_for);
        assert_eq!(a.must_revalidate, b.must_revalidate);
        assert_eq!(a.stale_if_error, b.stale_if_error);
    }

    #[test]
    fn version_2_round_trips_and_pins_its_bytes() {
        let s = sample();
        let enc = encode(&s);
        assert_eq!(enc[0], 2);
        same(&decode(&enc).unwrap(), &s);
        assert_eq!(stored_at(&enc), Some(s.stored_at));
        // The wire format is stable: these bytes must always decode.
        let small = Recorded {
            headers: vec![(http::header::ETAG, HeaderValue::from_static("\"x\""))],
            body: Bytes::from_static(b"hi"),
            stored_at: UNIX_EPOCH + Duration::from_millis(300),
            fresh_for: Duration::from_millis(5),
            must_revalidate: false,
            stale_if_error: None,
        };
        let pinned: &[u8] = b"\x02\xac\x02\x05\x00\x00\x01\x04etag\x03\"x\"\x02hi";
        assert_eq!(encode(&small), pinned);
        same(&decode(pinned).unwrap(), &small);
    }

    #[test]
    fn version_1_records_still_read() {
        let s = sample();
        let old = encode_v1(&s);
        same(&decode(&old).unwrap(), &s);
        assert_eq!(stored_at(&old), Some(s.stored_at));
        // The bytes an older graceway wrote, by hand: stored at 1 s,
        // fresh 2 ms, no flags, one header `a: b`, body `x`.
        let mut written = vec![1u8];
        written.extend_from_slice(&1000u64.to_le_bytes());
        written.extend_from_slice(&2u64.to_le_bytes());
        written.push(0);
        written.extend_from_slice(&0u64.to_le_bytes());
        written.extend_from_slice(&1u32.to_le_bytes());
        written.extend_from_slice(&1u32.to_le_bytes());
        written.push(b'a');
        written.extend_from_slice(&1u32.to_le_bytes());
        written.push(b'b');
        written.extend_from_slice(&1u32.to_le_bytes());
        written.push(b'x');
        let d = decode(&written).unwrap();
        assert_eq!(d.stored_at, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(d.fresh_for, Duration::from_millis(2));
        assert_eq!(d.headers.len(), 1);
        assert_eq!((d.body.as_ref(), d.stale_if_error), (&b"x"[..], None));
        assert!(!d.must_revalidate);
    }

    #[test]
    fn truncated_extended_and_unknown_records_are_refused() {
        let s = sample();
        for enc in [encode(&s), encode_v1(&s)] {
            for cut in 0..enc.len() {
                assert!(decode(&enc[..cut]).is_none(), "cut at {cut} of v{}", enc[0]);
            }
            let mut longer = enc.clone();
            longer.push(0);
            assert!(decode(&longer).is_none());
            let mut future = enc.clone();
            future[0] = 3;
            assert!(decode(&future).is_none() && stored_at(&future).is_none());
        }
        assert!(decode(b"").is_none() && stored_at(b"").is_none());
        assert!(decode(b"\xff garbage").is_none());
        assert!(decode(b"not a record").is_none());
        // A header name that is not one.
        let mut bad = encode(&s);
        let at = bad.windows(12).position(|w| w == b"content-type").unwrap();
        bad[at] = b' ';
        assert!(decode(&bad).is_none());
    }

    fn recorded() -> impl Strategy<Value = Recorded> {
        let header = ("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}").prop_map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            )
        });
        (
            proptest::collection::vec(header, 0..8),
            proptest::collection::vec(any::<u8>(), 0..300),
            0u64..4_000_000_000_000,
            any::<u32>(),
            any::<bool>(),
            any::<Option<u32>>(),
        )
            .prop_map(|(headers, body, at, fresh, mr, sie)| Recorded {
                headers,
                body: Bytes::from(body),
                stored_at: UNIX_EPOCH + Duration::from_millis(at),
                fresh_for: Duration::from_millis(u64::from(fresh)),
                must_revalidate: mr,
                stale_if_error: sie.map(|s| Duration::from_millis(u64::from(s))),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn both_versions_round_trip(s in recorded()) {
            same(&decode(&encode(&s)).unwrap(), &s);
            same(&decode(&encode_v1(&s)).unwrap(), &s);
        }

        #[test]
        fn damaged_records_never_panic(
            s in recorded(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            v1 in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = if v1 { encode_v1(&s) } else { encode(&s) };
            for (at, byte) in edits {
                let i = at.index(b.len());
                b[i] = byte;
            }
            let _ = (decode(&b), stored_at(&b));
            let n = cut.index(b.len());
            let _ = (decode(&b[..n]), stored_at(&b[..n]));
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = (decode(&b), stored_at(&b));
        }
    }
}

//! One last-good copy and what may become one: which answers are kept,
//! how long they are fresh, and how a kept copy is answered again (its
//! record in the persist file and Redis is `record`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::key::{MemKey, StoreKey};
use crate::generation::UpstreamStatus;

/// A 200 response as the upstream sent it and graceway recorded it: what
/// the persist file and the fleet tier hold, and what a stale answer is
/// built from.
#[derive(Debug)]
pub struct Recorded {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored_at: SystemTime,
    /// Freshness lifetime from `s-maxage`/`max-age` (zero when absent).
    pub fresh_for: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: RFC 9111 forbids
    /// serving it stale.
    pub must_revalidate: bool,
    /// RFC 5861 `stale-if-error=N`.
    pub stale_if_error: Option<Duration>,
}

/// A recorded response kept in the memory tier. Immutable once built
/// (but for `asked`); shared by `Arc` between the memory tier, the persist
/// writer and requests being answered.
#[derive(Debug)]
pub struct CachedResponse {
    pub recorded: Recorded,
    /// Bytes this copy costs in memory (keys + headers + body + overhead).
    pub weight: u32,
    /// Per-upstream counters (`stored_entries`, `stored_bytes`).
    pub owner: Arc<UpstreamStatus>,
    /// Its key in the persist file and Redis: what its eviction deletes.
    pub store: StoreKey,
    /// Set when a copy read from the persist file moves to a request's
    /// memory key, so that leaving its first place deletes nothing.
    pub(super) asked: AtomicBool,
    /// The origin's `Date`, parsed once here rather than per answer (see
    /// [`CachedResponse::served_age`]).
    origin_date: Option<SystemTime>,
    /// RFC 5861 `stale-while-revalidate=N` and RFC 9111 `no-cache`, read
    /// once here (a fresh hit must not parse `Cache-Control`).
    pub swr: Option<Duration>,
    pub no_cache: bool,
    /// Unix milliseconds before which no background refresh of this copy
    /// starts while a breaker is open (`upstreams[].cache.fresh: honor`).
    pub refresh_after: std::sync::atomic::AtomicU64,
}

impl CachedResponse {
    /// A copy for the memory tier, weighed, kept under `store` in the
    /// tiers outside the process.
    pub fn new(recorded: Recorded, owner: Arc<UpstreamStatus>, store: StoreKey) -> CachedResponse {
        let keys =
            std::mem::size_of::<MemKey>() + std::mem::size_of::<StoreKey>() + store.upstream.len();
        let weight = weigh(keys, &recorded.headers, recorded.body.len());
        let origin_date = recorded
            .header(&http::header::DATE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        let mut cc_headers = http::HeaderMap::new();
        for (k, v) in &recorded.headers {
            if k == http::header::CACHE_CONTROL {
                cc_headers.append(k.clone(), v.clone());
            }
        }
        let parsed = pingora_cache::cache_control::CacheControl::from_headers_named(
            "cache-control",
            &cc_headers,
        );
        let swr = parsed
            .as_ref()
            .and_then(|cc| cc.stale_while_revalidate().ok().flatten())
            .map(|s| Duration::from_secs(u64::from(s)));
        let no_cache = parsed.as_ref().is_some_and(|cc| cc.no_cache());
        CachedResponse {
            recorded,
            weight,
            owner,
            store,
            asked: AtomicBool::new(false),
            origin_date,
            swr,
            no_cache,
            refresh_after: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How this copy may answer a request before any vendor call, with
    /// `upstreams[].cache.fresh: honor`.
    pub fn freshness(&self, now: SystemTime) -> Freshness {
        let r = &self.recorded;
        let age = r.age(now);
        if self.no_cache {
            return Freshness::Stale;
        }
        if age < r.fresh_for {
            return Freshness::Fresh;
        }
        match self.swr {
            Some(w) if age < r.fresh_for + w => Freshness::Revalidate,
            _ => Freshness::Stale,
        }
    }

    /// The response header of this copy, with `Content-Length` set and
    /// `Age` computed; the caller adds the degradation headers. Built per
    /// answer: a header kept ready with each copy would hold ~3 KiB per
    /// copy (two header maps), several times a small copy's own size.
    ///
    /// Built as `http` parts and converted, not with
    /// `ResponseHeader::append_header`, which parses each name again and
    /// fills a second map of name cases that Pingora then writes from
    /// (callgrind: a stale answer's header work fell from ~9,800 to
    /// ~5,600 instructions, the `Date` parsed once included). The stored
    /// names go out as before (Pingora titles the common ones either way,
    /// the others were lower-case `HeaderName`s already); names the caller
    /// adds later as strings go out lower-case (`x-graceway-degraded`),
    /// which HTTP/1.1 allows (field names are case-insensitive).
    pub fn response_header(&self, now: SystemTime) -> pingora::Result<ResponseHeader> {
        use pingora::{Error, ErrorType};
        let r = &self.recorded;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        let full = |_| Error::explain(ErrorType::InternalError, "too many headers in a copy");
        parts
            .headers
            .try_reserve(r.headers.len() + 6)
            .map_err(full)?;
        for (k, v) in &r.headers {
            parts
                .headers
                .try_append(k.clone(), v.clone())
                .map_err(full)?;
        }
        let length = HeaderValue::from(r.body.len());
        let age = HeaderValue::from(self.served_age(now).as_secs());
        parts
            .headers
            .try_insert(http::header::CONTENT_LENGTH, length)
            .map_err(full)?;
        parts
            .headers
            .try_insert(http::header::AGE, age)
            .map_err(full)?;
        Ok(ResponseHeader::from(parts))
    }

    /// The `Age` a served copy says (RFC 9111 §4.2.3): the time since the
    /// origin's `Date` when the copy has one (the origin's answer may have
    /// been older than our store), else since it was stored. Pingora 0.9
    /// writes its own `Date` on every answer, so `Age` is what tells a
    /// client how old the copy is.
    pub fn served_age(&self, now: SystemTime) -> Duration {
        let since_date = self.origin_date.and_then(|d| now.duration_since(d).ok());
        self.recorded.age(now).max(since_date.unwrap_or_default())
    }
}

/// What a copy can do for a request before any vendor call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the vendor's freshness lifetime: a hit.
    Fresh,
    /// Stale, within `stale-while-revalidate`: answered at once, and one
    /// background refresh renews it.
    Revalidate,
    /// Stale: the vendor is asked (conditionally, with its validators).
    Stale,
}

/// Fixed cost per entry on top of its bytes: the `Arc`s, moka's entry, its
/// deque nodes and map slot, the key's allocation. Measured: 28,317 small
/// copies (169 B bodies, 5 headers) held 1.18 KiB each of resident memory.
pub const ENTRY_OVERHEAD: usize = 512;

/// Cost of one recorded header beyond its name and value bytes: its slot in
/// the header list and the value's own allocation (see `owned`).
pub const HEADER_OVERHEAD: usize = 96;

/// Weight a copy will have under `key_len` bytes of keys: the memory it
/// holds (measured with `benches/compare.sh`'s full-cache row and
/// 28,317 small copies: within a few percent of the resident growth,
/// on the safe side).
pub fn weigh(key_len: usize, headers: &[(HeaderName, http::HeaderValue)], body_len: usize) -> u32 {
    let h: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
        .sum();
    let body = allocation_size(body_len);
    (key_len + h + body + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
}

/// What the allocator hands out for `n` bytes: jemalloc's size classes,
/// multiples of 16 up to 128, then four per doubling (2^k + j * 2^(k-2)),
/// so a 39,901-byte body takes 40,960. Weighing by it keeps
/// `cache.memory_bytes` a bound on memory.
pub fn allocation_size(n: usize) -> usize {
    if n <= 8 {
        return 8;
    }
    let lg = usize::BITS - 1 - (n - 1).leading_zeros();
    let spacing = (1usize << lg.saturating_sub(2)).max(16);
    n.next_multiple_of(spacing)
}

impl Recorded {
    /// A fresh answer as it is kept, its `Cache-Control` read once
    /// (`cc`; `fresh_for` from [`fresh_for`]), stored now.
    pub fn of_answer(
        headers: Vec<(HeaderName, HeaderValue)>,
        body: bytes::Bytes,
        cc: &CacheControl,
        fresh_for: Duration,
        now: SystemTime,
    ) -> Recorded {
        Recorded {
            headers,
            body,
            stored_at: now,
            fresh_for,
            must_revalidate: cc.must_revalidate,
            stale_if_error: cc.stale_if_error.map(Duration::from_secs),
        }
    }

    /// This copy renewed by a 304 (RFC 9111 §4.3.4): the 304's headers
    /// replace the stored ones of the same name (but those describing the
    /// transfer), the body stays, and freshness counts from now.
    pub fn renewed(&self, not_modified: &http::HeaderMap, now: SystemTime) -> Recorded {
        let mut headers: Vec<(HeaderName, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(k, _)| !not_modified.contains_key(k) || hop_by_hop(k))
            .cloned()
            .collect();
        for (k, v) in not_modified {
            if !hop_by_hop(k) && k != http::header::SET_COOKIE {
                headers.push((k.clone(), owned(v)));
            }
        }
        let mut head = ResponseHeader::build(200, Some(headers.len())).ok();
        if let Some(h) = head.as_mut() {
            for (k, v) in &headers {
                let _ = h.append_header(k.clone(), v.clone());
            }
        }
        let cc = head
            .as_ref()
            .map(|h| CacheControl::from_headers(&h.headers))
            .unwrap_or_default();
        Recorded {
            headers,
            body: self.body.clone(),
            stored_at: now,
            fresh_for: head.as_ref().map_or(Duration::ZERO, |h| fresh_for(h, now)),
            must_revalidate: cc.must_revalidate,
            stale_if_error: cc.stale_if_error.map(Duration::from_secs),
        }
    }

    /// The validators a conditional refresh of this copy sends.
    pub fn validators(&self) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
        (
            self.header(&http::header::ETAG),
            self.header(&http::header::LAST_MODIFIED),
        )
    }

    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.stored_at).unwrap_or_default()
    }

    /// May this copy answer a failed request now? `max_stale` is the
    /// operator's limit; with `honor`, the origin's directives narrow it.
    pub fn servable(&self, now: SystemTime, max_stale: Duration, honor: bool) -> bool {
        let age = self.age(now);
        if age > max_stale {
            return false;
        }
        if honor {
            if self.must_revalidate && age > self.fresh_for {
                return false;
            }
            if let Some(sie) = self.stale_if_error {
                if age > self.fresh_for + sie {
                    return false;
                }
            }
        }
        true
    }
}

/// The parts of `Cache-Control` graceway acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub private: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Reads `Cache-Control` with pingora-cache's parser (RFC 9111 quoted
    /// strings, repeated headers, case). A copy may not be served stale
    /// (RFC 9111 §5.2.2) under `must-revalidate`, `proxy-revalidate`,
    /// `no-cache`, or `s-maxage`, which implies `proxy-revalidate` for a
    /// shared cache (§5.2.2.10).
    pub fn from_headers(headers: &http::HeaderMap) -> CacheControl {
        use pingora_cache::cache_control::CacheControl as Parsed;
        let Some(cc) = Parsed::from_headers_named("cache-control", headers) else {
            return CacheControl::default();
        };
        let secs = |v: pingora::Result<Option<u32>>| v.ok().flatten().map(u64::from);
        let s_maxage = secs(cc.s_maxage());
        CacheControl {
            no_store: cc.no_store(),
            // Qualified `private="field"` too: a shared copy of a response
            // that is partly someone's is not worth the risk.
            private: cc.has_key("private"),
            must_revalidate: cc.must_revalidate()
                || cc.proxy_revalidate()
                || cc.no_cache()
                || cc.has_key("s-maxage"),
            max_age: secs(cc.max_age()),
            s_maxage,
            stale_if_error: secs(cc.stale_if_error()),
        }
    }
}

/// Headers never stored: hop-by-hop, and those that describe this one
/// transfer (`Content-Length` is recomputed, `Age` is the copy's own).
fn hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    crate::config::is_hop_by_hop(name.as_str())
        || name == CONTENT_LENGTH
        || name == AGE
        || name == PROXY_AUTHENTICATE
}

/// No heuristic freshness: a copy is fresh only as long as the origin
/// says (`s-maxage`, `max-age`, `Expires`).
static NO_HEURISTIC: pingora_cache::CacheMetaDefaults =
    pingora_cache::CacheMetaDefaults::new(|_| None, 0, 0);

/// How long an answer is fresh from `now`, computed by pingora-cache's
/// filters (RFC 9111 §4.2.1: `s-maxage`, then `max-age`, then `Expires`;
/// `no-store`/`private` and an unparsable `Expires` mean not fresh).
pub fn fresh_for(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let cc = pingora_cache::cache_control::CacheControl::from_resp_headers(resp);
    pingora_cache::filters::calculate_fresh_until(now, cc.as_ref(), resp, false, &NO_HEURISTIC)
        .and_then(|until| until.duration_since(now).ok())
        .unwrap_or_default()
}

/// Whether a response is a Server-Sent Events stream (`text/event-stream`).
pub fn is_event_stream(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .split(|&b| b == b';')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// Decides, from the upstream's response header, whether it may become a
/// last-good copy. Returns the metadata to keep when it may.
pub fn storable_meta(
    resp: &ResponseHeader,
    max_object: u64,
) -> Option<(CacheControl, Vec<(HeaderName, HeaderValue)>)> {
    if resp.status.as_u16() != 200 {
        return None;
    }
    let h = &resp.headers;
    let cc = CacheControl::from_headers(h);
    if cc.no_store || cc.private {
        return None;
    }
    // A response that sets a cookie is someone's, not everyone's.
    if h.contains_key(http::header::SET_COOKIE) {
        return None;
    }
    // An event stream is a moment, not a resource: replaying its old
    // events as a copy would tell the client they happened again.
    if is_event_stream(h) {
        return None;
    }
    if h.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    }) {
        return None;
    }
    if let Some(len) = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max_object {
            return None;
        }
    }
    let headers = h
        .iter()
        .filter(|(k, _)| !hop_by_hop(k))
        .map(|(k, v)| (k.clone(), owned(v)))
        .collect();
    Some((cc, headers))
}

/// A header value in its own exactly-sized buffer. Pingora parses a
/// response's header values as slices of the buffer the header block was
/// read into (kilobytes, often shared with the first body bytes): a kept
/// copy holding such a slice would keep the whole read buffer alive, and
/// the cache's byte budget would not bound its memory (measured before
/// this copy: ~8 KiB held per small copy, 14x its weight).
fn owned(v: &HeaderValue) -> HeaderValue {
    let mut o = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    o.set_sensitive(v.is_sensitive());
    o
}

/// Whether a request's answer may be kept: a GET without the client's own
/// credentials (`Authorization`, `Cookie`, or a query parameter named in
/// `cache.sensitive_query`, compared without case).
pub fn storable_request(req: &pingora::http::RequestHeader, sensitive: &[String]) -> bool {
    req.method == http::Method::GET
        && !req.headers.contains_key(http::header::AUTHORIZATION)
        && !req.headers.contains_key(http::header::COOKIE)
        && !req
            .uri
            .query()
            .is_some_and(|q| has_sensitive_param(q, sensitive))
}

/// Whether `query` has a parameter named in `sensitive` (lower-case).
fn has_sensitive_param(query: &str, sensitive: &[String]) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        sensitive.iter().any(|s| s.eq_ignore_ascii_case(name))
    })
}

/// Header names the response varies on, lower-cased, sorted.
pub fn vary_names(headers: &[(HeaderName, HeaderValue)]) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .iter()
        .filter(|(k, _)| k == http::header::VARY)
        .filter_map(|(_, v)| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

#[cfg(test)]
mod tests;

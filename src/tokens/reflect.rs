//! Token values an upstream echoes back: found in its answers and taken out
//! before anything reaches the client, the cache, the persist file or
//! Redis.
//!
//! An upstream holds the token graceway sends it, so it can reflect it: a
//! debugging header that echoes `Authorization`, a `Location` or a JSON
//! `links.self` that repeats the query the token rode in. Every form the
//! upstream was sent is looked for: the raw value and, for query
//! injection, its percent-encoded form. The needles are built once per
//! generation; a header value shorter than the shortest needle is passed
//! over with one comparison, so an ordinary answer costs a length check per
//! header.
//!
//! In a header the value becomes `[token]`; in a body the replacement
//! keeps the length (`[token]` padded with `*`), so `Content-Length` stays
//! true while it streams.

use http::{HeaderMap, HeaderValue};
use memchr::memmem::Finder;

use super::TokenSet;

/// The forms of every token of one upstream, to look for.
pub struct Reflections {
    /// (finder, token index), longest needle first so that a value and its
    /// encoded form never leave a part behind.
    needles: Vec<(Finder<'static>, usize)>,
    /// The shortest needle: anything shorter cannot hold one.
    min_len: usize,
    /// The longest: a streamed body keeps this much minus one back.
    max_len: usize,
}

/// Response headers that held a token value, rewritten.
#[derive(Debug)]
pub struct Scrubbed {
    /// The first value found.
    pub first: Found,
    /// Each header that held one, with its values to send instead (an
    /// empty list: drop it).
    pub headers: Vec<(http::HeaderName, Vec<HeaderValue>)>,
    /// How many values were rewritten or dropped.
    pub changed: usize,
}

/// A token value found in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The index of the token whose value it was.
    pub token: usize,
}

impl std::fmt::Debug for Reflections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reflections({} needles)", self.needles.len())
    }
}

impl Reflections {
    /// The needles for a token set's values (raw and percent-encoded):
    /// each secret part a request carries (a field of a structured
    /// token, a Basic credential's encoding). For an AWS credential set:
    /// its secret access key and session token (the access key id is not
    /// a secret, and AWS's own errors name it).
    pub fn new(tokens: &TokenSet) -> Reflections {
        Reflections::from_values(tokens.tokens.iter().flat_map(|t| {
            let aws = match &t.injected {
                Some(super::Injected::SigV4(_)) => t.secret().and_then(super::value::aws_parts),
                _ => None,
            };
            let signed = aws
                .into_iter()
                .flat_map(|p| [Some(p.secret_access_key), p.session_token])
                .flatten();
            let sent = t
                .injected
                .iter()
                .flat_map(|i| i.needles().iter().map(|n| &**n));
            signed.chain(sent).map(move |v| (v, t.index))
        }))
    }

    /// The needles for `(value, token index)` pairs.
    pub fn from_values<'a>(values: impl IntoIterator<Item = (&'a str, usize)>) -> Reflections {
        let mut needles: Vec<(Vec<u8>, usize)> = Vec::new();
        for (value, index) in values {
            let raw = value.as_bytes().to_vec();
            let encoded = super::value::percent_encode(value).into_bytes();
            if encoded != raw {
                needles.push((encoded, index));
            }
            needles.push((raw, index));
        }
        needles.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        let min_len = needles.iter().map(|(n, _)| n.len()).min().unwrap_or(0);
        let max_len = needles.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        Reflections {
            needles: needles
                .into_iter()
                .map(|(n, i)| (Finder::new(&n).into_owned(), i))
                .collect(),
            min_len,
            max_len,
        }
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The first token value in `hay`.
    pub fn find(&self, hay: &[u8]) -> Option<Found> {
        if self.needles.is_empty() || hay.len() < self.min_len {
            return None;
        }
        self.needles
            .iter()
            .find(|(f, _)| f.find(hay).is_some())
            .map(|(_, token)| Found { token: *token })
    }

    /// `hay` with every token value replaced by `[token]` (a header has
    /// no length to keep), and the first found; `None` when none is in it.
    fn replaced(&self, hay: &[u8]) -> Option<(Vec<u8>, Found)> {
        let mut first = None;
        let mut cur = hay.to_vec();
        for (f, token) in &self.needles {
            if f.find(&cur).is_none() {
                continue;
            }
            first.get_or_insert(Found { token: *token });
            let n = f.needle().len();
            let mut out = Vec::with_capacity(cur.len());
            let mut at = 0;
            while let Some(i) = f.find(&cur[at..]) {
                out.extend_from_slice(&cur[at..at + i]);
                out.extend_from_slice(b"[token]");
                at += i + n;
            }
            out.extend_from_slice(&cur[at..]);
            cur = out;
        }
        first.map(|f| (cur, f))
    }

    /// Overwrites every token value in `buf` in place (same length).
    /// Returns the first one found.
    pub fn redact_in_place(&self, buf: &mut [u8]) -> Option<Found> {
        if self.needles.is_empty() || buf.len() < self.min_len {
            return None;
        }
        let mut first = None;
        for (f, token) in &self.needles {
            let n = f.needle().len();
            let mut at = 0;
            while let Some(i) = f.find(&buf[at..]) {
                let start = at + i;
                mask(&mut buf[start..start + n]);
                first.get_or_insert(Found { token: *token });
                at = start + n;
            }
        }
        first
    }

    /// Token values in response headers: for each header that held one,
    /// its values with the token masked (a value whose rewrite is not a
    /// valid header value is left out, so the header is dropped). `None`
    /// when no header holds one: the usual case costs a length check per
    /// value.
    pub fn scrub_headers(&self, headers: &HeaderMap) -> Option<Scrubbed> {
        if self.needles.is_empty() {
            return None;
        }
        let hit = headers
            .values()
            .any(|v| v.len() >= self.min_len && self.find(v.as_bytes()).is_some());
        if !hit {
            return None;
        }
        let mut out = Scrubbed {
            first: Found { token: 0 },
            headers: Vec::new(),
            changed: 0,
        };
        let mut first = None;
        for name in headers.keys() {
            let values = headers.get_all(name);
            if !values.iter().any(|v| self.find(v.as_bytes()).is_some()) {
                continue;
            }
            let mut kept = Vec::new();
            for v in values {
                match self.replaced(v.as_bytes()) {
                    None => kept.push(v.clone()),
                    Some((bytes, f)) => {
                        first.get_or_insert(f);
                        out.changed += 1;
                        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                            kept.push(v);
                        }
                    }
                }
            }
            out.headers.push((name.clone(), kept));
        }
        out.first = first?;
        Some(out)
    }

    /// A redactor for one streamed body.
    pub fn body_scrubber(&self) -> BodyScrubber {
        BodyScrubber {
            held: Vec::new(),
            keep: self.max_len.saturating_sub(1),
        }
    }
}

/// `[token]` padded with `*` to the length of what it replaces (only `*`
/// when shorter than 7).
fn mask(part: &mut [u8]) {
    const WORD: &[u8] = b"[token]";
    if part.len() >= WORD.len() {
        part[..WORD.len()].copy_from_slice(WORD);
        part[WORD.len()..].fill(b'*');
    } else {
        part.fill(b'*');
    }
}

/// Redacts token values in a body that arrives in chunks: the last
/// `longest needle - 1` bytes of each chunk are held back, so a value split
/// across two chunks is still found. The body keeps its length.
pub struct BodyScrubber {
    held: Vec<u8>,
    keep: usize,
}

impl BodyScrubber {
    /// The next chunk in; what can be sent now out, redacted.
    pub fn push(&mut self, r: &Reflections, chunk: &[u8]) -> (Vec<u8>, Option<Found>) {
        self.held.extend_from_slice(chunk);
        let found = r.redact_in_place(&mut self.held);
        let ready = self.held.len().saturating_sub(self.keep);
        let rest = self.held.split_off(ready);
        let out = std::mem::replace(&mut self.held, rest);
        (out, found)
    }

    /// The end of the body: what was held back.
    pub fn finish(&mut self, r: &Reflections) -> (Vec<u8>, Option<Found>) {
        let found = r.redact_in_place(&mut self.held);
        (std::mem::take(&mut self.held), found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reflections(values: &[&str]) -> Reflections {
        Reflections::from_values(values.iter().enumerate().map(|(i, v)| (*v, i)))
    }

    #[test]
    fn headers_lose_raw_and_encoded_values() {
        let r = reflections(&["tok-primary-1", "s3cr+t/value=="]);
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("Bearer tok-primary-1"));
        h.insert(
            "location",
            HeaderValue::from_static("/next?access_token=s3cr%2Bt%2Fvalue%3D%3D&x=1"),
        );
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let scrubbed = r.scrub_headers(&h).unwrap();
        assert_eq!(scrubbed.changed, 2);
        assert!(scrubbed.first.token == 0 || scrubbed.first.token == 1);
        for (name, values) in scrubbed.headers {
            h.remove(&name);
            for v in values {
                h.append(name.clone(), v);
            }
        }
        let echo = h["x-echo"].to_str().unwrap();
        assert_eq!(echo, "Bearer [token]");
        let loc = h["location"].to_str().unwrap();
        assert!(!loc.contains("s3cr"), "{loc}");
        assert!(loc.starts_with("/next?access_token=[token]"), "{loc}");
        assert_eq!(h["content-type"], "application/json");
        // Nothing to find: untouched.
        let mut h2 = HeaderMap::new();
        h2.insert("x", HeaderValue::from_static("tok-primary-"));
        assert!(r.scrub_headers(&h2).is_none());
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted_and_the_length_kept() {
        let r = reflections(&["tok-crown-jewel"]);
        let body = b"{\"self\":\"/v1?k=tok-crown-jewel\",\"again\":\"tok-crown-jewel\"}";
        for split in 0..body.len() {
            let mut s = r.body_scrubber();
            let (mut out, _) = s.push(&r, &body[..split]);
            let (b, _) = s.push(&r, &body[split..]);
            out.extend(b);
            let (b, _) = s.finish(&r);
            out.extend(b);
            assert_eq!(out.len(), body.len(), "split {split}");
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("tok-crown-jewel"), "split {split}: {text}");
            assert_eq!(text.matches("[token]").count(), 2, "split {split}: {text}");
        }
    }
}

//! The request target, checked and normalized before routing, so that a
//! route's `path_prefix` is a boundary and not a hint.
//!
//! What happens to a target (RFC 9112 §3.2, RFC 3986 §5.2.4 and §6.2.2):
//! - origin-form (`/path?query`) is kept; absolute-form
//!   (`http://host/path?query`) is accepted only when the proxy knows the
//!   host, and is turned into origin-form for the upstream;
//! - in the path, percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`)
//!   are decoded and other escapes are written with upper-case hex;
//! - dot segments (`.`, `..`, also when encoded) are removed;
//! - refused (400): any other form (`x`, `host:80`, `*`), an encoded `/`
//!   or `\`, a raw `\`, a `..` that climbs above `/`, a bad escape, an
//!   encoded or raw control character, bytes outside ASCII, a fragment,
//!   userinfo in an absolute-form authority, a `;` (path parameters), a
//!   double-encoded dot, slash or backslash (`%252e`), and escapes that do
//!   not decode to UTF-8 (overlong `%c0%af` included).
//!
//! The query is forwarded as it came: its meaning is the upstream's.
//! An already-normal origin-form target (the usual case) is recognised by
//! one scan and costs no allocation.

use std::fmt;

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Neither origin-form nor absolute-form (`x`, `host:80`, `*`).
    Form,
    /// `%2F` in the path: it would hide a segment boundary from routing.
    EncodedSlash,
    /// `\` or `%5C` in the path: some servers read it as `/`.
    Backslash,
    /// `..` beyond the root.
    AboveRoot,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A control character, raw or encoded, or a byte outside ASCII.
    BadByte,
    /// `#` in the target: fragments are never sent.
    Fragment,
    /// `user@host` in an absolute-form target.
    UserInfo,
    /// Absolute-form with an empty or unparsable authority.
    BadAuthority,
    /// `;` in the path: path parameters (`/v1/..;/admin`) mean a segment
    /// boundary to some servers and nothing to others.
    PathParameter,
    /// `%25` before an encoded dot, slash or backslash (`%252e`): decoded
    /// twice by some servers into what the first decoding refused.
    DoubleEncoded,
    /// Escapes that decode to bytes that are not UTF-8, overlong forms
    /// (`%c0%af` for `/`) included.
    BadUtf8,
}

impl TargetError {
    /// The message of the 400 answer.
    pub(crate) fn message(self) -> &'static str {
        match self {
            TargetError::Form => {
                "the request target must be a path (origin-form) or an absolute URL"
            }
            TargetError::EncodedSlash => "an encoded slash (%2F) is not allowed in the path",
            TargetError::Backslash => "a backslash is not allowed in the path",
            TargetError::AboveRoot => "the path climbs above the root with `..`",
            TargetError::BadEscape => {
                "a percent sign in the path is not followed by two hex digits"
            }
            TargetError::BadByte => "the path has a control character or a byte outside ASCII",
            TargetError::Fragment => "a request target must not carry a fragment (#)",
            TargetError::UserInfo => "user information is not allowed in the request target",
            TargetError::BadAuthority => "the absolute URL has no usable host",
            TargetError::PathParameter => "a semicolon (path parameter) is not allowed in the path",
            TargetError::DoubleEncoded => {
                "a double-encoded dot, slash or backslash (%25) is not allowed in the path"
            }
            TargetError::BadUtf8 => {
                "the path's escapes do not decode to UTF-8 (overlong or invalid)"
            }
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TargetError {}

/// A checked target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The host of an absolute-form target, without port (as written).
    pub authority_host: Option<&'a str>,
    /// The normalized origin-form target when it differs from what came,
    /// `None` when the request's own target is already normal.
    pub rewritten: Option<String>,
}

/// Checks and normalizes a raw request target.
pub(crate) fn normalize(raw: &[u8]) -> Result<Target<'_>, TargetError> {
    let (authority_host, origin) = split_form(raw)?;
    if origin.contains(&b'#') {
        return Err(TargetError::Fragment);
    }
    let (path, query) = match origin.iter().position(|&b| b == b'?') {
        Some(i) => (&origin[..i], Some(&origin[i + 1..])),
        None => (origin, None),
    };
    if let Some(q) = query {
        if q.iter().any(|&b| !(0x21..0x7f).contains(&b)) {
            return Err(TargetError::BadByte);
        }
    }
    let normal_path = if needs_work(path)? {
        Some(normalize_path(path)?).filter(|p| p.as_bytes() != path)
    } else {
        None
    };
    let rewritten = match (normal_path, authority_host.is_some()) {
        (None, false) => None,
        (p, _) => {
            let p = match p {
                Some(p) => p,
                // Checked ASCII above.
                None => {
                    String::from_utf8_lossy(if path.is_empty() { b"/" } else { path }).into_owned()
                }
            };
            let mut s = p;
            if let Some(q) = query {
                s.push('?');
                s.push_str(&String::from_utf8_lossy(q));
            }
            Some(s)
        }
    };
    Ok(Target {
        authority_host,
        rewritten,
    })
}

/// Splits an absolute-form target into host and origin part; an
/// origin-form target is returned whole.
fn split_form(raw: &[u8]) -> Result<(Option<&str>, &[u8]), TargetError> {
    if raw.first() == Some(&b'/') {
        return Ok((None, raw));
    }
    let rest = strip_prefix_ci(raw, b"http://")
        .or_else(|| strip_prefix_ci(raw, b"https://"))
        .ok_or(TargetError::Form)?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') {
        return Err(TargetError::UserInfo);
    }
    let authority = std::str::from_utf8(authority).map_err(|_| TargetError::BadAuthority)?;
    let host = strip_port(authority);
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        })
    {
        return Err(TargetError::BadAuthority);
    }
    Ok((Some(host), &rest[end..]))
}

fn strip_prefix_ci<'a>(raw: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (raw.len() >= prefix.len() && raw[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &raw[prefix.len()..])
}

/// A host without its port (`[v6]:port` keeps the brackets).
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// One scan: is the path already normal? Refuses what no rewrite could fix.
fn needs_work(path: &[u8]) -> Result<bool, TargetError> {
    let mut work = path.is_empty();
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'\\' => return Err(TargetError::Backslash),
            b';' => return Err(TargetError::PathParameter),
            b'%' => work = true,
            b'.' if i > 0 && path[i - 1] == b'/' => work = true,
            0..=0x20 | 0x7f..=0xff => return Err(TargetError::BadByte),
            _ => {}
        }
    }
    Ok(work)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte the escape `%XY` at `path[i]` stands for.
fn escape_at(path: &[u8], i: usize) -> Result<u8, TargetError> {
    match (
        path.get(i + 1).copied().and_then(hex),
        path.get(i + 2).copied().and_then(hex),
    ) {
        (Some(h), Some(l)) => Ok(h * 16 + l),
        _ => Err(TargetError::BadEscape),
    }
}

/// Refuses `%25` followed by the escape of a dot, slash or backslash, and
/// escapes whose decoded bytes are not UTF-8 (overlong forms included).
fn check_escapes(path: &[u8]) -> Result<(), TargetError> {
    let mut high: Vec<u8> = Vec::new();
    let mut i = 0;
    let flush = |high: &mut Vec<u8>| -> Result<(), TargetError> {
        if !high.is_empty() && std::str::from_utf8(high).is_err() {
            return Err(TargetError::BadUtf8);
        }
        high.clear();
        Ok(())
    };
    while i < path.len() {
        if path[i] != b'%' {
            flush(&mut high)?;
            i += 1;
            continue;
        }
        let v = escape_at(path, i)?;
        if v == b'%' {
            let next = path.get(i + 3..i + 5).map(|n| n.to_ascii_lowercase());
            if matches!(next.as_deref(), Some(b"2e" | b"2f" | b"5c")) {
                return Err(TargetError::DoubleEncoded);
            }
        }
        if v >= 0x80 {
            high.push(v);
        } else {
            flush(&mut high)?;
        }
        i += 3;
    }
    flush(&mut high)
}

/// Decodes unreserved escapes, then removes dot segments.
fn normalize_path(path: &[u8]) -> Result<String, TargetError> {
    check_escapes(path)?;
    let mut decoded = String::with_capacity(path.len() + 1);
    if path.is_empty() {
        decoded.push('/');
    }
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let v = escape_at(path, i)?;
            match v {
                b'/' => return Err(TargetError::EncodedSlash),
                b'\\' => return Err(TargetError::Backslash),
                0..=0x1f | 0x7f => return Err(TargetError::BadByte),
                _ if is_unreserved(v) => decoded.push(v as char),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.push('%');
                    decoded.push(HEX[(v >> 4) as usize] as char);
                    decoded.push(HEX[(v & 15) as usize] as char);
                }
            }
            i += 3;
        } else {
            decoded.push(b as char);
            i += 1;
        }
    }
    remove_dot_segments(&decoded)
}

/// RFC 3986 §5.2.4 for an absolute path, refusing a climb above the root
/// instead of silently clamping it (clamping would let `/v1/../../x`
/// look like `/x`, hiding what the client tried).
fn remove_dot_segments(path: &str) -> Result<String, TargetError> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in body.split('/') {
        trailing_slash = false;
        match seg {
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, TargetError> {
        normalize(raw.as_bytes()).map(|t| t.rewritten.unwrap_or_else(|| raw.to_string()))
    }

    #[test]
    fn normal_targets_are_kept_without_allocation() {
        for t in ["/", "/v1/items", "/v1/items?x=1&y=%2F", "/a.b/c.d", "/v1/"] {
            assert_eq!(normalize(t.as_bytes()).unwrap().rewritten, None, "{t}");
        }
    }

    #[test]
    fn dot_segments_and_escapes_are_normalized() {
        assert_eq!(norm("/v1/../admin").unwrap(), "/admin");
        assert_eq!(norm("/v1/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/v1/%2E/items").unwrap(), "/v1/items");
        assert_eq!(norm("/v1/./items/.").unwrap(), "/v1/items/");
        assert_eq!(norm("/v1/a/..").unwrap(), "/v1/");
        assert_eq!(norm("/v1/%7euser").unwrap(), "/v1/~user");
        assert_eq!(norm("/v1/%41?q=%2e").unwrap(), "/v1/A?q=%2e");
        assert_eq!(norm("/v1/%e2%9c%93").unwrap(), "/v1/%E2%9C%93");
        assert_eq!(norm("/v1/.hidden").unwrap(), "/v1/.hidden");
        assert_eq!(norm("/v1//../x").unwrap(), "/v1/x");
    }

    #[test]
    fn hostile_targets_are_refused() {
        assert_eq!(norm("/v1/..%2fadmin"), Err(TargetError::EncodedSlash));
        assert_eq!(norm("/v1/..%2Fadmin"), Err(TargetError::EncodedSlash));
        assert_eq!(norm("/v1/..\\admin"), Err(TargetError::Backslash));
        assert_eq!(norm("/v1/..%5cadmin"), Err(TargetError::Backslash));
        assert_eq!(norm("/../etc"), Err(TargetError::AboveRoot));
        assert_eq!(norm("/v1/../../etc"), Err(TargetError::AboveRoot));
        assert_eq!(norm("/%2e%2e/x"), Err(TargetError::AboveRoot));
        assert_eq!(norm("x"), Err(TargetError::Form));
        assert_eq!(norm("evil.example:80"), Err(TargetError::Form));
        assert_eq!(norm("*"), Err(TargetError::Form));
        assert_eq!(norm("/a%zz"), Err(TargetError::BadEscape));
        assert_eq!(norm("/a%4"), Err(TargetError::BadEscape));
        assert_eq!(norm("/a%00b"), Err(TargetError::BadByte));
        assert_eq!(norm("/a#frag"), Err(TargetError::Fragment));
        assert_eq!(norm("http://u:p@host/x"), Err(TargetError::UserInfo));
        assert_eq!(norm("http:///x"), Err(TargetError::BadAuthority));
        assert_eq!(normalize("/a\u{e9}".as_bytes()), Err(TargetError::BadByte));
        assert_eq!(norm("/v1/..;/admin"), Err(TargetError::PathParameter));
        assert_eq!(norm("/v1/x;jsessionid=1"), Err(TargetError::PathParameter));
        assert_eq!(
            norm("/v1/%252e%252e/admin"),
            Err(TargetError::DoubleEncoded)
        );
        assert_eq!(norm("/v1/%252F"), Err(TargetError::DoubleEncoded));
        assert_eq!(norm("/v1/%255c"), Err(TargetError::DoubleEncoded));
        assert_eq!(norm("/v1/..%c0%afadmin"), Err(TargetError::BadUtf8));
        assert_eq!(norm("/v1/%e0%80%af"), Err(TargetError::BadUtf8));
        assert_eq!(norm("/v1/%e2%9c"), Err(TargetError::BadUtf8));
        assert_eq!(norm("/v1/%ff"), Err(TargetError::BadUtf8));
        // A plain %25 and real UTF-8 stay allowed.
        assert_eq!(norm("/v1/100%25").unwrap(), "/v1/100%25");
        assert_eq!(norm("/v1/caf%C3%A9").unwrap(), "/v1/caf%C3%A9");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let t = normalize(b"http://Emoji.Example:8080/v1/x?y=1").unwrap();
        assert_eq!(t.authority_host, Some("Emoji.Example"));
        assert_eq!(t.rewritten.as_deref(), Some("/v1/x?y=1"));
        let t = normalize(b"HTTPS://api.example").unwrap();
        assert_eq!(t.rewritten.as_deref(), Some("/"));
        let t = normalize(b"http://api.example?q").unwrap();
        assert_eq!(t.rewritten.as_deref(), Some("/?q"));
        let t = normalize(b"http://[::1]:80/a/../b").unwrap();
        assert_eq!(t.authority_host, Some("[::1]"));
        assert_eq!(t.rewritten.as_deref(), Some("/b"));
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("api.example:8080"), "api.example");
        assert_eq!(strip_port("api.example"), "api.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}

/// The normalizer's fuzz campaign over `tests/corpus/target.txt` (see
/// `config::fuzz` for the corpus and the mutator).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::normalize;
    use crate::config::fuzz::{campaign, lines, mutated};

    /// The normalizer's contract on any input: a clear error, or an
    /// origin-form target with no dot segment, encoded slash or backslash
    /// that is its own normal form.
    fn check_target(raw: &[u8]) {
        match normalize(raw) {
            Err(e) => assert!(!e.message().is_empty()),
            Ok(t) => {
                let out = t.rewritten.as_deref().map(str::as_bytes).unwrap_or(raw);
                let (path, _) = match out.iter().position(|&b| b == b'?') {
                    Some(i) => out.split_at(i),
                    None => (out, &b""[..]),
                };
                assert!(path.starts_with(b"/"), "{:?}", String::from_utf8_lossy(out));
                let text = String::from_utf8_lossy(path).to_ascii_lowercase();
                for bad in ["/../", "/./", "%2f", "%5c", "\\"] {
                    assert!(!text.contains(bad), "{bad} in {text}");
                }
                assert!(!text.ends_with("/..") && !text.ends_with("/."), "{text}");
                // Normal form is a fixed point.
                let again = normalize(out).expect("normal form is accepted");
                assert_eq!(again.rewritten, None, "{text}");
            }
        }
    }

    #[test]
    fn target_seed_corpus_replays_cleanly() {
        let targets = lines("target.txt");
        assert!(targets.len() > 20, "tests/corpus/target.txt not read");
        for t in &targets {
            check_target(t);
        }
    }

    proptest! {
        #![proptest_config(campaign())]

        #[test]
        fn target_normalizer_never_panics(raw in mutated(lines("target.txt"))) {
            check_target(&raw);
        }

        #[test]
        fn target_normalizer_on_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            check_target(&raw);
        }
    }
}

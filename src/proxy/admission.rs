//! What a request must be before graceway routes it or chooses a token.
//! Each check is a pure function of the request header and the settings,
//! so hostile input is refused with a 4xx before any upstream or token is
//! involved.

use crate::outcome::ClientReason;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora::http::RequestHeader;

use super::target::{self, strip_port, TargetError};
use crate::config::ServerSettings;
use crate::generation::Router;

/// A refused request: the status, the JSON error's message and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub message: &'static str,
    pub reason: ClientReason,
}

impl Refusal {
    fn bad(message: &'static str, reason: ClientReason) -> Refusal {
        Refusal {
            status: 400,
            message,
            reason,
        }
    }
}

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Refusal {
        Refusal::bad(e.message(), ClientReason::BadTarget)
    }
}

/// What the checks found, for routing and for the upstream request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Admitted<'a> {
    /// The host to route on (absolute-form authority, else `Host`), no
    /// port; borrowed from the request.
    pub host: Option<&'a str>,
    /// The normalized target when it differs from the request's own.
    pub rewritten: Option<String>,
    /// A single canonical `Content-Length` to send instead of what came
    /// (duplicates, a list of equal values, leading zeros).
    pub canonical_length: Option<u64>,
    /// Header names with an underscore, not forwarded: `X_Forwarded_For`
    /// and `Transfer_Encoding` mean their dashed names to some servers
    /// (CGI, WSGI) and nothing to others (nginx drops them by default).
    pub drop_headers: Vec<http::HeaderName>,
}

/// Runs every check in order; the first failure is the answer.
pub(crate) fn admit<'a>(
    req: &'a RequestHeader,
    server: &ServerSettings,
    router: &Router,
) -> Result<Admitted<'a>, Refusal> {
    header_size(req, server.max_request_header_bytes)?;
    let canonical_length = framing(req, server.max_request_body_bytes)?;
    let t = target::normalize(req.raw_path())?;
    let host_header = match req.headers.get_all(HOST).iter().count() {
        0 => None,
        1 => Some(
            req.headers[HOST]
                .to_str()
                .ok()
                .filter(|h| valid_host(h))
                .ok_or(Refusal::bad(
                    "the Host header is not valid",
                    ClientReason::BadHost,
                ))?,
        ),
        _ => {
            return Err(Refusal::bad(
                "more than one Host header",
                ClientReason::BadHost,
            ))
        }
    };
    if host_header.is_none() && req.version == Version::HTTP_11 {
        return Err(Refusal::bad(
            "an HTTP/1.1 request must carry a Host header",
            ClientReason::BadHost,
        ));
    }
    let host = match t.authority_host {
        Some(h) => {
            if !router.knows_host(h) {
                return Err(Refusal::bad(
                    "an absolute request target must name a host this proxy serves",
                    ClientReason::BadTarget,
                ));
            }
            if host_header.is_some_and(|hh| !strip_port(hh).eq_ignore_ascii_case(h)) {
                return Err(Refusal::bad(
                    "the Host header differs from the host of the request target",
                    ClientReason::BadHost,
                ));
            }
            Some(h)
        }
        None => host_header.map(strip_port),
    };
    let drop_headers = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    Ok(Admitted {
        host,
        rewritten: t.rewritten,
        canonical_length,
        drop_headers,
    })
}

/// RFC 9112 §3.2 / RFC 3986 §3.2.2: a `Host` is a host name (letters,
/// digits, `.-_~`) or a bracketed IPv6 literal, then an optional `:port`.
/// Empty, spaces, `/`, `@` and the like are refused.
fn valid_host(h: &str) -> bool {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (
            "v6",
            after
                .strip_prefix(':')
                .map(Some)
                .unwrap_or(after.is_empty().then_some("")),
        )
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h, Some("")),
        }
    };
    let Some(port) = port else { return false };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// Headers that ask a server to treat the request as another method.
///
/// `HeaderName`s made at compile time: a lookup by `&str` would parse and
/// validate each name again on every request (measured: 1,300
/// instructions per request, the largest piece of the pass-through's cost
/// above its figure before #21; see `docs/benchmarks.md`).
pub(crate) static METHOD_OVERRIDES: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-http-method-override"),
    http::HeaderName::from_static("x-http-method"),
    http::HeaderName::from_static("x-method-override"),
];

/// Whether every method-override header names a method this upstream
/// forwards (an override is the method, to servers that honour it).
pub(crate) fn overrides_allowed(req: &RequestHeader, methods: &[http::Method]) -> bool {
    METHOD_OVERRIDES.iter().all(|name| {
        req.headers.get_all(name).iter().all(|v| {
            http::Method::from_bytes(v.as_bytes().trim_ascii()).is_ok_and(|m| methods.contains(&m))
        })
    })
}

/// What a request's `Upgrade` asks of this upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeAsk {
    /// No `Upgrade` header.
    None,
    /// Every protocol it names is in the upstream's `upgrade` list: the
    /// request may become a tunnel.
    Allowed,
    /// Not allowed: `Upgrade` and the `upgrade` token of `Connection` are
    /// removed, so the request goes upstream as a plain one.
    Strip,
}

/// Whether the request asks to switch protocols, and may (RFC 9110 §7.8:
/// `Upgrade` is a list of protocol names, `name/version` allowed).
pub(crate) fn upgrade_ask(req: &RequestHeader, allowed: &[String]) -> UpgradeAsk {
    let mut values = req.headers.get_all(http::header::UPGRADE).iter().peekable();
    if values.peek().is_none() {
        return UpgradeAsk::None;
    }
    let all_allowed = values.all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').all(|p| {
                let name = p.trim().split('/').next().unwrap_or("");
                allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
            })
        })
    });
    if all_allowed && req.version == Version::HTTP_11 {
        UpgradeAsk::Allowed
    } else {
        UpgradeAsk::Strip
    }
}

/// `Connection` without its `upgrade` token (`None`: nothing left).
pub(crate) fn connection_without_upgrade(v: &http::HeaderValue) -> Option<String> {
    let kept: Vec<&str> = v
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The request line and header fields together against the limit.
fn header_size(req: &RequestHeader, limit: usize) -> Result<(), Refusal> {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    let fields: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if line + fields > limit {
        return Err(Refusal {
            status: 431,
            message: "request header fields too large",
            reason: ClientReason::HeaderTooLarge,
        });
    }
    Ok(())
}

/// RFC 9112 §6: `Transfer-Encoding` must be exactly `chunked` (graceway
/// does not decode other codings and will not drop them silently); every
/// `Content-Length` must be a plain number and all must agree (then one
/// canonical value is sent); a declared body over the limit is 413.
fn framing(req: &RequestHeader, max_body: u64) -> Result<Option<u64>, Refusal> {
    let mut te = req.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        let only_chunked =
            te.next().is_none() && v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
        if !only_chunked {
            return Err(Refusal::bad(
                "only `Transfer-Encoding: chunked` is accepted",
                ClientReason::BadFraming,
            ));
        }
        // Pingora has already dropped any Content-Length (TE wins) and
        // turned keep-alive off for this connection (RFC 9112 §6.1).
        return Ok(None);
    }
    let mut length: Option<u64> = None;
    let mut lines = 0;
    let mut canonical = true;
    for v in req.headers.get_all(CONTENT_LENGTH) {
        lines += 1;
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.len() != v.as_bytes().len() {
                canonical = false;
            }
            let n = parse_plain_number(part).ok_or(Refusal::bad(
                "Content-Length must be a plain number",
                ClientReason::BadFraming,
            ))?;
            if part.len() > 1 && part[0] == b'0' {
                canonical = false;
            }
            match length {
                Some(l) if l != n => {
                    return Err(Refusal::bad(
                        "conflicting Content-Length values",
                        ClientReason::BadFraming,
                    ))
                }
                _ => length = Some(n),
            }
        }
    }
    if let Some(n) = length {
        if n > max_body {
            return Err(Refusal {
                status: 413,
                message: "the request body is larger than this proxy accepts",
                reason: ClientReason::BodyTooLarge,
            });
        }
    }
    Ok(length.filter(|_| lines > 1 || !canonical))
}

fn parse_plain_number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        for ok in [
            "api.example",
            "api.example:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "a_b.internal",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a b/c",
            "a b",
            "host/x",
            "u@host",
            "host:port",
            "host:123456",
            "[::1",
            "[zz]",
            ":80",
            "[::1]x",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn method_overrides_must_name_a_forwarded_method() {
        let methods = [http::Method::GET, http::Method::POST];
        let req = |v: Option<&str>| {
            let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
            if let Some(v) = v {
                r.insert_header("x-http-method-override", v).unwrap();
            }
            r
        };
        assert!(overrides_allowed(&req(None), &methods));
        assert!(overrides_allowed(&req(Some("GET")), &methods));
        assert!(!overrides_allowed(&req(Some("TRACE")), &methods));
        assert!(!overrides_allowed(&req(Some("DELETE")), &methods));
        assert!(!overrides_allowed(&req(Some("not a method")), &methods));
    }

    #[test]
    fn upgrades_pass_only_when_listed() {
        let req = |upgrade: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
            if let Some(u) = upgrade {
                r.insert_header("upgrade", u).unwrap();
                r.insert_header("connection", "keep-alive, Upgrade")
                    .unwrap();
            }
            r
        };
        let ws = vec!["websocket".to_string()];
        assert_eq!(upgrade_ask(&req(None), &ws), UpgradeAsk::None);
        assert_eq!(
            upgrade_ask(&req(Some("websocket")), &ws),
            UpgradeAsk::Allowed
        );
        assert_eq!(
            upgrade_ask(&req(Some("WebSocket")), &ws),
            UpgradeAsk::Allowed
        );
        assert_eq!(upgrade_ask(&req(Some("websocket")), &[]), UpgradeAsk::Strip);
        assert_eq!(upgrade_ask(&req(Some("h2c")), &ws), UpgradeAsk::Strip);
        assert_eq!(
            upgrade_ask(&req(Some("websocket, h2c")), &ws),
            UpgradeAsk::Strip
        );
        let c = http::HeaderValue::from_static("keep-alive, Upgrade");
        assert_eq!(
            connection_without_upgrade(&c).as_deref(),
            Some("keep-alive")
        );
        let c = http::HeaderValue::from_static("upgrade");
        assert_eq!(connection_without_upgrade(&c), None);
    }

    fn settings() -> ServerSettings {
        crate::config::Config::from_file(
            serde_yaml::from_str(
                "upstreams: [{name: a, url: 'http://127.0.0.1:1', match: {host: api.example}, credentials: none}]",
            )
            .unwrap(),
            std::path::Path::new("/"),
        )
        .unwrap()
        .server
    }

    fn router() -> Router {
        let cfg = crate::config::Config::from_file(
            serde_yaml::from_str(
                "upstreams: [{name: a, url: 'http://vendor.example:1', match: {host: api.example}, credentials: none}]",
            )
            .unwrap(),
            std::path::Path::new("/"),
        )
        .unwrap();
        Router::new(&cfg.upstreams)
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    /// What `admit` found, owned (the tests build requests as temporaries).
    #[derive(Debug, PartialEq)]
    struct Found {
        host: Option<String>,
        rewritten: Option<String>,
        canonical_length: Option<u64>,
    }

    fn check(r: &RequestHeader) -> Result<Found, Refusal> {
        admit(r, &settings(), &router()).map(|a| Found {
            host: a.host.map(str::to_string),
            rewritten: a.rewritten,
            canonical_length: a.canonical_length,
        })
    }

    #[test]
    fn plain_request_passes_untouched() {
        let a = check(&req("GET", "/v1/x", &[("Host", "api.example:8080")])).unwrap();
        assert_eq!(a.host.as_deref(), Some("api.example"));
        assert_eq!(a.rewritten, None);
        assert_eq!(a.canonical_length, None);
        let a = check(&req(
            "POST",
            "/v1/x",
            &[("Host", "h"), ("Content-Length", "5")],
        ))
        .unwrap();
        assert_eq!(a.canonical_length, None);
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            check(&req("GET", "/x", &[])).unwrap_err().reason,
            ClientReason::BadHost
        );
        let mut r10 = req("GET", "/x", &[]);
        r10.set_version(Version::HTTP_10);
        assert!(check(&r10).is_ok());
        let a = check(&req(
            "GET",
            "http://API.example/x",
            &[("Host", "api.example")],
        ))
        .unwrap();
        assert_eq!(a.rewritten.as_deref(), Some("/x"));
        let a = check(&req(
            "GET",
            "http://vendor.example/x",
            &[("Host", "vendor.example")],
        ))
        .unwrap();
        assert_eq!(a.host.as_deref(), Some("vendor.example"));
        assert_eq!(
            check(&req(
                "GET",
                "http://evil.example/x",
                &[("Host", "evil.example")]
            ))
            .unwrap_err()
            .reason,
            ClientReason::BadTarget
        );
        assert_eq!(
            check(&req("GET", "http://api.example/x", &[("Host", "other")]))
                .unwrap_err()
                .reason,
            ClientReason::BadHost
        );
    }

    #[test]
    fn framing_rules() {
        let h = ("Host", "h");
        let a = check(&req(
            "POST",
            "/",
            &[h, ("Content-Length", "5"), ("Content-Length", "5")],
        ))
        .unwrap();
        assert_eq!(a.canonical_length, Some(5));
        let a = check(&req("POST", "/", &[h, ("Content-Length", "5, 5")])).unwrap();
        assert_eq!(a.canonical_length, Some(5));
        let a = check(&req("POST", "/", &[h, ("Content-Length", "005")])).unwrap();
        assert_eq!(a.canonical_length, Some(5));
        for bad in ["5, 6", "+5", "-1", "5x", "", "0x5", "99999999999999999999"] {
            let r = req("POST", "/", &[h, ("Content-Length", bad)]);
            assert_eq!(check(&r).unwrap_err().status, 400, "{bad:?}");
        }
        let r = req("POST", "/", &[h, ("Content-Length", "10485761")]);
        assert_eq!(check(&r).unwrap_err().status, 413);
        for bad in ["gzip, chunked", "gzip", "chunked, chunked", "identity"] {
            let r = req("POST", "/", &[h, ("Transfer-Encoding", bad)]);
            assert_eq!(
                check(&r).unwrap_err().reason,
                ClientReason::BadFraming,
                "{bad:?}"
            );
        }
        assert!(check(&req("POST", "/", &[h, ("Transfer-Encoding", "Chunked")])).is_ok());
    }

    #[test]
    fn the_request_line_counts_toward_the_header_limit() {
        // Neither alone is over 64 KiB; together they are.
        let path = format!("/{}", "a".repeat(6000));
        let value = "b".repeat(60 << 10);
        let r = req("GET", &path, &[("Host", "h"), ("X-Big", &value)]);
        assert_eq!(check(&r).map_err(|e| e.status), Err(431));
        let r = req("GET", "/", &[("Host", "h"), ("X-Big", &value)]);
        assert!(check(&r).is_ok());
    }
}

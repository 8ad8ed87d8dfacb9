//! What an upstream's answer says about the token that carried it.
//!
//! Vendors say more than a status code. graceway reads:
//! - RFC 6750 `WWW-Authenticate: Bearer error="..."`: `invalid_token` is
//!   about the token; `insufficient_scope` and `invalid_request` are about
//!   this request or resource; a 401/403 with no error code could be either
//!   and is confirmed before the token is declared rejected;
//! - rate-limit headers, both families: the IETF httpapi draft
//!   (`RateLimit: "name";r=0;t=30` with `RateLimit-Policy: "name";q=100`, or
//!   the older separate `RateLimit-Limit/-Remaining/-Reset`) and the de-facto
//!   `X-RateLimit-Limit/-Remaining/-Reset` (GitHub sends its quota as a 403
//!   with `X-RateLimit-Remaining: 0`);
//! - deprecation notices: RFC 9745 `Deprecation: @<unix seconds>` (and the
//!   older `true` or HTTP-date forms), RFC 8594 `Sunset: <HTTP-date>`, and
//!   their `Link` targets (`rel="deprecation"`, `"sunset"`,
//!   `"successor-version"`).
//!
//! Everything here is a pure function of the headers; values that reach
//! logs and status are sanitized and bounded, and a detail that contains
//! the token itself is redacted by the caller ([`redact`]).

use http::header::{HeaderMap, HeaderName, WWW_AUTHENTICATE};

/// What a 401/403/429 says about the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `invalid_token`: the vendor says the token is bad.
    Rejected,
    /// No error code: maybe the token, maybe this resource. Confirmed by
    /// the probe, or by a rejection on another path.
    Suspect,
    /// `insufficient_scope`, `invalid_request`: the vendor's answer for
    /// this request; passed through, the token is fine.
    NotAboutToken,
    /// The token's quota ran out: rate-limited until the reset.
    QuotaExhausted,
}

/// The verdict with the vendor's own words, when it gave any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// `error (error_description)`, sanitized and at most 160 characters.
    pub detail: Option<String>,
}

/// Judges a 401, 403 or 429 answer (any other status is not a rejection).
pub fn judge(status: u16, headers: &HeaderMap) -> Judgement {
    let (error, description) = bearer_error(headers);
    let detail = error.as_deref().map(|e| match &description {
        Some(d) => bounded(&format!("{e} ({d})"), 160),
        None => bounded(e, 160),
    });
    let exhausted = quota(headers).is_some_and(|q| q.remaining == Some(0));
    let verdict = if status == 429 || (status == 403 && exhausted) {
        Verdict::QuotaExhausted
    } else {
        match error.as_deref() {
            Some("invalid_token") => Verdict::Rejected,
            Some("insufficient_scope") | Some("invalid_request") => Verdict::NotAboutToken,
            _ => Verdict::Suspect,
        }
    };
    let detail = detail
        .or_else(|| (verdict == Verdict::QuotaExhausted).then(|| "quota exhausted".to_string()));
    Judgement { verdict, detail }
}

static X_AMZN_ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// Judges a 401/403/429 from an upstream graceway signs for (SigV4): AWS
/// names its error in `x-amzn-ErrorType` (`Code` or `Code:namespace`).
/// Codes that say the credential is bad or expired reject it; an access
/// denial is about this request's permissions, not the credential. An
/// answer without the header (S3 and the query APIs put the code only in
/// the body, which graceway has not read when it decides) is judged like
/// any other: a bare 403 is suspect and fails over.
pub fn judge_aws(status: u16, headers: &HeaderMap) -> Judgement {
    let code = headers
        .get(&X_AMZN_ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(':').next())
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let Some(code) = code.filter(|_| status != 429) else {
        return judge(status, headers);
    };
    let verdict = match code {
        "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "InvalidAccessKeyId"
        | "InvalidToken" => Verdict::Rejected,
        "AccessDenied" | "AccessDeniedException" => Verdict::NotAboutToken,
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
            Verdict::QuotaExhausted
        }
        _ => return judge(status, headers),
    };
    Judgement {
        verdict,
        detail: Some(bounded(code, 160)),
    }
}

/// `error` and `error_description` of the first `WWW-Authenticate`
/// challenge that has them.
fn bearer_error(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = v.to_str() else { continue };
        let error = auth_param(text, "error");
        if error.is_some() {
            return (error, auth_param(text, "error_description"));
        }
    }
    (None, None)
}

/// The value of `name=value` or `name="quoted"` in a challenge, matched
/// as a whole parameter name.
fn auth_param(text: &str, name: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(name) {
        let start = from + pos;
        let end = start + name.len();
        from = end;
        let before_ok = start == 0 || matches!(bytes[start - 1], b' ' | b',' | b'\t');
        let rest = text[end..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        if let Some(q) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => return Some(out),
                    c => out.push(c),
                }
            }
            return Some(out);
        }
        let v: String = rest
            .chars()
            .take_while(|c| !matches!(c, ',' | ' ' | '\t'))
            .collect();
        return (!v.is_empty()).then_some(v);
    }
    None
}

/// Printable ASCII only, at most `max` characters.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('~');
    }
    out
}

/// Replaces the token value wherever a vendor echoed it back.
pub fn redact(detail: String, token: &str) -> String {
    if !token.is_empty() && detail.contains(token) {
        detail.replace(token, "[token]")
    } else {
        detail
    }
}

/// A token's quota as the last answer stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// Seconds from now until the quota resets.
    pub reset_in: Option<u64>,
}

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Reads either header family; `None` when the answer states no quota.
/// `X-RateLimit-Reset` above 10^9 is a Unix time (GitHub), else seconds.
pub fn quota(headers: &HeaderMap) -> Option<Quota> {
    quota_at(headers, crate::clock::unix_now)
}

/// `now` is read only for a Unix-time reset: most answers state no quota,
/// and this runs on every answer that carried a token.
fn quota_at(headers: &HeaderMap, now: impl Fn() -> u64) -> Option<Quota> {
    let num = |name: &HeaderName| -> Option<u64> {
        let v = headers.get(name)?.to_str().ok()?;
        // `RateLimit-Limit: 100, 100;w=60` (draft-03) starts with the number.
        let first = v.split([',', ';']).next()?.trim();
        first.parse().ok()
    };
    let reset_in = |v: u64| {
        if v > 1_000_000_000 {
            v.saturating_sub(now())
        } else {
            v
        }
    };
    if let Some(v) = headers.get(&RATELIMIT).and_then(|v| v.to_str().ok()) {
        // Structured (draft-07+): `"default";r=50;t=30`.
        let r = sf_param(v, "r");
        if r.is_some() || sf_param(v, "t").is_some() {
            let policy = headers
                .get(&RATELIMIT_POLICY)
                .and_then(|p| p.to_str().ok())
                .and_then(|p| sf_param(p, "q"));
            return Some(Quota {
                remaining: r,
                limit: policy,
                reset_in: sf_param(v, "t"),
            });
        }
        // Earlier drafts: `RateLimit: limit=100, remaining=50, reset=30`.
        let kv = |k: &str| {
            v.split(',').find_map(|p| {
                let (a, b) = p.trim().split_once('=')?;
                (a.trim() == k).then(|| b.trim().parse().ok())?
            })
        };
        if kv("remaining").is_some() {
            return Some(Quota {
                remaining: kv("remaining"),
                limit: kv("limit"),
                reset_in: kv("reset"),
            });
        }
    }
    if let Some(remaining) = num(&RATELIMIT_REMAINING) {
        return Some(Quota {
            remaining: Some(remaining),
            limit: num(&RATELIMIT_LIMIT),
            reset_in: num(&RATELIMIT_RESET),
        });
    }
    if let Some(remaining) = num(&X_REMAINING) {
        return Some(Quota {
            remaining: Some(remaining),
            limit: num(&X_LIMIT),
            reset_in: num(&X_RESET).map(reset_in),
        });
    }
    None
}

/// `;name=<integer>` in the first member of a structured-field list.
fn sf_param(v: &str, name: &str) -> Option<u64> {
    let first = v.split(',').next()?;
    first.split(';').skip(1).find_map(|p| {
        let (k, val) = p.trim().split_once('=')?;
        (k.trim() == name).then(|| val.trim().parse().ok())?
    })
}

/// A deprecation or sunset notice as the vendor last sent it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notice {
    /// `Deprecation` was sent (any form).
    pub deprecated: bool,
    /// When the deprecation takes (or took) effect, Unix seconds, when given.
    pub deprecation_at: Option<u64>,
    /// `Sunset`: when the resource stops answering, Unix seconds.
    pub sunset_at: Option<u64>,
    /// `Link` targets with rel `deprecation`, `sunset`, `successor-version`.
    pub links: Vec<(String, String)>,
}

static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The raw `Deprecation` and `Sunset` values, the cheap check made on
/// every answer; `None` when the answer carries neither.
pub fn notice_headers(headers: &HeaderMap) -> Option<(&[u8], &[u8])> {
    let d = headers.get(&DEPRECATION).map(|v| v.as_bytes());
    let s = headers.get(&SUNSET).map(|v| v.as_bytes());
    (d.is_some() || s.is_some()).then(|| (d.unwrap_or_default(), s.unwrap_or_default()))
}

/// Parses a notice (called only when [`notice_headers`] found one that
/// differs from the last).
pub fn notice(headers: &HeaderMap) -> Notice {
    let text = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let deprecation = text(&DEPRECATION);
    let deprecation_at = deprecation.and_then(|d| {
        d.strip_prefix('@')
            .and_then(|n| n.parse::<i64>().ok())
            .map(|n| n.max(0) as u64)
            .or_else(|| http_date(d))
    });
    let deprecated = deprecation.is_some_and(|d| !d.eq_ignore_ascii_case("false"));
    let sunset_at = text(&SUNSET).and_then(http_date);
    let mut links = Vec::new();
    for v in headers.get_all(http::header::LINK) {
        let Ok(v) = v.to_str() else { continue };
        for link in v.split(',') {
            let Some((url, params)) = link.trim().split_once('>') else {
                continue;
            };
            let url = url.trim_start_matches('<');
            let rel = params.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k.trim().eq_ignore_ascii_case("rel")).then(|| v.trim().trim_matches('"'))
            });
            if let Some(rel) = rel {
                for r in rel.split_whitespace() {
                    if ["deprecation", "sunset", "successor-version"].contains(&r)
                        && links.len() < 4
                    {
                        links.push((r.to_string(), bounded(url, 256)));
                    }
                }
            }
        }
    }
    Notice {
        deprecated,
        deprecation_at,
        sunset_at,
        links,
    }
}

fn http_date(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s.trim())
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_error_types_judge_the_credential() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-amzn-errortype", v.parse().unwrap());
            m
        };
        let j = judge_aws(
            403,
            &h("ExpiredTokenException:http://internal.amazon.com/coral/"),
        );
        assert_eq!(j.verdict, Verdict::Rejected);
        assert_eq!(j.detail.as_deref(), Some("ExpiredTokenException"));
        assert_eq!(
            judge_aws(403, &h("SignatureDoesNotMatch")).verdict,
            Verdict::Rejected
        );
        assert_eq!(
            judge_aws(403, &h("AccessDeniedException")).verdict,
            Verdict::NotAboutToken
        );
        assert_eq!(judge_aws(403, &HeaderMap::new()).verdict, Verdict::Suspect);
        assert_eq!(
            judge_aws(429, &h("SignatureDoesNotMatch")).verdict,
            Verdict::QuotaExhausted
        );
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn rfc6750_error_codes() {
        let j = judge(
            401,
            &h(&[(
                "www-authenticate",
                r#"Bearer realm="api", error="invalid_token", error_description="The token has been deprecated""#,
            )]),
        );
        assert_eq!(j.verdict, Verdict::Rejected);
        assert_eq!(
            j.detail.as_deref(),
            Some("invalid_token (The token has been deprecated)")
        );
        let j = judge(
            403,
            &h(&[(
                "www-authenticate",
                r#"Bearer error="insufficient_scope", scope="admin""#,
            )]),
        );
        assert_eq!(j.verdict, Verdict::NotAboutToken);
        assert_eq!(judge(401, &h(&[])).verdict, Verdict::Suspect);
        assert_eq!(judge(403, &h(&[])).verdict, Verdict::Suspect);
        // `error_description` alone is not `error`.
        let j = judge(
            401,
            &h(&[(
                "www-authenticate",
                r#"Bearer error_description="x", error=invalid_request"#,
            )]),
        );
        assert_eq!(j.verdict, Verdict::NotAboutToken);
        // Several challenges: the one with an error code counts.
        let j = judge(
            401,
            &h(&[
                ("www-authenticate", r#"Basic realm="x""#),
                ("www-authenticate", r#"Bearer error="invalid_token""#),
            ]),
        );
        assert_eq!(j.verdict, Verdict::Rejected);
    }

    #[test]
    fn details_are_bounded_and_redacted() {
        let long = "x".repeat(500);
        let j = judge(
            401,
            &h(&[(
                "www-authenticate",
                &format!(r#"Bearer error="invalid_token", error_description="{long}""#),
            )]),
        );
        assert!(j.detail.unwrap().len() <= 161);
        assert_eq!(
            redact("bad token tok-123 seen".into(), "tok-123"),
            "bad token [token] seen"
        );
        assert_eq!(bounded("a\u{7}b\u{e9}", 10), "a?b?");
    }

    #[test]
    fn quota_exhaustion_is_rate_limited_not_rejected() {
        let j = judge(
            403,
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000060"),
            ]),
        );
        assert_eq!(j.verdict, Verdict::QuotaExhausted);
        let q = quota_at(
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-reset", "1700000060"),
            ]),
            || 1_700_000_000,
        )
        .unwrap();
        assert_eq!(
            q,
            Quota {
                remaining: Some(0),
                limit: Some(5000),
                reset_in: Some(60)
            }
        );
        let q = quota_at(
            &h(&[
                ("ratelimit", r#""default";r=7;t=30"#),
                ("ratelimit-policy", r#""default";q=100;w=60"#),
            ]),
            || 0,
        )
        .unwrap();
        assert_eq!(
            q,
            Quota {
                remaining: Some(7),
                limit: Some(100),
                reset_in: Some(30)
            }
        );
        let q = quota_at(
            &h(&[("ratelimit", "limit=100, remaining=0, reset=5")]),
            || 0,
        )
        .unwrap();
        assert_eq!(
            q,
            Quota {
                remaining: Some(0),
                limit: Some(100),
                reset_in: Some(5)
            }
        );
        let q = quota_at(
            &h(&[
                ("ratelimit-remaining", "3"),
                ("ratelimit-limit", "10, 10;w=1"),
                ("ratelimit-reset", "9"),
            ]),
            || 0,
        )
        .unwrap();
        assert_eq!(
            q,
            Quota {
                remaining: Some(3),
                limit: Some(10),
                reset_in: Some(9)
            }
        );
        assert_eq!(quota_at(&h(&[]), || 0), None);
        // A 403 with quota left is not a rate limit.
        assert_eq!(
            judge(403, &h(&[("x-ratelimit-remaining", "10")])).verdict,
            Verdict::Suspect
        );
    }

    #[test]
    fn deprecation_and_sunset() {
        let m = h(&[
            ("deprecation", "@1688169599"),
            ("sunset", "Sun, 30 Jun 2024 23:59:59 GMT"),
            (
                "link",
                r#"<https://api.example/deprecation>; rel="deprecation"; type="text/html", <https://api.example/v2>; rel="successor-version""#,
            ),
        ]);
        assert!(notice_headers(&m).is_some());
        let n = notice(&m);
        assert!(n.deprecated);
        assert_eq!(n.deprecation_at, Some(1688169599));
        assert_eq!(n.sunset_at, Some(1719791999));
        assert_eq!(
            n.links,
            vec![
                (
                    "deprecation".to_string(),
                    "https://api.example/deprecation".to_string()
                ),
                (
                    "successor-version".to_string(),
                    "https://api.example/v2".to_string()
                ),
            ]
        );
        let n = notice(&h(&[("deprecation", "true")]));
        assert!(n.deprecated && n.deprecation_at.is_none());
        assert!(notice_headers(&h(&[("content-type", "x")])).is_none());
    }
}

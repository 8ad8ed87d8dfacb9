//! Answers graceway writes itself: JSON errors and degraded answers from
//! the last-good cache, with the degradation headers.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::conditional_filter;
use pingora::proxy::Session;

use crate::cache::CachedResponse;
use crate::config::StalePolicy;
use crate::generation::Upstream;
use crate::outcome::{Hit, Reason};

/// A complete answer to write in place of the upstream's.
pub struct Replacement {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Served from the cache (`stale`) or an error (`error`).
    pub stale: bool,
}

impl Replacement {
    /// Marks an answer from a copy the fleet tier had: RFC 9211 names one
    /// member per cache, the one nearest the origin first, so
    /// `graceway-fleet; hit` goes before this graceway's member.
    pub fn fleet_member(mut self) -> Replacement {
        if let Some(cs) = self.header.headers.get("cache-status") {
            let mut v = b"graceway-fleet; hit, ".to_vec();
            v.extend_from_slice(cs.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                let _ = self.header.insert_header("Cache-Status", v);
            }
        }
        self
    }
}

/// Builds a JSON error answer.
pub fn json_error(
    status: u16,
    message: &str,
    upstream: Option<&str>,
    reason: &str,
    retry_after: Option<&HeaderValue>,
) -> Result<Replacement> {
    let body = error_body(message, upstream, reason);
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if status == 503 {
        match retry_after {
            Some(v) => resp.insert_header(http::header::RETRY_AFTER, v.clone())?,
            None => resp.insert_header(http::header::RETRY_AFTER, "5")?,
        }
    }
    Ok(Replacement {
        header: resp,
        body: Bytes::from(body),
        stale: false,
    })
}

/// The degraded 503: the JSON error with `X-Graceway-Degraded`.
pub fn unavailable(
    message: &str,
    up: &Upstream,
    reason: Reason,
    retry_after: Option<&HeaderValue>,
) -> Result<Replacement> {
    let mut r = json_error(
        503,
        message,
        Some(&up.config.name),
        reason.as_str(),
        retry_after,
    )?;
    r.header
        .insert_header("X-Graceway-Degraded", reason.as_str())?;
    Ok(r)
}

/// Writes a complete answer from the request phase (or the error path).
pub async fn write(session: &mut Session, r: Replacement) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD || r.body.is_empty();
    session
        .write_response_header(Box::new(r.header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(r.body), true).await?;
    }
    Ok(())
}

/// A servable copy for this request, if the cache has one.
pub fn servable_copy(
    cache: &crate::cache::Cache,
    up: &Upstream,
    req: &RequestHeader,
) -> Option<Arc<CachedResponse>> {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return None;
    }
    let policy: &StalePolicy = &up.config.stale;
    cache.lookup(&up.config.name, req).filter(|c| {
        c.recorded.servable(
            SystemTime::now(),
            policy.max_stale,
            policy.honor_origin_directives,
        )
    })
}

/// The degraded answer for a request whose upstream outcome is `reason`:
/// its servable copy (`copy`, from [`servable_copy`]; or a 304 when the
/// client's validators match it) with the degradation headers, else the
/// 503 JSON error.
pub fn degraded(
    copy: Option<Arc<CachedResponse>>,
    up: &Upstream,
    req: &RequestHeader,
    reason: Reason,
    fwd_status: Option<u16>,
    retry_after: Option<&HeaderValue>,
) -> Result<Replacement> {
    let Some(copy) = copy else {
        return unavailable(
            "the upstream cannot answer and no last good copy exists for this request",
            up,
            reason,
            retry_after,
        );
    };
    let now = SystemTime::now();
    let mut h = copy.response_header(now)?;
    // The client's validators against the copy (several ETags, weak
    // comparison, If-None-Match before If-Modified-Since: pingora-core's
    // conditional filter, RFC 9110 §13).
    let not_modified = conditional_filter::not_modified_filter(req, &h);
    if not_modified {
        conditional_filter::to_304(&mut h);
    }
    let cs = match fwd_status {
        None => HeaderValue::from_static(reason.stale_cache_status()),
        Some(s) => HeaderValue::try_from(format!(
            "graceway; fwd=stale; fwd-status={s}; detail={}",
            reason.as_str()
        ))
        .map_err(|_| Error::explain(ErrorType::InternalError, "Cache-Status value"))?,
    };
    h.insert_header("Cache-Status", cs)?;
    // A copy answers `Range` with the whole body (200), so it must not
    // promise ranges (RFC 9110 §14.3).
    h.remove_header(&http::header::ACCEPT_RANGES);
    h.insert_header(
        "X-Graceway-Degraded",
        HeaderValue::from_static(reason.as_str()),
    )?;
    if up.config.stale.warning_header {
        h.insert_header(http::header::WARNING, "110 - \"Response is Stale\"")?;
    }
    Ok(Replacement {
        header: h,
        body: if not_modified {
            Bytes::new()
        } else {
            copy.recorded.body.clone()
        },
        stale: true,
    })
}

/// A copy answering with nothing wrong (a [`Hit`]): the copy with `Age`
/// and `Cache-Status` (RFC 9211: `hit`, its remaining freshness as `ttl`,
/// negative once stale), or a 304 when the client's validators match it.
pub fn hit(copy: &CachedResponse, req: &RequestHeader, kind: Hit) -> Result<Replacement> {
    let now = SystemTime::now();
    let mut h = copy.response_header(now)?;
    let not_modified = conditional_filter::not_modified_filter(req, &h);
    if not_modified {
        conditional_filter::to_304(&mut h);
    }
    let r = &copy.recorded;
    let age = r.age(now).as_secs() as i64;
    let ttl = r.fresh_for.as_secs() as i64 - age;
    let cs = match kind {
        Hit::Fresh => format!("graceway; hit; ttl={ttl}"),
        Hit::Revalidating => format!("graceway; hit; ttl={ttl}; detail=stale-while-revalidate"),
        Hit::Coalesced => "graceway; hit; detail=coalesced".to_string(),
    };
    let cs = HeaderValue::try_from(cs)
        .map_err(|_| Error::explain(ErrorType::InternalError, "Cache-Status value"))?;
    h.insert_header("Cache-Status", cs)?;
    h.remove_header(&http::header::ACCEPT_RANGES);
    Ok(Replacement {
        header: h,
        body: if not_modified || req.method == http::Method::HEAD {
            Bytes::new()
        } else {
            r.body.clone()
        },
        stale: false,
    })
}

/// A copy renewed by the vendor's 304 to the validators graceway sent,
/// answering the request that sent them: the copy, or a 304 when the
/// client's own validators match it.
pub fn renewed(copy: &CachedResponse, req: &RequestHeader) -> Result<Replacement> {
    let mut h = copy.response_header(SystemTime::now())?;
    let not_modified = conditional_filter::not_modified_filter(req, &h);
    if not_modified {
        conditional_filter::to_304(&mut h);
    }
    h.insert_header(
        "Cache-Status",
        HeaderValue::from_static("graceway; fwd=stale; fwd-status=304; stored"),
    )?;
    h.remove_header(&http::header::ACCEPT_RANGES);
    Ok(Replacement {
        header: h,
        body: if not_modified {
            Bytes::new()
        } else {
            copy.recorded.body.clone()
        },
        stale: false,
    })
}

/// `{"error": .., "upstream": .., "reason": ..}`, the body of every error
/// graceway answers itself. Values are escaped by serde_json.
pub fn error_body(error: &str, upstream: Option<&str>, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": error,
        "upstream": upstream,
        "reason": reason,
    }))
    .unwrap_or_default()
}

//! Renewing a kept copy: in the background (`stale-while-revalidate`, or
//! at a breaker's pace while it is open) and on a client's request (a
//! stale copy's validators sent with it). Both ask conditionally
//! (`If-None-Match` from the copy's `ETag`, `If-Modified-Since` from its
//! `Last-Modified`), so a 304 renews the copy without a body transfer.
//!
//! A background refresh holds the key's [`Lead`], so requests for the key
//! in the meantime wait for it (or are answered from the copy), and no
//! second refresh of the key starts. Its token is chosen in `choose`, like
//! every token; its outcome feeds the health breaker as a request's would.
//! A refusal (401/403/429) renews nothing and marks nothing: the next
//! client request meets it and the refusal rules apply there.

use super::*;
use crate::cache::flight::{Landing, Lead};
use crate::cache::CachedResponse;
use crate::net::outbound::{self, Failure};

/// Request headers a refresh does not copy from the request it was
/// started by: its own conditionals, a range, and what only describes
/// that one transfer or client.
fn dropped(name: &HeaderName) -> bool {
    use http::header::*;
    crate::config::is_hop_by_hop(name.as_str())
        || [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
            IF_RANGE,
            RANGE,
            CONTENT_LENGTH,
            HOST,
        ]
        .contains(name)
}

/// Adds `copy`'s validators to `req`.
pub(super) fn add_validators(req: &mut RequestHeader, copy: &CachedResponse) -> Result<()> {
    let (etag, modified) = copy.recorded.validators();
    if let Some(v) = etag {
        req.insert_header(http::header::IF_NONE_MATCH, v.clone())?;
    }
    if let Some(v) = modified {
        req.insert_header(http::header::IF_MODIFIED_SINCE, v.clone())?;
    }
    Ok(())
}

/// Whether a client request carries validators of its own (then those are
/// forwarded, and the vendor's 304 is the client's).
pub(super) fn has_validators(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::IF_NONE_MATCH)
        || req.headers.contains_key(http::header::IF_MODIFIED_SINCE)
}

impl Proxy {
    /// The vendor's answer to a request that sent its stale copy's
    /// validators: a 304 renews the copy and answers (true), a 200
    /// replaces it as any fresh answer would.
    pub(super) async fn revalidated(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        token: Option<&crate::tokens::Token>,
        resp: &mut ResponseHeader,
    ) -> Result<bool> {
        match resp.status.as_u16() {
            304 => {
                if let Some(t) = token {
                    record::token_answered(ctx, up, t, 304);
                }
                self.renew(session, ctx, up, resp).await?;
                Ok(true)
            }
            200 => {
                up.status.metrics.revalidated("request", "200");
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The vendor's 304 to the validators this request carried for its
    /// stale copy (`ctx.revalidate`): the copy is renewed (headers merged,
    /// freshness from now) and answers in place of the 304.
    async fn renew(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        resp: &mut ResponseHeader,
    ) -> Result<()> {
        let Some(copy) = ctx.revalidate.take() else {
            return Ok(());
        };
        let req = session.req_header();
        let renewed = copy.recorded.renewed(&resp.headers, SystemTime::now());
        let primary = self.primary(ctx, up, req);
        let key = self
            .cache()
            .capture_key(&up.config.name, &primary, &renewed.headers, req);
        let kept = self
            .cache()
            .keep(key, renewed, up.status.clone(), up.config.stale.max_stale);
        up.status.metrics.revalidated("request", "304");
        let answer = respond::renewed(&kept, req)?;
        record(ctx, up, Event::Fresh { status: 304 });
        self.replace(session, ctx, resp, answer).await?;
        self.land(ctx, Landing::Stored(kept));
        Ok(())
    }

    /// Starts the background refresh of `copy` (the answer to `req`),
    /// holding `lead` for its key.
    pub(super) fn refresh_in_background(
        &self,
        ctx: &RequestCtx,
        up: &Arc<Upstream>,
        req: &RequestHeader,
        copy: Arc<CachedResponse>,
        lead: Lead,
    ) {
        let Some(gen) = ctx.gen.clone() else {
            return;
        };
        let mut out = RequestHeader::build("GET", req.uri.to_string().as_bytes(), Some(8)).ok();
        if let Some(r) = out.as_mut() {
            for (k, v) in req.headers.iter().filter(|(k, _)| !dropped(k)) {
                let _ = r.append_header(k.clone(), v.clone());
            }
        }
        let token = match up.inject {
            None => None,
            Some(_) => choose::for_refresh(up).map(|t| t.index),
        };
        let Some(out) = out.filter(|_| up.inject.is_none() || token.is_some()) else {
            lead.land(Landing::Alone);
            return;
        };
        let app = self.app.clone();
        let up = up.clone();
        tokio::spawn(async move {
            let _gen = gen;
            refresh(&app.cache, &up, out, copy, token, lead).await;
        });
    }
}

/// One background refresh (see the module doc).
async fn refresh(
    cache: &Cache,
    up: &Upstream,
    mut req: RequestHeader,
    copy: Arc<CachedResponse>,
    token: Option<usize>,
    lead: Lead,
) {
    let m = &up.status.metrics;
    // The key is computed from the request as the client sent it (no
    // token, no validators): what `capture_key` of a client request sees.
    let keyed = req.clone();
    let built = req
        .insert_header(http::header::HOST, up.host_header.clone())
        .and_then(|_| add_validators(&mut req, &copy))
        .and_then(
            |_| match (&up.inject, token.and_then(|i| up.tokens.tokens.get(i))) {
                (Some(target), Some(t)) => target.inject(t, &mut req, None),
                (None, _) => Ok(()),
                (Some(_), None) => Error::e_explain(ErrorType::InternalError, "token gone"),
            },
        );
    if built.is_err() {
        lead.land(Landing::Alone);
        return;
    }
    let deadline = up.config.timeouts.connect + up.config.timeouts.read;
    let max = cache.max_object as usize;
    let answer = match outbound::send(&up.next_peer(0).0, req, None, deadline, max).await {
        Ok(a) => a,
        Err(f) => {
            record::refresh_answered(
                up,
                Err(match f {
                    Failure::Timeout => Reason::UpstreamTimeout,
                    Failure::Unreachable(_) => Reason::UpstreamUnreachable,
                }),
            );
            m.revalidated("background", "failed");
            lead.land(Landing::Alone);
            return;
        }
    };
    up.status.metrics.upstream_response(answer.status);
    record::refresh_answered(up, Ok(answer.status));
    let name = &up.config.name;
    let primary = cache.primary_key(name, &keyed);
    let now = SystemTime::now();
    let kept = match answer.status {
        304 => {
            let renewed = copy.recorded.renewed(&answer.headers, now);
            let key = cache.capture_key(name, &primary, &renewed.headers, &keyed);
            m.revalidated("background", "304");
            Some(cache.keep(key, renewed, up.status.clone(), up.config.stale.max_stale))
        }
        200 => keep_answer(cache, up, &keyed, &primary, answer, now),
        _ => None,
    };
    match kept {
        Some(c) => {
            record::refresh_kept(up);
            lead.land(Landing::Stored(c));
        }
        None => {
            m.revalidated("background", "failed");
            lead.land(Landing::Alone);
        }
    }
}

/// A background refresh's 200, kept when it may be (as a client request's
/// capture would: storable, not holding a token value).
fn keep_answer(
    cache: &Cache,
    up: &Upstream,
    keyed: &RequestHeader,
    primary: &crate::cache::MemKey,
    answer: outbound::Answer,
    now: SystemTime,
) -> Option<Arc<CachedResponse>> {
    let mut head = ResponseHeader::build(200, Some(answer.headers.len())).ok()?;
    for (k, v) in &answer.headers {
        head.append_header(k.clone(), v.clone()).ok()?;
    }
    if up.reflections.scrub_headers(&head.headers).is_some()
        || up.reflections.find(&answer.body).is_some()
    {
        return None;
    }
    let (cc, headers) = stored::storable_meta(&head, cache.max_object)?;
    let key = cache.capture_key(&up.config.name, primary, &headers, keyed);
    let fresh_for = stored::fresh_for(&head, now);
    let recorded = Recorded::of_answer(headers, answer.body, &cc, fresh_for, now);
    up.status.metrics.revalidated("background", "200");
    Some(cache.keep(key, recorded, up.status.clone(), up.config.stale.max_stale))
}

//! Degraded answers: the last-good copy (memory tier, then the fleet
//! tier), or the 503 JSON, written from whichever phase learned that the
//! upstream cannot answer: the request phase (a breaker open, no usable
//! token), the response phase (a refusal or 5xx replaced before anything
//! reaches the client) or the error path (timeouts, refused connections).
//! `record_degraded` is the one bookkeeping step they share.

use super::*;

/// A degraded answer's bookkeeping, the same in every phase that writes
/// one: how the request ended, the stale counter, the upstream's last
/// degradation.
pub(super) fn record_degraded(ctx: &mut RequestCtx, up: &Upstream, reason: Reason, stale: bool) {
    ctx.outcome = if stale {
        up.status.metrics.stale_served(reason);
        Outcome::Stale(reason)
    } else {
        Outcome::Error(Some(reason))
    };
    up.status.mark_degraded(reason);
}

impl Proxy {
    /// Answers from the cache (or the 503 JSON) in the request phase,
    /// without contacting the upstream.
    pub(super) async fn short_circuit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        reason: Reason,
        fwd: Option<u16>,
        retry_after: Option<&HeaderValue>,
    ) -> Result<()> {
        let answer = if respond::triggered(&up.config.stale.on, reason, fwd) {
            self.degraded(session.req_header(), up, reason, fwd, retry_after)
                .await?
        } else {
            respond::unavailable("the upstream cannot answer", up, reason, retry_after)?
        };
        record_degraded(ctx, up, reason, answer.stale);
        respond::write(session, answer).await
    }

    /// The degraded answer for `req`: the last-good copy (asking the fleet
    /// tier first when the memory tier has none: the only place a request
    /// ever waits on Redis, bounded by `cache.redis.timeout`), else 503.
    pub(super) async fn degraded(
        &self,
        req: &RequestHeader,
        up: &Upstream,
        reason: Reason,
        fwd: Option<u16>,
        retry_after: Option<&HeaderValue>,
    ) -> Result<respond::Replacement> {
        let mut copy = respond::servable_copy(self.cache(), up, req);
        let from_fleet = copy.is_none() && self.fill_from_fleet(up, req).await;
        if from_fleet {
            copy = respond::servable_copy(self.cache(), up, req);
        }
        let mut answer = respond::degraded(copy, up, req, reason, fwd, retry_after)?;
        if from_fleet && answer.stale {
            // RFC 9211: one member per cache, the one nearest the origin
            // first: the fleet tier had it, this graceway served it.
            if let Some(cs) = answer.header.headers.get("cache-status").cloned() {
                let mut v = b"graceway-fleet; hit, ".to_vec();
                v.extend_from_slice(cs.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    answer.header.insert_header("Cache-Status", v)?;
                }
            }
        }
        Ok(answer)
    }

    /// Called on a local miss: the cache's fleet tier may have the copy.
    pub(super) async fn fill_from_fleet(&self, up: &Upstream, req: &RequestHeader) -> bool {
        self.cache()
            .fill_from_fleet(&up.config.name, req, up.status.clone())
            .await
    }

    /// Replaces the upstream's failing answer with the degraded one (the
    /// copy, or the 503) before anything reaches the client.
    pub(super) async fn replace_with_degraded(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        resp: &mut ResponseHeader,
        reason: Reason,
        retry_after: Option<&HeaderValue>,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let answer = self
            .degraded(session.req_header(), up, reason, Some(status), retry_after)
            .await?;
        record_degraded(ctx, up, reason, answer.stale);
        ctx.drop_upstream_body = true;
        let head = session.req_header().method == http::Method::HEAD;
        let upstream_has_no_body = status == 204
            || status == 304
            || resp
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        if !head && upstream_has_no_body && !answer.body.is_empty() {
            // Pingora calls no body filter for an empty upstream body: write
            // the whole answer now. Pingora then tries to send `resp` too and
            // logs a warning, which the logger filters (see `logging`).
            session
                .write_response_header(Box::new(answer.header.clone()), false)
                .await?;
            session.write_response_body(Some(answer.body), true).await?;
            *resp = answer.header;
        } else {
            *resp = answer.header;
            ctx.replace_body = (!head).then_some(answer.body);
        }
        Ok(())
    }

    /// No token can be sent (the auth breaker is open): answer from the
    /// cache at once, or let this request through as the auth trial with
    /// the next rejected token. `Ok(true)` when answered.
    pub(super) async fn without_usable_token(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        probed: bool,
    ) -> Result<bool> {
        let (reason, fwd) = up.no_token();
        if reason == Some(Reason::RateLimited) {
            // Every usable token is in its quota cool-down: answer at once
            // until the first reset (no breaker, no trials: the vendor said
            // when to come back).
            let retry = up.cooldown_retry_after();
            self.short_circuit(session, ctx, up, Reason::RateLimited, fwd, retry.as_ref())
                .await?;
            return Ok(true);
        }
        if reason.is_some_and(|r| up.auth.trip(r)) {
            log::warn!(
                "upstream {}: auth breaker open: no usable token ({}); answering from the last-good cache until {}",
                up.config.name,
                up.no_token_cause().as_str(),
                if probed { "a probe succeeds or the tokens change" } else { "a trial request succeeds or the tokens change" }
            );
        }
        // Successive trials cycle through the rejected tokens, so whichever
        // the vendor takes back is found.
        let trial_token = (!probed && up.auth.try_trial())
            .then(|| {
                let n = up
                    .auth_trials
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                up.tokens.trial_token(n, SystemTime::now())
            })
            .flatten();
        match trial_token {
            Some(t) => {
                ctx.token = Some(t.index);
                ctx.auth_trial = true;
                Ok(false)
            }
            None => {
                // Every source failed: the copy (or the 503) says
                // `token-unavailable`; nothing is sent upstream.
                let r = reason.unwrap_or(Reason::TokenUnavailable);
                self.short_circuit(session, ctx, up, r, fwd, None).await?;
                Ok(true)
            }
        }
    }

    /// Answers a failed request degraded (the copy, or the 503) when the
    /// upstream's `stale.on` lists the reason and nothing was written yet.
    /// Pingora reuses neither connection after a failed attempt, so the
    /// answer says `Connection: close`. `None`: not answered here.
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        reason: Reason,
        fwd: Option<u16>,
    ) -> Option<FailToProxy> {
        if session.response_written().is_some()
            || !respond::triggered(&up.config.stale.on, reason, fwd)
        {
            return None;
        }
        let mut answer = self
            .degraded(session.req_header(), up, reason, fwd, None)
            .await
            .ok()?;
        session.set_keepalive(None);
        let _ = answer
            .header
            .insert_header(http::header::CONNECTION, "close");
        let code = answer.header.status.as_u16();
        record_degraded(ctx, up, reason, answer.stale);
        if let Err(err) = respond::write(session, answer).await {
            log::debug!("writing the degraded answer failed: {err}");
        }
        Some(FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        })
    }
}

//! Degraded answers: the last-good copy (memory tier, then the fleet
//! tier), or the 503 JSON. [`Proxy::degrade`] is their one writer, called
//! from whichever phase learned that the upstream cannot answer: the
//! request phase (a breaker open, no usable token), the response phase (a
//! refusal or 5xx replaced before anything reaches the client) or the
//! error path (timeouts, refused connections). It records the outcome
//! ([`record::Event::Degraded`]) and owns the client connection's fate:
//! kept alive unless the error path or a drain says otherwise. Pingora
//! writes `Connection` from that keep-alive state.

use super::*;

/// The phase a degraded answer is written from.
pub(super) enum Phase<'r> {
    /// Before any upstream contact: written now; keep-alive kept, no
    /// upstream round trip.
    Request,
    /// The upstream's failing header, before anything reached the client:
    /// replaced, and the body swapped at end of stream; keep-alive kept.
    /// When the upstream sent no body Pingora calls no body filter, so the
    /// whole answer is written now instead.
    Response(&'r mut ResponseHeader),
    /// The error path (timeout, refused, reset): Pingora reuses neither
    /// connection after a failed attempt, so the answer says
    /// `Connection: close` rather than promise keep-alive.
    Failed,
}

impl Proxy {
    /// Writes the degraded answer for `reason` (the copy when `stale.on`
    /// lists it, else the 503) and records it. `fwd` is the upstream's
    /// status when it sent one; `retry_after` the `Retry-After` to give.
    /// Returns the status written, or `None` when the error path has
    /// nothing to write (`stale.on` does not list the reason, or an
    /// answer has started): Pingora's default answer follows.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn degrade(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        reason: Reason,
        fwd: Option<u16>,
        retry_after: Option<&HeaderValue>,
        phase: Phase<'_>,
    ) -> Result<Option<u16>> {
        let listed = decide::degrades(&up.config.stale.on, reason, fwd);
        if matches!(phase, Phase::Failed) && (!listed || session.response_written().is_some()) {
            return Ok(None);
        }
        let answer = if listed {
            self.degraded(session.req_header(), up, reason, fwd, retry_after)
                .await?
        } else {
            respond::unavailable("the upstream cannot answer", up, reason, retry_after)?
        };
        record::record(
            ctx,
            up,
            record::Event::Degraded {
                reason,
                stale: answer.stale,
            },
        );
        if matches!(phase, Phase::Failed) || self.app.drain.draining() {
            session.set_keepalive(None);
        }
        let code = answer.header.status.as_u16();
        // Requests waiting on this one's fetch are answered as it was when
        // a copy answered it; without one they go to the vendor themselves
        // (its failure may have been this request's alone).
        let landing = if answer.stale {
            Landing::Degraded(reason)
        } else {
            Landing::Alone
        };
        match phase {
            Phase::Request => respond::write(session, answer).await?,
            Phase::Failed => {
                if let Err(err) = respond::write(session, answer).await {
                    log::debug!("writing the degraded answer failed: {err}");
                }
            }
            Phase::Response(resp) => self.replace(session, ctx, resp, answer).await?,
        }
        self.land(ctx, landing);
        Ok(Some(code))
    }

    /// The response phase's part of [`Proxy::degrade`]: `resp` becomes the
    /// degraded header, the upstream's body is dropped and `answer`'s sent
    /// in its place.
    pub(super) async fn replace(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHeader,
        answer: respond::Replacement,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.drop_upstream_body = true;
        let head = session.req_header().method == http::Method::HEAD;
        let upstream_has_no_body = status == 204
            || status == 304
            || resp
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        if !head && upstream_has_no_body && !answer.body.is_empty() {
            // Pingora calls no body filter for an empty upstream body: the
            // whole answer is written now. Pingora then skips sending
            // `resp` (a header is out) with its one WARN of that module,
            // which the logger demotes (`server::logging`).
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
            up.status.metrics.stale_from_fleet.inc();
            answer = answer.fleet_member();
        }
        Ok(answer)
    }

    /// Called on a local miss: the cache's fleet tier may have the copy.
    pub(super) async fn fill_from_fleet(&self, up: &Upstream, req: &RequestHeader) -> bool {
        self.cache()
            .fill_from_fleet(&up.config.name, req, up.status.clone())
            .await
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
            let (r, phase) = (Reason::RateLimited, Phase::Request);
            self.degrade(session, ctx, up, r, fwd, retry.as_ref(), phase)
                .await?;
            return Ok(true);
        }
        if let Some(r) = reason {
            record::auth_tripped(up, r, probed);
        }
        if !probed && choose::trial(ctx, up) {
            return Ok(false);
        }
        // Every source failed: the copy (or the 503) says
        // `token-unavailable`; nothing is sent upstream.
        let r = reason.unwrap_or(Reason::TokenUnavailable);
        self.degrade(session, ctx, up, r, fwd, None, Phase::Request)
            .await?;
        Ok(true)
    }
}

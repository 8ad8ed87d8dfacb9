//! What the upstream said about the token on this answer: a 401/403/429
//! weighed (rejected, suspect, the vendor's word on a resource, a spent
//! quota), the retry with the next token, the vendor's quota and notice
//! headers, and a token value it echoed back.

use super::*;

/// The upstream's `credentials.failover_on` (the default when it has none).
pub(super) fn failover_on(up: &Upstream) -> crate::config::FailoverOn {
    up.config
        .credentials
        .as_ref()
        .map_or(crate::config::FailoverOn::default(), |c| c.failover_on)
}

/// Whether a spent quota puts the token in a cool-down until the
/// vendor's reset (skipped meanwhile): when `failover_on` lists 429, or
/// when requests may wait for the reset (`credentials.queue.max_wait`),
/// so a request known to be over quota is never sent.
pub(super) fn cools_on_quota(up: &Upstream) -> bool {
    up.config
        .credentials
        .as_ref()
        .is_some_and(|c| c.failover_on.covers(429) || c.queue.on())
}

/// Retries the request once with `next` (the token [`choose`] chose for
/// the retry) when [`decide::retry_with_next_token`] says so. The upstream
/// refused the request, so nothing happened there: replaying it is safe
/// when its body is still at hand (see `error_while_proxy`). The error
/// returned asks Pingora for that retry; `None`: answer degraded.
pub(super) fn retry_with_next(
    ctx: &mut RequestCtx,
    up: &Upstream,
    next: Option<&crate::tokens::Token>,
    status: u16,
    listed: bool,
) -> Option<Box<Error>> {
    if !decide::retry_with_next_token(listed, ctx.failover_pending, next.is_some()) {
        return None;
    }
    choose::set(ctx, up, next?, crate::tokens::pool::Pick::Retry);
    let mut e = Error::explain(
        ErrorType::HTTPStatus(status),
        "token refused; retrying with the next token",
    )
    .into_up();
    e.set_retry(true);
    Some(e)
}

/// Reads what the vendor says beside the status, on every answer that
/// carried a token: the quota it states and a deprecation or sunset
/// notice. Without such headers this is a handful of header lookups.
pub(super) fn read_vendor_signals(
    up: &Upstream,
    t: &crate::tokens::Token,
    headers: &http::HeaderMap,
) {
    if let Some(q) = evidence::quota(headers) {
        let now = unix_now();
        t.observe_quota(q, now);
        // The last request of the window went through: with 429 failover
        // (or the queue), later requests go to the next token (or wait)
        // until the reset.
        if let (Some(0), Some(reset_in), true) = (q.remaining, q.reset_in, cools_on_quota(up)) {
            record::token_cooled(up, t, now, reset_in.max(1), None);
        }
    }
    if let Some((deprecation, sunset)) = evidence::notice_headers(headers) {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(deprecation, sunset), &mut h);
        t.observe_notice(std::hash::Hasher::finish(&h), || evidence::notice(headers));
    }
}

/// A hash of a request path, to tell two paths apart without keeping them.
pub(super) fn path_hash(path: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(path, &mut h);
    std::hash::Hasher::finish(&h)
}

/// The upstream echoed token `index`'s value: counted by part, logged once
/// per token (the value never: its fingerprint).
pub(super) fn note_reflection(up: &Upstream, index: usize, part: &'static str) {
    let m = &up.status.metrics;
    if part == "header" {
        m.reflected_header.inc();
    } else {
        m.reflected_body.inc();
    }
    if let Some(t) = up.tokens.tokens.get(index) {
        if t.evidence.reflected_first() {
            log::warn!(
                "upstream {}: its answer echoed token {} ({}) in the {part}; taken out (masked or dropped, the copy not kept). Check what the upstream reflects.",
                up.config.name,
                t.index,
                t.fingerprint
            );
        }
    }
}

impl Proxy {
    /// The upstream refused token `t` with a 401/403 that is about the
    /// token (`invalid_token`) or may be (no error code). The first is a
    /// rejection; the second makes the token `suspect`, and is confirmed by
    /// the probe (woken at once, see `app::probe::run`) or, without a probe, by
    /// a refusal on another path within
    /// [`crate::tokens::set::SUSPECT_WINDOW_SECS`]. Either way
    /// this request is retried once with the next usable token (when
    /// `retry`: not once the answer has started); the error returned asks
    /// Pingora for that retry.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn token_refused(
        &self,
        ctx: &mut RequestCtx,
        up: &Upstream,
        t: &crate::tokens::Token,
        status: u16,
        judged: evidence::Judgement,
        path: &str,
        retry: bool,
    ) -> Option<Box<Error>> {
        let detail = judged
            .detail
            .map(|d| evidence::redact(d, t.secret().map_or("", |s| s.expose())));
        let suspicion = match judged.verdict {
            Verdict::Rejected => None,
            _ => Some(record::token_suspected(up, t, path)),
        };
        let suspect_after = up
            .config
            .credentials
            .as_ref()
            .map_or(3, |c| c.suspect_after);
        let vendor_said = matches!(judged.verdict, Verdict::Rejected);
        let confirmed = decide::rejection_confirmed(
            judged.verdict,
            suspicion,
            t.evidence.suspect_refusals(),
            suspect_after,
            up.probe().is_some(),
        );
        let said = detail.as_deref().unwrap_or("no error code");
        let next = choose::token(ctx, up, choose::Attempt::Retry, SystemTime::now());
        let failover = next
            .map(|n| format!("failing over to token {} ({})", n.index, n.fingerprint))
            .unwrap_or_else(|| "no other usable token".into());
        if confirmed {
            use crate::tokens::ledger::Evidence;
            let evidence = match (vendor_said, suspicion) {
                (true, _) => Evidence::VendorSaid,
                (false, Some(Suspicion::OtherPath)) => Evidence::SecondPath,
                (false, _) => Evidence::Streak,
            };
            record::token_rejected(up, t, status, evidence, said, &failover);
        } else if suspicion == Some(Suspicion::First) {
            log::info!(
                "upstream {}: token {} ({}) is suspect: {status} ({said}) on one path; {} decides. This request: {failover}",
                up.config.name,
                t.index,
                t.fingerprint,
                if up.probe().is_some() { "the probe" } else { "a refusal on another path" }
            );
        }
        t.evidence.set_detail(detail);
        if !retry {
            return None;
        }
        retry_with_next(ctx, up, next, status, failover_on(up).covers(status))
    }

    /// A 401, 403 or 429 (`status`, with the answer's `headers`; a gRPC
    /// refusal counts as its HTTP status, see `grpc`): what the vendor said
    /// about the token (see `tokens::evidence`). Returns the degradation
    /// reason (`None` when the answer is the vendor's word on this
    /// resource, passed through) and a `Retry-After` from the quota's
    /// reset; or, when `retry` (the answer has not started), the error
    /// that retries the request with the next token.
    pub(super) fn weigh_refusal(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        status: u16,
        headers: &http::HeaderMap,
        retry: bool,
    ) -> Result<(Option<Reason>, Option<HeaderValue>)> {
        if status != 429 {
            crate::metrics::metrics()
                .upstream_auth_failures_total
                .with_label_values(&[
                    up.config.name.as_str(),
                    if status == 401 { "401" } else { "403" },
                ])
                .inc();
        }
        let token = ctx.token.and_then(|i| up.tokens.tokens.get(i));
        let signs = up.inject.as_ref().is_some_and(|t| t.signing().is_some());
        let judged = match (grpc::refusal_status(headers), signs) {
            (Some(s), _) if s == status => grpc::judge(status, headers),
            (_, true) => evidence::judge_aws(status, headers),
            (_, false) => evidence::judge(status, headers),
        };
        match judged.verdict {
            // The vendor's answer for this resource: the client gets it as
            // it is; the token and the breakers are untouched.
            Verdict::NotAboutToken => Ok((None, None)),
            Verdict::QuotaExhausted => {
                let (cool_secs, retry_after) = decide::quota_cool_down(
                    headers.get(http::header::RETRY_AFTER),
                    evidence::quota(headers).and_then(|q| q.reset_in),
                );
                if let (Some(t), true) = (token, cools_on_quota(up)) {
                    record::token_cooled(up, t, unix_now(), cool_secs, Some(status));
                }
                if let (Some(_), true) = (token, retry && failover_on(up).covers(429)) {
                    // `failover_on` lists 429: a quota refusal (429 or 403) fails over.
                    let next = choose::token(ctx, up, choose::Attempt::Retry, SystemTime::now());
                    if let Some(retry) = retry_with_next(ctx, up, next, status, true) {
                        return Err(retry);
                    }
                }
                Ok((Some(Reason::RateLimited), retry_after))
            }
            Verdict::Rejected | Verdict::Suspect => {
                if let Some(t) = token {
                    let path = session.req_header().uri.path();
                    if let Some(again) = self.token_refused(ctx, up, t, status, judged, path, retry)
                    {
                        return Err(again);
                    }
                }
                Ok((Some(Reason::TokenRejected), None))
            }
        }
    }
}

//! The data plane: Pingora's [`ProxyHttp`] for graceway.
//!
//! A request flows: `request_filter` (load the generation, route, choose a
//! token; or answer at once) -> `upstream_peer` -> `upstream_request_filter`
//! (Host, token) -> upstream -> `upstream_response_filter` (status
//! bookkeeping; a failure becomes the stored answer here) ->
//! `response_filter` (`Cache-Status`) -> `response_body_filter` (capture
//! the body for the cache, or swap in the stored body) -> client.
//! Timeouts and refused connections have no upstream header and end in
//! `fail_to_proxy`.
//!
//! Everything a request reads was computed at load time
//! ([`crate::generation`]); the hooks clone precomputed values and bump
//! relaxed atomics. Which hook answers a degraded request matters for the
//! client's connection (measured, see `docs/benchmarks.md`):
//! - request phase (no usable token): written before any upstream contact,
//!   keep-alive kept, no upstream round trip;
//! - response phase (upstream said 401/403/429/5xx): the header is replaced
//!   and the body swapped at end of stream, keep-alive kept; when the
//!   upstream said `Content-Length: 0` Pingora calls no body filter, so the
//!   answer is written directly instead;
//! - error path (timeout, refused, reset): Pingora will not reuse either
//!   connection after a failed attempt, so the answer says
//!   `Connection: close` instead of promising keep-alive.

pub(crate) mod access_log;
mod admission;
mod decide;
mod respond;
pub(crate) mod target;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::app::App;
use crate::cache::stored::{self, CacheControl};
use crate::cache::{self, Cache, CachedResponse, Recorded};
use crate::clock::unix_now;
use crate::generation::{Generation, Upstream};
use crate::outcome::{Outcome, Reason};
use crate::tokens::evidence::{self, Verdict};
use crate::tokens::set::Suspicion;

pub struct Proxy {
    pub app: Arc<App>,
}

/// A body being captured for the last-good cache.
struct Capture {
    primary: String,
    /// Path and query, for the background trial (`last_good_path`).
    path: String,
    variant: Option<(Arc<[HeaderName]>, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    cc: CacheControl,
    /// The upstream's chunks, kept by reference (no copy per chunk).
    parts: Vec<Bytes>,
    size: usize,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The generation this request started with; kept for retries so a
    /// request never mixes two token sets.
    gen: Option<Arc<Generation>>,
    upstream: usize,
    /// Index of the token sent on the current attempt.
    token: Option<usize>,
    /// Tokens already tried (bit per index).
    tried: u64,
    /// The upstream's status on the last attempt, once known.
    upstream_status: u16,
    /// A GET without the client's own credentials (see
    /// `stored::storable_request`).
    storable_request: bool,
    /// Boxed: most requests capture nothing, and the context is moved with
    /// the request's future (a smaller context is a smaller copy).
    capture: Option<Box<Capture>>,
    /// A `Content-Length: 0` answer was kept at once (no body to capture).
    stored_empty: bool,
    /// Drop the upstream's body chunks (its answer was replaced).
    drop_upstream_body: bool,
    /// Emit this body at end of stream (the replaced answer's body).
    replace_body: Option<Bytes>,
    /// Masks token values in the body on its way out
    /// (`stale.scrub_bodies`); boxed, as it is rarely on.
    scrub: Option<Box<crate::tokens::reflect::BodyScrubber>>,
    outcome: Outcome,
    sent_at: Option<Instant>,
    /// This request is the auth breaker's half-open trial (it carries a
    /// rejected token to see whether the upstream accepts it again).
    auth_trial: bool,
    /// A 401/403 was answered by retrying with the next token.
    failover_pending: bool,
    /// When the request arrived (for the access log).
    started_at: Option<Instant>,
    /// Upstream time to the response header.
    upstream_time: Option<std::time::Duration>,
    /// The client asked for an upgrade the upstream allows (`upgrade`): a
    /// 101 becomes a tunnel with `timeouts.stream_idle`.
    upgrade: bool,
    /// A stream: announced by the request (`Accept: text/event-stream`, an
    /// allowed upgrade, an upstream with `stream: true`; its reads wait
    /// `timeouts.stream_idle`) or found in the answer
    /// (`text/event-stream`). Never stored; once its header has arrived,
    /// its end, pause or cut is never charged to the upstream.
    stream: bool,
    /// Request body bytes received so far (for `max_request_body_bytes`).
    body_bytes: u64,
    /// Counts this request as in flight until the context is dropped (a
    /// drain waits for none to be left, see `lifecycle`).
    _in_flight: Option<crate::app::lifecycle::InFlight>,
}

impl RequestCtx {
    fn upstream(&self) -> Option<&Upstream> {
        self.gen
            .as_ref()
            .map(|g| g.upstreams[self.upstream].as_ref())
    }
}

/// A path's copy is refreshed at most this often.
const STORE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

static CS_STORED: HeaderValue = HeaderValue::from_static("graceway; fwd=miss; stored");
static CS_MISS: HeaderValue = HeaderValue::from_static("graceway; fwd=miss");

impl Proxy {
    fn cache(&self) -> &Cache {
        &self.app.cache
    }

    /// Answers from the cache (or the 503 JSON) in the request phase,
    /// without contacting the upstream.
    async fn short_circuit(
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
    async fn degraded(
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

    /// Called on a local miss: reads the request's copy from the fleet tier
    /// and keeps it in the memory tier; true when one came.
    async fn fill_from_fleet(&self, up: &Upstream, req: &RequestHeader) -> bool {
        let Some(fleet) = &self.app.fleet else {
            return false;
        };
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return false;
        }
        let name = up.config.name.as_str();
        let primary = cache::primary_key(name, req);
        let Some(found) = fleet.get(name, &primary).await else {
            return false;
        };
        // A copy that varies is kept under its variant's key too: ask for
        // the one this request's headers select.
        let names = stored::vary_names(&found.headers);
        let (found, variant) = if names.is_empty() {
            (found, None)
        } else {
            let vkey = cache::variant_key(&primary, &names, req);
            match fleet.get(name, &vkey).await {
                Some(v) => (v, Some((Arc::from(names), vkey))),
                None => return false,
            }
        };
        self.cache()
            .adopt(&primary, variant, found, up.status.clone());
        true
    }

    /// Answers a request graceway will not forward (4xx), before any token
    /// is chosen. A 400, 408, 413 or 431 also closes the connection: what
    /// follows on it (a body, a smuggled request) is not to be read.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: &admission::Refusal,
        allow: Option<HeaderValue>,
    ) -> Result<()> {
        crate::metrics::client_rejected(refusal.reason);
        ctx.outcome = Outcome::Client(refusal.reason);
        let mut answer =
            respond::json_error(refusal.status, refusal.message, None, refusal.reason, None)?;
        if let Some(allow) = allow {
            answer.header.insert_header(http::header::ALLOW, allow)?;
        }
        if refusal.status != 404 && refusal.status != 405 {
            session.set_keepalive(None);
            answer
                .header
                .insert_header(http::header::CONNECTION, "close")?;
        }
        respond::write(session, answer).await
    }

    /// The upstream refused token `t` with a 401/403 that is about the
    /// token (`invalid_token`) or may be (no error code). The first is a
    /// rejection; the second makes the token `suspect`, and is confirmed by
    /// the probe (woken at once, see `app::probe::run`) or, without a probe, by
    /// a refusal on another path within
    /// [`crate::tokens::set::SUSPECT_WINDOW_SECS`]. Either way
    /// this request is retried once with the next usable token; the error
    /// returned asks Pingora for that retry.
    fn token_refused(
        &self,
        ctx: &mut RequestCtx,
        up: &Upstream,
        t: &crate::tokens::Token,
        status: u16,
        judged: evidence::Judgement,
        path: &str,
    ) -> Option<Box<Error>> {
        let detail = judged
            .detail
            .map(|d| evidence::redact(d, t.secret().map_or("", |s| s.expose())));
        let suspicion = match judged.verdict {
            Verdict::Rejected => None,
            _ => Some(t.evidence.suspect(path_hash(path), unix_now())),
        };
        let suspect_after = up
            .config
            .credentials
            .as_ref()
            .map_or(3, |c| c.suspect_after);
        let confirmed = decide::rejection_confirmed(
            judged.verdict,
            suspicion,
            t.evidence.suspect_refusals(),
            suspect_after,
            up.probe().is_some(),
        );
        let said = detail.as_deref().unwrap_or("no error code");
        let next = up.tokens.pick(ctx.tried, SystemTime::now());
        let failover = next
            .map(|n| format!("failing over to token {} ({})", n.index, n.fingerprint))
            .unwrap_or_else(|| "no other usable token".into());
        if confirmed {
            if t.mark_rejected(status) {
                log::warn!(
                    "upstream {}: token {} ({}) rejected with {status}: {said}; {failover}",
                    up.config.name,
                    t.index,
                    t.fingerprint
                );
            }
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
        retry_with_next(ctx, up, status, failover_on(up).covers(status))
    }

    /// A 401, 403 or 429: what the vendor said about the token (see
    /// `tokens::evidence`). Returns the degradation reason (`None` when the
    /// answer is the vendor's word on this resource, passed through) and a
    /// `Retry-After` from the quota's reset; or the error that retries the
    /// request with the next token.
    fn weigh_refusal(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        resp: &ResponseHeader,
    ) -> Result<(Option<Reason>, Option<HeaderValue>)> {
        let status = resp.status.as_u16();
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
        let judged = evidence::judge(status, &resp.headers);
        match judged.verdict {
            // The vendor's answer for this resource: the client gets it as
            // it is; the token and the breakers are untouched.
            Verdict::NotAboutToken => Ok((None, None)),
            Verdict::QuotaExhausted => {
                let (cool_secs, retry_after) = decide::quota_cool_down(
                    resp.headers.get(http::header::RETRY_AFTER),
                    evidence::quota(&resp.headers).and_then(|q| q.reset_in),
                );
                if let (Some(t), true) = (token, failover_on(up).covers(429)) {
                    if t.evidence.cool_down(unix_now() + cool_secs) {
                        log::warn!(
                            "upstream {}: token {} ({}) is out of quota ({status}); skipped for {cool_secs} s",
                            up.config.name,
                            t.index,
                            t.fingerprint,
                        );
                    }
                    // `failover_on` lists 429: a quota refusal (429 or 403) fails over.
                    if let Some(retry) = retry_with_next(ctx, up, status, true) {
                        return Err(retry);
                    }
                }
                Ok((Some(Reason::RateLimited), retry_after))
            }
            Verdict::Rejected | Verdict::Suspect => {
                if let Some(t) = token {
                    let path = session.req_header().uri.path();
                    if let Some(retry) = self.token_refused(ctx, up, t, status, judged, path) {
                        return Err(retry);
                    }
                }
                Ok((Some(Reason::TokenRejected), None))
            }
        }
    }

    /// Replaces the upstream's failing answer with the degraded one (the
    /// copy, or the 503) before anything reaches the client.
    async fn replace_with_degraded(
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

    /// A 200 to a storable GET: starts capturing its body for the cache.
    /// Under load a hot path would be re-stored on every answer; a copy
    /// younger than STORE_REFRESH is kept instead (a lookup costs ~0.15 us,
    /// a capture and insert several).
    fn start_capture(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        up: &Upstream,
        resp: &ResponseHeader,
    ) {
        let primary = cache::primary_key(&up.config.name, req);
        let held = self.cache().lookup_primary(&primary, req);
        if held.is_none() && !self.cache().admit(&primary) {
            return;
        }
        let recently_stored =
            held.is_some_and(|c| c.recorded.age(SystemTime::now()) < STORE_REFRESH);
        let meta = (!recently_stored)
            .then(|| stored::storable_meta(resp, self.cache().max_object))
            .flatten();
        let Some((cc, headers)) = meta else {
            return;
        };
        let names = stored::vary_names(&headers);
        let variant = (!names.is_empty()).then(|| {
            let vkey = cache::variant_key(&primary, &names, req);
            (Arc::from(names), vkey)
        });
        let capture = Capture {
            primary,
            path: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            variant,
            headers,
            cc,
            parts: Vec::new(),
            size: 0,
        };
        let empty = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if empty {
            // Pingora calls no body filter for an empty body: the copy is
            // complete now.
            self.keep(up, capture);
            ctx.stored_empty = true;
        } else {
            ctx.capture = Some(Box::new(capture));
        }
    }

    /// Admission (Host, framing, sizes, target), routing and the
    /// upstream's method list. `None` when the request was refused (and
    /// answered); otherwise the upstream's index, with the normalized
    /// target and canonical `Content-Length` written into the request.
    async fn admit_and_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        gen: &Generation,
    ) -> Result<Option<usize>> {
        let server = &gen.loaded.config.server;
        let (index, rewritten, canonical_length, drop_headers) =
            match admission::admit(session.req_header(), server, &gen.router) {
                Ok(admitted) => {
                    let path = match admitted.rewritten.as_deref() {
                        Some(t) => t.split_once('?').map_or(t, |(p, _)| p),
                        None => session.req_header().uri.path(),
                    };
                    let index = gen.router.route(admitted.host, path);
                    (
                        index,
                        admitted.rewritten,
                        admitted.canonical_length,
                        admitted.drop_headers,
                    )
                }
                Err(refusal) => {
                    self.refuse(session, ctx, &refusal, None).await?;
                    return Ok(None);
                }
            };
        let req = session.req_header();
        let Some(index) = index else {
            let refusal = admission::Refusal {
                status: 404,
                message: "no upstream is configured for this host and path",
                reason: "no-route",
            };
            self.refuse(session, ctx, &refusal, None).await?;
            return Ok(None);
        };
        let up = &gen.upstreams[index];
        if !up.config.methods.contains(&req.method) {
            let refusal = admission::Refusal {
                status: 405,
                message: "this method is not forwarded to this upstream",
                reason: "method-not-allowed",
            };
            let allow = up.allow.clone();
            self.refuse(session, ctx, &refusal, Some(allow)).await?;
            return Ok(None);
        }
        if !admission::overrides_allowed(req, &up.config.methods) {
            let refusal = admission::Refusal {
                status: 405,
                message: "a method-override header names a method not forwarded to this upstream",
                reason: "method-not-allowed",
            };
            let allow = up.allow.clone();
            self.refuse(session, ctx, &refusal, Some(allow)).await?;
            return Ok(None);
        }
        for name in &drop_headers {
            session.req_header_mut().remove_header(name);
            crate::metrics::metrics()
                .request_headers_dropped_total
                .with_label_values(&["underscore"])
                .inc();
        }
        if let Some(t) = rewritten {
            session.req_header_mut().set_raw_path(t.as_bytes())?;
        }
        if let Some(n) = canonical_length {
            session
                .req_header_mut()
                .insert_header(http::header::CONTENT_LENGTH, n)?;
        }
        Ok(Some(index))
    }

    /// An `Upgrade` the upstream allows makes this request a tunnel
    /// candidate (its reads wait `timeouts.stream_idle`); any other is
    /// taken out, so nothing can switch protocols past graceway's rules.
    fn plan_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
    ) -> Result<()> {
        match admission::upgrade_ask(session.req_header(), &up.config.upgrade) {
            admission::UpgradeAsk::None => {}
            admission::UpgradeAsk::Allowed => {
                ctx.upgrade = true;
                session.set_read_timeout(Some(up.config.timeouts.stream_idle));
            }
            admission::UpgradeAsk::Strip => {
                up.status.metrics.upgrades_stripped.inc();
                let req = session.req_header_mut();
                req.remove_header(&http::header::UPGRADE);
                if let Some(c) = req.remove_header(&http::header::CONNECTION) {
                    if let Some(kept) = admission::connection_without_upgrade(&c) {
                        req.insert_header(http::header::CONNECTION, kept)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// No token can be sent (the auth breaker is open): answer from the
    /// cache at once, or let this request through as the auth trial with
    /// the next rejected token. `Ok(true)` when answered.
    async fn without_usable_token(
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
                up.no_token_reason(),
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
    async fn answer_failure(
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

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: Some(crate::app::lifecycle::InFlight::start()),
            ..RequestCtx::default()
        }
    }

    /// Runs as soon as the request header is parsed: the connection's
    /// header deadline (see [`crate::net::listener`]) no longer applies.
    /// Pipelined requests (sent before this one's answer was read) are
    /// answered one after another, in order (RFC 9112 §9.3.2); Pingora's
    /// default would drop them and close the connection.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let downstream = session.as_downstream_mut();
        crate::net::listener::header_complete(downstream.stream());
        downstream.set_pipelining_enabled(true);
        Ok(())
    }

    /// Counts request body bytes as they pass: a body (chunked, or longer
    /// than it said) that passes `server.max_request_body_bytes` is cut
    /// off and the upstream request aborted; the client gets 413 when no
    /// answer has started.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(gen)) = (body.as_ref(), ctx.gen.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > gen.loaded.config.server.max_request_body_bytes {
                *body = None;
                let e = Error::explain(ErrorType::HTTPStatus(413), "request body too large");
                return Err(e.into_down());
            }
        }
        Ok(())
    }

    /// First hook with the request header. Routes the request and picks its
    /// token, or answers it here without any upstream contact: unknown
    /// route (404), oversized header block (431), no usable token (the
    /// last-good copy, or 503). Returning `Ok(true)` means the response was
    /// written and nothing goes upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let gen = self.app.live.load_full();
        if gen.loaded.config.log.access {
            ctx.started_at = Some(Instant::now());
        }
        set_client_timeouts(session, &gen.loaded.config.server);
        let Some(index) = self.admit_and_route(session, ctx, &gen).await? else {
            return Ok(true);
        };
        ctx.storable_request = stored::storable_request(
            session.req_header(),
            &gen.loaded.config.cache.sensitive_query,
        );
        ctx.upstream = index;
        let up = gen.upstreams[index].clone();
        ctx.gen = Some(gen);
        self.plan_upgrade(session, ctx, &up)?;
        ctx.stream = ctx.upgrade || up.config.stream || asks_for_events(session.req_header());
        let probed = up.probe().is_some();

        // Upstream known down: answer at once. Without a probe, one request
        // per backoff window goes through as the half-open trial.
        if let Some(reason) = up.status.health.reason() {
            if probed || !up.status.health.try_trial() {
                self.short_circuit(session, ctx, &up, reason, None, None)
                    .await?;
                return Ok(true);
            }
            // This request is the half-open trial: its outcome feeds the
            // breaker like any other (upstream_response_filter, fail_to_proxy).
        }
        if up.inject.is_none() {
            return Ok(false);
        }
        match up.tokens.pick(0, SystemTime::now()) {
            Some(t) => {
                ctx.token = Some(t.index);
                Ok(false)
            }
            None => self.without_usable_token(session, ctx, &up, probed).await,
        }
    }

    /// The peer was resolved and configured at load; clone it.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let up = ctx
            .upstream()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let mut peer = Box::new(HttpPeer::clone(&up.peer.load()));
        if ctx.stream {
            peer.options.read_timeout = Some(up.config.timeouts.stream_idle);
        }
        Ok(peer)
    }

    /// Runs before every attempt (retries included): sets `Host` to the
    /// upstream's own host and injects the chosen token, replacing whatever
    /// the client sent in that header or query parameter.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.sent_at = Some(Instant::now());
        let Some(gen) = ctx.gen.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no generation");
        };
        let up = &gen.upstreams[ctx.upstream];
        req.insert_header(http::header::HOST, up.host_header.clone())?;
        let Some(target) = &up.inject else {
            return Ok(());
        };
        let Some(t) = ctx.token.and_then(|i| up.tokens.tokens.get(i)) else {
            return Error::e_explain(ErrorType::InternalError, "token missing for injection");
        };
        target.inject(t, req)?;
        t.touch(unix_now());
        if let Some(i) = ctx.token {
            ctx.tried |= 1 << i;
        }
        Ok(())
    }

    /// First look at the upstream's answer, before anything reaches the
    /// client. Counts the status, marks the token rejected on 401/403, and
    /// turns a failure listed in `stale.on` into the last-good copy (or the
    /// 503 JSON). A 200 to a storable GET starts a capture for the cache.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_status = status;
        let Some(gen) = ctx.gen.clone() else {
            return Ok(());
        };
        let up = &gen.upstreams[ctx.upstream];
        if let Some(s) = up.reflections.scrub_headers(&resp.headers) {
            for (name, values) in s.headers {
                resp.remove_header(&name);
                for v in values {
                    resp.append_header(name.clone(), v)?;
                }
            }
            note_reflection(up, s.first.token, "header");
        }
        record_upstream_answer(ctx, up, status);
        if status == 101 {
            if !ctx.upgrade {
                // It switched protocols unasked: nothing may pass
                // graceway as an opaque tunnel.
                up.status.metrics.upgrades_refused.inc();
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    "the upstream switched protocols without an allowed upgrade",
                );
            }
            up.status.metrics.upgrades_tunnelled.inc();
            ctx.outcome = Outcome::Fresh;
            return Ok(());
        }
        let token = ctx.token.and_then(|i| up.tokens.tokens.get(i));
        if let Some(t) = token {
            read_vendor_signals(up, t, &resp.headers);
        }
        let (reason, retry_after) = match status {
            401 | 403 | 429 => self.weigh_refusal(session, ctx, up, resp)?,
            _ => {
                if let Some(t) = token {
                    token_answered(ctx, up, t, status);
                }
                (Reason::from_status(status), None)
            }
        };
        if let Some(reason) =
            reason.filter(|r| respond::triggered(&up.config.stale.on, *r, Some(status)))
        {
            // Only a degraded answer needs it: the upstream's own
            // Retry-After when the refusal gave none.
            let retry_after =
                retry_after.or_else(|| resp.headers.get(http::header::RETRY_AFTER).cloned());
            return self
                .replace_with_degraded(session, ctx, up, resp, reason, retry_after.as_ref())
                .await;
        }
        ctx.outcome = Outcome::Fresh;
        if status < 400 {
            up.status.mark_healthy();
        }
        if stored::is_event_stream(&resp.headers) {
            ctx.stream = true;
        }
        if up.config.stale.scrub_bodies && !up.reflections.is_empty() {
            ctx.scrub = Some(Box::new(up.reflections.body_scrubber()));
        }
        if ctx.storable_request && status == 200 && !ctx.stream {
            self.start_capture(session.req_header(), ctx, up, resp);
        }
        Ok(())
    }

    /// Client-visible headers of fresh answers: `Cache-Status` says whether
    /// the answer is being kept as the last good copy.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A drain that began while this request was upstream: the answer
        // says `Connection: close`, so the client does not reuse it.
        if crate::app::lifecycle::draining() {
            session.set_keepalive(None);
        }
        if ctx.outcome == Outcome::Fresh {
            // `stored` only for a copy already kept (an empty body); one
            // still streaming may yet be dropped (cut off, too big, or
            // holding a token value).
            let v = if ctx.stored_empty {
                &CS_STORED
            } else {
                &CS_MISS
            };
            resp.insert_header("Cache-Status", v.clone())?;
        }
        Ok(())
    }

    /// Body chunks on their way to the client. Captures a storable body (by
    /// reference, copied once at the end into an exactly-sized buffer so the
    /// cache's byte count is the memory held), or swaps a replaced answer's
    /// body in for the upstream's.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.drop_upstream_body {
            *body = None;
            if end_of_stream {
                *body = ctx.replace_body.take();
            }
            return Ok(None);
        }
        if ctx.scrub.is_some() {
            self.scrub_body(body, end_of_stream, ctx);
        }
        if let Some(cap) = ctx.capture.as_mut() {
            if let Some(b) = body.as_ref() {
                cap.size += b.len();
                if cap.size as u64 > self.cache().max_object {
                    // Too big: stream on untouched, keep nothing.
                    ctx.capture = None;
                    return Ok(None);
                }
                cap.parts.push(b.clone());
            }
            if end_of_stream {
                if let (Some(cap), Some(up)) = (ctx.capture.take(), ctx.upstream()) {
                    self.keep(up, *cap);
                }
            }
        }
        Ok(None)
    }

    /// The request failed with an error: a timeout, a refused or reset
    /// connection, or anything else. Upstream failures listed in `stale.on`
    /// are answered from the cache (or the 503 JSON) when nothing has been
    /// sent to the client yet; the client connection is closed after it,
    /// with `Connection: close` said up front (Pingora does not reuse a
    /// connection after a failed upstream attempt).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if crate::app::lifecycle::cutting() {
            return self.cut_at_shutdown(session, ctx).await;
        }
        // Either side's pause or cut ends a stream whose header arrived.
        if ctx.stream && ctx.upstream_status != 0 {
            return self.stream_ended(session, ctx, e).await;
        }
        if let Some(fault) = client_fault(session, e) {
            return self.client_failed(session, ctx, fault).await;
        }
        let reason = decide::failure_reason(e.etype(), e.esource(), ctx.failover_pending);
        if let (Some(reason), Some(gen)) = (reason, ctx.gen.clone()) {
            let up = &gen.upstreams[ctx.upstream];
            note_upstream_failure(up, e, reason);
            let fwd = match e.etype() {
                ErrorType::HTTPStatus(s) => Some(*s),
                _ => None,
            };
            if let Some(done) = self.answer_failure(session, ctx, up, reason, fwd).await {
                return done;
            }
            if *e.esource() == ErrorSource::Upstream {
                up.status.mark_degraded(reason);
                ctx.outcome = Outcome::Error(Some(reason));
            }
        }
        // Not ours to answer: Pingora's default (502/504/400...).
        let code = decide::fallback_status(e.etype(), e.esource());
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// An error after the upstream connection was made. For graceway's own
    /// token-rejected retry the rule is: the upstream refused the request,
    /// so replaying it has no side effect; it is replayed when the method is
    /// idempotent or its whole body is still in Pingora's retry buffer.
    /// Other errors keep Pingora's default policy.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            || !session.as_ref().retry_buffer_truncated();
        if ctx.failover_pending && matches!(e.etype(), ErrorType::HTTPStatus(401 | 403 | 429)) {
            e.set_retry(replayable);
        } else if !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// The failover retry is logged once per token (on its rejection), not
    /// once per request.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        ctx.failover_pending && matches!(error.etype(), ErrorType::HTTPStatus(401 | 403 | 429))
    }

    /// Degraded answers and the client's own failures are counted in
    /// metrics, not logged one by one (the latter at DEBUG).
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        if let Outcome::Client(reason) = ctx.outcome {
            log::debug!("client request ended ({reason}): {error}");
            return true;
        }
        if ctx.stream && ctx.upstream_status != 0 {
            return true;
        }
        matches!(ctx.outcome, Outcome::Stale(_) | Outcome::Error(Some(_)))
    }

    /// Counts the outcome once the response is done, and writes the access
    /// log line when `log.access` is on.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        crate::net::listener::request_done(session.as_downstream().stream());
        if let Some(t0) = ctx.started_at {
            self.access_log(session, e, ctx, t0);
        }
        let Some(up) = ctx.upstream() else {
            return;
        };
        let m = &up.status.metrics;
        match ctx.outcome {
            Outcome::Fresh if e.is_none() || ctx.stream => {
                m.ok.inc();
                if ctx.upstream_status < 400 {
                    up.status.record_success(unix_now());
                }
            }
            Outcome::Stale(_) => m.stale.inc(),
            Outcome::Client(_) => m.client.inc(),
            _ => m.error.inc(),
        }
    }
}

/// Whether the client asks for Server-Sent Events (`Accept:
/// text/event-stream`): its answer will pause between events.
fn asks_for_events(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), b"text/event-stream").is_some())
}

/// An upstream failure's bookkeeping: a failed connect re-resolves the
/// host at the next control tick; a timeout or no connection feeds the
/// health breaker.
fn note_upstream_failure(up: &Upstream, e: &Error, reason: Reason) {
    if decide::is_connect_failure(e.etype()) {
        up.resolve_now
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if matches!(
        reason,
        Reason::UpstreamTimeout | Reason::UpstreamUnreachable
    ) {
        up.status.health_failure(reason);
    }
}

/// The upstream echoed token `index`'s value: counted by part, logged once
/// per token (the value never: its fingerprint).
fn note_reflection(up: &Upstream, index: usize, part: &'static str) {
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

/// A degraded answer's bookkeeping, the same in every phase that writes
/// one: how the request ended, the stale counter, the upstream's last
/// degradation.
fn record_degraded(ctx: &mut RequestCtx, up: &Upstream, reason: Reason, stale: bool) {
    ctx.outcome = if stale {
        up.status.metrics.stale_served(reason);
        Outcome::Stale(reason)
    } else {
        Outcome::Error(Some(reason))
    };
    up.status.mark_degraded(reason);
}

/// Counts the upstream's answer: status, time to the header, and the
/// health breaker's input (5xx is a failure, anything else a success).
fn record_upstream_answer(ctx: &mut RequestCtx, up: &Upstream, status: u16) {
    up.status.metrics.upstream_response(status);
    if let Some(t0) = ctx.sent_at {
        let took = t0.elapsed();
        ctx.upstream_time = Some(took);
        up.status.metrics.duration.observe(took.as_secs_f64());
    }
    if status >= 500 {
        up.status.health_failure(Reason::Upstream5xx);
    } else {
        up.status.health_success();
    }
}

/// An answer other than 401/403/429 to token `t`: a suspicion ends with
/// any answer below 400, and an auth-breaker trial that was not refused
/// clears the rejection (the vendor took the token back).
fn token_answered(ctx: &RequestCtx, up: &Upstream, t: &crate::tokens::Token, status: u16) {
    if status < 400 && t.evidence.clear_suspect() {
        log::info!(
            "upstream {}: token {} ({}) answered {status}: no longer suspect",
            up.config.name,
            t.index,
            t.fingerprint
        );
    }
    if ctx.auth_trial {
        if t.clear_rejected() {
            log::info!(
                "upstream {}: token {} ({}) accepted again (answered {status}); auth breaker closed",
                up.config.name,
                t.index,
                t.fingerprint
            );
        }
        up.auth.success();
    }
}

/// The upstream's `credentials.failover_on` (the default when it has none).
fn failover_on(up: &Upstream) -> crate::config::FailoverOn {
    up.config
        .credentials
        .as_ref()
        .map_or(crate::config::FailoverOn::default(), |c| c.failover_on)
}

/// Retries the request once with the next usable token when
/// [`decide::retry_with_next_token`] says so. The upstream refused the
/// request, so nothing happened there: replaying it is safe when its body
/// is still at hand (see `error_while_proxy`). The error returned asks
/// Pingora for that retry; `None`: answer degraded.
fn retry_with_next(
    ctx: &mut RequestCtx,
    up: &Upstream,
    status: u16,
    listed: bool,
) -> Option<Box<Error>> {
    let next = up.tokens.pick(ctx.tried, SystemTime::now());
    if !decide::retry_with_next_token(listed, ctx.failover_pending, next.is_some()) {
        return None;
    }
    let n = next?;
    ctx.token = Some(n.index);
    ctx.failover_pending = true;
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
fn read_vendor_signals(up: &Upstream, t: &crate::tokens::Token, headers: &http::HeaderMap) {
    if let Some(q) = evidence::quota(headers) {
        let now = unix_now();
        t.evidence.observe_quota(q, now);
        // The last request of the window went through: with 429 failover,
        // later requests go to the next token until the reset.
        if let (Some(0), Some(reset_in), true) =
            (q.remaining, q.reset_in, failover_on(up).covers(429))
        {
            t.evidence.cool_down(now + reset_in.max(1));
        }
    }
    if let Some((deprecation, sunset)) = evidence::notice_headers(headers) {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(deprecation, sunset), &mut h);
        t.evidence
            .observe_notice(std::hash::Hasher::finish(&h), || evidence::notice(headers));
    }
}

/// A hash of a request path, to tell two paths apart without keeping them.
fn path_hash(path: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(path, &mut h);
    std::hash::Hasher::finish(&h)
}

/// Whether a failed request is the client's doing: it went away, its body
/// stalled or passed the limit, or its framing was bad. An upstream
/// timeout while the client had not finished sending its body is the
/// client's stall, not the upstream's (so a slow client cannot open the
/// health breaker for everyone).
fn client_fault(session: &mut Session, e: &Error) -> Option<&'static str> {
    match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, ErrorType::HTTPStatus(413)) => Some("body-too-large"),
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some("body-timeout"),
        (
            ErrorSource::Downstream,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
        ) => Some("client-closed"),
        (ErrorSource::Downstream, _) => Some("invalid-request"),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout)
            if !session.as_downstream_mut().is_body_done() =>
        {
            Some("body-timeout")
        }
        _ => None,
    }
}

impl Proxy {
    /// Ends a request that failed for the client's doing: 408, 413 or 400
    /// when nothing was sent yet (a client that went away gets nothing),
    /// always closing the connection. Nothing is charged to the upstream.
    async fn client_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: &'static str,
    ) -> FailToProxy {
        crate::metrics::client_rejected(reason);
        ctx.outcome = Outcome::Client(reason);
        session.set_keepalive(None);
        let (status, message) = match reason {
            "body-too-large" => (413, "the request body is larger than this proxy accepts"),
            "body-timeout" => (408, "the request body did not arrive in time"),
            "invalid-request" => (400, "the request could not be read"),
            _ => (0, ""),
        };
        if status > 0 && session.response_written().is_none() {
            if let Ok(mut answer) = respond::json_error(status, message, None, reason, None) {
                let _ = answer
                    .header
                    .insert_header(http::header::CONNECTION, "close");
                if let Err(e) = respond::write(session, answer).await {
                    log::debug!("writing the {status} answer failed: {e}");
                }
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A stream whose header had arrived ended with an error: it paused
    /// past `timeouts.stream_idle` (or `timeouts.read` when nothing
    /// announced it), or either side cut it. That is how streams end, not
    /// an upstream failure: nothing is charged to the health breaker, the
    /// token or the degradation state.
    /// A WebSocket tunnel that idled out is closed cleanly: the client
    /// gets a close frame (1001, going away) before the connection ends.
    async fn stream_ended(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: &Error,
    ) -> FailToProxy {
        log::debug!("stream ended after its header: {e}");
        // Counted as the fresh answer it was (`logging`).
        ctx.outcome = Outcome::Fresh;
        session.set_keepalive(None);
        let idled = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        if ctx.upgrade && ctx.upstream_status == 101 && idled {
            // RFC 6455 §5.5.1: FIN + close opcode, unmasked (server to
            // client), a 2-byte payload: status 1001.
            const CLOSE_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];
            if let Err(e) = session
                .write_response_body(Some(Bytes::from_static(CLOSE_GOING_AWAY)), true)
                .await
            {
                log::debug!("writing the WebSocket close frame failed: {e}");
            }
        }
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    /// A request still in flight at the drain deadline: 503, `Retry-After:
    /// 1`, `Connection: close` (the client retries elsewhere), nothing
    /// charged to the upstream.
    async fn cut_at_shutdown(&self, session: &mut Session, ctx: &mut RequestCtx) -> FailToProxy {
        ctx.outcome = Outcome::Client("shutting-down");
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if let Ok(mut answer) = respond::json_error(
                503,
                "graceway is shutting down: retry the request",
                None,
                "shutting-down",
                None,
            ) {
                let _ = answer
                    .header
                    .insert_header(http::header::CONNECTION, "close");
                let _ = answer.header.insert_header(http::header::RETRY_AFTER, "1");
                if let Err(e) = respond::write(session, answer).await {
                    log::debug!("writing the shutdown answer failed: {e}");
                }
            }
        }
        FailToProxy {
            error_code: 503,
            can_reuse_downstream: false,
        }
    }

    fn access_log(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx, t0: Instant) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let up = ctx.upstream();
        let (outcome, reason) = match ctx.outcome {
            Outcome::Fresh if e.is_none() || ctx.stream => ("ok", "-"),
            Outcome::Stale(r) => ("stale", r.as_str()),
            Outcome::Error(Some(r)) => ("error", r.as_str()),
            Outcome::Client(r) => ("client", r),
            Outcome::Unrouted if e.is_none() && status < 400 => ("ok", "-"),
            _ => ("error", "-"),
        };
        let token = up
            .and_then(|u| ctx.token.and_then(|i| u.tokens.tokens.get(i)))
            .map_or("-", |t| t.fingerprint.as_str());
        let json = ctx
            .gen
            .as_ref()
            .map_or(self.app.live.load().loaded.config.log.format, |g| {
                g.loaded.config.log.format
            })
            == crate::config::LogFormat::Json;
        crate::proxy::access_log::write(
            &crate::proxy::access_log::AccessLine {
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                upstream: up.map_or("-", |u| u.config.name.as_str()),
                outcome,
                reason,
                token,
                upstream_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                total_ms: t0.elapsed().as_secs_f64() * 1000.0,
            },
            json,
        );
    }

    /// Masks token values in a body chunk (`stale.scrub_bodies`); one
    /// found means the answer is not kept.
    fn scrub_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let (Some(gen), Some(sc)) = (ctx.gen.clone(), ctx.scrub.as_mut()) else {
            return;
        };
        let up = &gen.upstreams[ctx.upstream];
        let (mut out, mut found) = match body.as_ref() {
            Some(b) => sc.push(&up.reflections, b),
            None => (Vec::new(), None),
        };
        if end_of_stream {
            let (rest, f) = sc.finish(&up.reflections);
            out.extend_from_slice(&rest);
            found = found.or(f);
        }
        // An empty chunk could read as the end of a chunked body: none.
        *body = (!out.is_empty()).then(|| Bytes::from(out));
        if let Some(f) = found {
            ctx.capture = None;
            note_reflection(up, f.token, "body");
        }
    }

    /// Turns a finished capture into a stored copy, unless its body holds
    /// a token value (the upstream echoed it): that copy is never kept,
    /// persisted or sent to the fleet tier.
    fn keep(&self, up: &Upstream, cap: Capture) {
        let mut body = BytesMut::with_capacity(cap.size);
        for p in &cap.parts {
            body.extend_from_slice(p);
        }
        if let Some(f) = up.reflections.find(&body) {
            note_reflection(up, f.token, "body");
            return;
        }
        let key_len = cap
            .variant
            .as_ref()
            .map_or(cap.primary.len(), |(_, k)| k.len());
        let fresh = cap.cc.s_maxage.or(cap.cc.max_age).unwrap_or(0);
        let recorded = Recorded {
            headers: cap.headers,
            body: body.freeze(),
            stored_at: SystemTime::now(),
            fresh_for: std::time::Duration::from_secs(fresh),
            must_revalidate: cap.cc.must_revalidate,
            stale_if_error: cap.cc.stale_if_error.map(std::time::Duration::from_secs),
        };
        let copy = Arc::new(CachedResponse::new(recorded, key_len, up.status.clone()));
        if let Some(fleet) = &self.app.fleet {
            let ttl = up.config.stale.max_stale;
            fleet.put(&up.config.name, &cap.primary, &copy, ttl);
            if let Some((_, vkey)) = &cap.variant {
                fleet.put(&up.config.name, vkey, &copy, ttl);
            }
        }
        self.cache().insert(&cap.primary, cap.variant, copy, true);
        up.status.set_last_good_path(cap.path);
    }
}

/// Client-side timeouts for this request. Keep-alive only where Pingora
/// left it on: it turns it off for `Connection: close`, HTTP/1.0 and a
/// request that had both Content-Length and Transfer-Encoding (RFC 9112
/// §6.1); off while draining. Each read of the request body may wait
/// `client_body_timeout` (Pingora's default is 60 s); a stall is the
/// client's, see `fail_to_proxy`.
fn set_client_timeouts(session: &mut Session, server: &crate::config::ServerSettings) {
    if crate::app::lifecycle::draining() {
        session.set_keepalive(None);
    } else if session.get_keepalive().is_some() {
        session.set_keepalive(Some(server.client_keepalive_timeout.as_secs()));
    }
    session.set_read_timeout(Some(server.client_body_timeout));
}

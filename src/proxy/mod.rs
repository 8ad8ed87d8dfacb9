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
//!
//! The hooks are here; what they call is in one file per step. Three of
//! them are the seams every feature meets: `choose` (the one place a
//! request's token is chosen: first attempt, auth trial, retry), `record`
//! (the one place an attempt's outcome is written down: health breaker,
//! token state, degradation state, counters) and `degrade` (the one
//! writer of degraded answers, from every phase, owning keep-alive). The
//! rest: `request` (admission, routing, refusals, streams and upgrades),
//! `refusal` (what a 401/403/429 says about the token, the retry, vendor
//! signals, echoed tokens), `capture` (keeping a fresh answer), `failure`
//! (how an errored request ends), `decide` (the pure decisions),
//! `respond` (graceway's own answers), `sign` (a SigV4 body read and
//! hashed before the header is sent), `access_log`.

pub(crate) mod access_log;
mod admission;
mod capture;
mod choose;
mod collapse;
mod ctx;
mod decide;
mod degrade;
mod failure;
mod grpc;
mod pace;
mod record;
mod refresh;
mod refusal;
mod request;
mod respond;
mod sign;
pub(crate) mod target;

pub use ctx::RequestCtx;
use degrade::Phase;
use failure::client_fault;
use record::{record, Event};
use refusal::{note_reflection, read_vendor_signals};
use request::{asks_for_events, set_client_timeouts};

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::app::App;
use crate::cache::flight::Landing;
use crate::cache::stored::{self, CacheControl};
use crate::cache::{self, Cache, Recorded};
use crate::clock::unix_now;
use crate::generation::{Generation, Upstream};
use crate::outcome::{ClientReason, Outcome, Reason};
use crate::tokens::evidence::{self, Verdict};
use crate::tokens::set::Suspicion;

pub struct Proxy {
    pub app: Arc<App>,
}

static CS_STORED: HeaderValue = HeaderValue::from_static("graceway; fwd=miss; stored");
static CS_MISS: HeaderValue = HeaderValue::from_static("graceway; fwd=miss");
static CS_REFRESHED: HeaderValue = HeaderValue::from_static("graceway; fwd=stale; fwd-status=200");
static CS_REFRESHED_STORED: HeaderValue =
    HeaderValue::from_static("graceway; fwd=stale; fwd-status=200; stored");

impl Proxy {
    fn cache(&self) -> &Cache {
        &self.app.cache
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: Some(self.app.drain.start()),
            ..RequestCtx::default()
        }
    }

    /// Runs as soon as the request header is parsed: the connection's
    /// header deadline (see [`crate::net::listener`]) no longer applies,
    /// and on an h2c connection this stream keeps it busy until the
    /// request is over.
    /// Pipelined requests (sent before this one's answer was read) are
    /// answered one after another, in order (RFC 9112 §9.3.2); Pingora's
    /// default would drop them and close the connection.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let downstream = session.as_downstream_mut();
        if downstream.is_http2() {
            let figures = &self.app.listeners.proxy;
            ctx._h2_stream = crate::net::listener::h2_stream(figures, downstream.digest());
        }
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
        set_client_timeouts(
            session,
            &gen.loaded.config.server,
            self.app.drain.draining(),
        );
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
        if self.answer_fresh(session, ctx, &up).await? {
            return Ok(true);
        }

        // Upstream known down: answer at once. Without a probe, one request
        // per backoff window goes through as the half-open trial.
        if let Some(reason) = up.status.health.reason() {
            if probed || !up.status.health.try_trial() {
                self.refresh_while_open(ctx, &up, session.req_header());
                self.degrade(session, ctx, &up, reason, None, None, Phase::Request)
                    .await?;
                return Ok(true);
            }
            // This request is the half-open trial: its outcome feeds the
            // breaker like any other (upstream_response_filter, fail_to_proxy).
        }
        if self.join_flight(session, ctx, &up).await? {
            return Ok(true);
        }
        if up.inject.is_none() {
            return Ok(false);
        }
        if self.hash_signed_body(session, ctx, &up).await? {
            return Ok(true);
        }
        if let Some(answered) = self.first_token(session, ctx, &up).await? {
            return Ok(answered);
        }
        self.without_usable_token(session, ctx, &up, probed).await
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
        let (peer, address) = up.next_peer(ctx.addresses_tried);
        let mut peer = Box::new(peer);
        if ctx.stream {
            peer.options.read_timeout = Some(up.config.timeouts.stream_idle);
        }
        ctx.address = address;
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
        if let Some(copy) = &ctx.revalidate {
            if ctx.revalidating || !refresh::has_validators(req) {
                refresh::add_validators(req, copy)?;
                ctx.revalidating = true;
            }
        }
        let Some(target) = &up.inject else {
            return Ok(());
        };
        let Some(t) = ctx.token.and_then(|i| up.tokens.tokens.get(i)) else {
            return Error::e_explain(ErrorType::InternalError, "token missing for injection");
        };
        target.inject(t, req, ctx.body_sha256.as_deref())?;
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
        // A gRPC refusal in a trailers-only answer counts as its HTTP
        // status from here on (see `grpc`).
        ctx.grpc = grpc::is_grpc(&resp.headers);
        let status = match ctx.grpc && resp.status == http::StatusCode::OK {
            true => grpc::refusal_status(&resp.headers).unwrap_or(200),
            false => resp.status.as_u16(),
        };
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
        record(ctx, up, Event::Answered { status });
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
            record(ctx, up, Event::Fresh { status });
            return Ok(());
        }
        let token = ctx.token.and_then(|i| up.tokens.tokens.get(i));
        if let Some(t) = token {
            read_vendor_signals(up, t, &resp.headers);
        }
        if ctx.revalidating && self.revalidated(session, ctx, up, token, resp).await? {
            return Ok(());
        }
        let (reason, retry_after) = match status {
            401 | 403 | 429 => {
                let retry = grpc::may_retry(session, ctx);
                self.weigh_refusal(session, ctx, up, status, &resp.headers, retry)?
            }
            _ => {
                if let Some(t) = token {
                    record::token_answered(ctx, up, t, status);
                }
                (Reason::from_status(status), None)
            }
        };
        // A gRPC answer passes as it is (see `grpc`).
        if let Some(reason) =
            reason.filter(|r| !ctx.grpc && decide::degrades(&up.config.stale.on, *r, Some(status)))
        {
            // Only a degraded answer needs it: the upstream's own
            // Retry-After when the refusal gave none.
            let retry_after =
                retry_after.or_else(|| resp.headers.get(http::header::RETRY_AFTER).cloned());
            let phase = Phase::Response(resp);
            let fwd = Some(status);
            self.degrade(session, ctx, up, reason, fwd, retry_after.as_ref(), phase)
                .await?;
            return Ok(());
        }
        record(ctx, up, Event::Fresh { status });
        if stored::is_event_stream(&resp.headers) {
            ctx.stream = true;
        }
        if up.config.stale.scrub_bodies && !up.reflections.is_empty() {
            ctx.scrub = Some(Box::new(up.reflections.body_scrubber()));
        }
        if !ctx.grpc && decide::keeps(ctx.storable_request, status, ctx.stream) {
            self.start_capture(session.req_header(), ctx, up, resp);
        }
        if ctx.capture.is_none() {
            // Not kept, so not shared: its waiters go themselves.
            self.land(ctx, Landing::Alone);
        }
        Ok(())
    }

    /// A gRPC refusal in the trailers is recorded against the token.
    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.grpc_trailers(session, trailers, ctx);
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
        if self.app.drain.draining() {
            session.set_keepalive(None);
        }
        if ctx.outcome == Outcome::Fresh && !ctx.revalidating {
            // `stored` only for a copy already kept (an empty body); one
            // still streaming may yet be dropped (cut off, too big, or
            // holding a token value).
            let v = if ctx.stored_empty {
                &CS_STORED
            } else {
                &CS_MISS
            };
            resp.insert_header("Cache-Status", v.clone())?;
        } else if ctx.outcome == Outcome::Fresh && resp.status == http::StatusCode::OK {
            // The stale copy's validators went out and a new answer came.
            let v = if ctx.stored_empty {
                &CS_REFRESHED_STORED
            } else {
                &CS_REFRESHED
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
                    self.land(ctx, Landing::Alone);
                    return Ok(None);
                }
                cap.parts.push(b.clone());
            }
            if end_of_stream {
                if let (Some(cap), Some(up)) = (ctx.capture.take(), ctx.upstream()) {
                    let kept = self.keep(up, *cap);
                    self.land(ctx, kept.map_or(Landing::Alone, Landing::Stored));
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
        if self.app.drain.cutting() {
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
            record(ctx, up, Event::Failed { reason, error: e });
            let fwd = match e.etype() {
                ErrorType::HTTPStatus(s) => Some(*s),
                _ => None,
            };
            match self
                .degrade(session, ctx, up, reason, fwd, None, Phase::Failed)
                .await
            {
                Ok(Some(code)) => {
                    return FailToProxy {
                        error_code: code,
                        can_reuse_downstream: false,
                    }
                }
                Ok(None) => {}
                // No copy could be read and no 503 built: Pingora's default.
                Err(err) => log::debug!("no degraded answer for a failed request: {err}"),
            }
            if *e.esource() == ErrorSource::Upstream {
                record::unanswered_failure(ctx, up, reason);
            }
        }
        // Not ours to answer: Pingora's default (502/504/400...). An error
        // is never shared: waiters go themselves.
        self.land(ctx, Landing::Alone);
        let code = decide::fallback_status(e.etype(), e.esource());
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A connect failed: the next address of the name, when one is left
    /// (see `failure::connect_failed`).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        failure::connect_failed(ctx, e)
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
            log::debug!("client request ended ({}): {error}", reason.as_str());
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
        self.end_flight(ctx);
        if let Some(t0) = ctx.started_at {
            self.access_log(session, e, ctx, t0);
        }
        // The context is dropped after this hook: the generation can go.
        let Some(gen) = ctx.gen.take() else {
            return;
        };
        let failed = e.is_some();
        record(ctx, &gen.upstreams[ctx.upstream], Event::Done { failed });
    }
}

//! The request phase before a token is chosen: admission and routing,
//! refusals (4xx, before any token is involved), the client's timeouts,
//! and whether the request is a stream or an allowed upgrade.

use super::*;

/// Client-side timeouts for this request. Keep-alive only where Pingora
/// left it on: it turns it off for `Connection: close`, HTTP/1.0 and a
/// request that had both Content-Length and Transfer-Encoding (RFC 9112
/// §6.1); off while draining. Each read of the request body may wait
/// `client_body_timeout` (Pingora's default is 60 s); a stall is the
/// client's, see `fail_to_proxy`.
pub(super) fn set_client_timeouts(
    session: &mut Session,
    server: &crate::config::ServerSettings,
    draining: bool,
) {
    if draining {
        session.set_keepalive(None);
    } else if session.get_keepalive().is_some() {
        session.set_keepalive(Some(server.client_keepalive_timeout.as_secs()));
    }
    session.set_read_timeout(Some(server.client_body_timeout));
}

/// Whether the client asks for Server-Sent Events (`Accept:
/// text/event-stream`): its answer will pause between events.
pub(super) fn asks_for_events(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), b"text/event-stream").is_some())
}

impl Proxy {
    /// Answers a request graceway will not forward (4xx), before any token
    /// is chosen. A 400, 408, 413 or 431 also closes the connection: what
    /// follows on it (a body, a smuggled request) is not to be read.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: &admission::Refusal,
        allow: Option<HeaderValue>,
    ) -> Result<()> {
        crate::metrics::client_rejected(refusal.reason);
        ctx.outcome = Outcome::Client(refusal.reason);
        let mut answer = respond::json_error(
            refusal.status,
            refusal.message,
            None,
            refusal.reason.as_str(),
            None,
        )?;
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

    /// Admission (Host, framing, sizes, target), routing and the
    /// upstream's method list. `None` when the request was refused (and
    /// answered); otherwise the upstream's index, with the normalized
    /// target and canonical `Content-Length` written into the request.
    pub(super) async fn admit_and_route(
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
                reason: ClientReason::NoRoute,
            };
            self.refuse(session, ctx, &refusal, None).await?;
            return Ok(None);
        };
        let up = &gen.upstreams[index];
        if !up.config.methods.contains(&req.method) {
            let refusal = admission::Refusal {
                status: 405,
                message: "this method is not forwarded to this upstream",
                reason: ClientReason::MethodNotAllowed,
            };
            let allow = up.allow.clone();
            self.refuse(session, ctx, &refusal, Some(allow)).await?;
            return Ok(None);
        }
        if !admission::overrides_allowed(req, &up.config.methods) {
            let refusal = admission::Refusal {
                status: 405,
                message: "a method-override header names a method not forwarded to this upstream",
                reason: ClientReason::MethodNotAllowed,
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
    pub(super) fn plan_upgrade(
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
}

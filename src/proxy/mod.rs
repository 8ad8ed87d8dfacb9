//! The data plane: Pingora's [`ProxyHttp`] for graceway.
//!
//! A request flows: `request_filter` (load the generation, route, choose a
//! token) -> `upstream_peer` -> `upstream_request_filter` (Host, token) ->
//! upstream -> `upstream_response_filter` (status bookkeeping) ->
//! `response_filter` -> client. Everything a request reads was computed at
//! load time ([`crate::generation`]); the hooks only clone precomputed
//! values and bump relaxed atomics.

mod respond;

pub use respond::no_token_reason;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::app::App;
use crate::generation::{unix_now, Generation, InjectTarget, Upstream};
use crate::tokens::Injected;

pub struct Proxy {
    pub app: Arc<App>,
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
}

impl RequestCtx {
    fn upstream(&self) -> Option<&Upstream> {
        self.gen
            .as_ref()
            .map(|g| g.upstreams[self.upstream].as_ref())
    }
}

/// The request's host without port: `Host` header, else the URI authority
/// (HTTP/2 and absolute-form requests).
fn request_host(req: &RequestHeader) -> Option<&str> {
    let raw = match req.headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri.host()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// First hook with the request header. Routes the request and picks its
    /// token, or answers it here: unknown route (404), oversized header
    /// block (431), no usable token (degraded answer). Returning `Ok(true)`
    /// means the response was written and nothing goes upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let gen = self.app.live.load_full();
        let server = &gen.loaded.config.server;
        session.set_keepalive(Some(server.client_keepalive_timeout.as_secs()));

        let req = session.req_header();
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > server.max_request_header_bytes {
            respond::error(
                session,
                431,
                "request header fields too large",
                None,
                "header-too-large",
            )
            .await?;
            return Ok(true);
        }

        let Some(index) = gen.router.route(request_host(req), req.uri.path()) else {
            respond::error(
                session,
                404,
                "no upstream is configured for this host and path",
                None,
                "no-route",
            )
            .await?;
            return Ok(true);
        };
        let up = &gen.upstreams[index];
        if up.inject.is_some() {
            match up.tokens.pick(0, SystemTime::now()) {
                Some(t) => ctx.token = Some(t.index),
                None => {
                    let reason = respond::no_token_reason(up);
                    up.status.metrics.error.inc();
                    respond::error(
                        session,
                        503,
                        "no usable token for this upstream",
                        Some(&up.config.name),
                        reason,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        ctx.upstream = index;
        ctx.gen = Some(gen);
        Ok(false)
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
        Ok(Box::new(up.peer.clone()))
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
        let Some(gen) = ctx.gen.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no generation");
        };
        let up = &gen.upstreams[ctx.upstream];
        req.insert_header(http::header::HOST, up.host_header.clone())?;
        let Some(target) = &up.inject else {
            return Ok(());
        };
        let token = ctx
            .token
            .and_then(|i| up.tokens.tokens.get(i))
            .and_then(|t| t.injected.as_ref().map(|inj| (t, inj)));
        match (target, token) {
            (InjectTarget::Header { name, lookup }, Some((t, Injected::Header(value)))) => {
                req.remove_header(lookup);
                req.insert_header(name.clone(), value.clone())?;
                t.touch(unix_now());
            }
            (InjectTarget::Query { key_eq }, Some((t, Injected::Query(piece)))) => {
                let uri = with_query_token(&req.uri, key_eq, piece);
                req.set_raw_path(uri.as_bytes())?;
                t.touch(unix_now());
            }
            _ => {
                return Error::e_explain(ErrorType::InternalError, "token missing for injection");
            }
        }
        if let Some(i) = ctx.token {
            ctx.tried |= 1 << i;
        }
        Ok(())
    }

    /// First look at the upstream's answer, before anything reaches the
    /// client: counts the status and marks the token rejected on 401/403.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_status = status;
        let Some(up) = ctx.upstream() else {
            return Ok(());
        };
        up.status.metrics.upstream_response(status);
        if status == 401 || status == 403 {
            crate::metrics::metrics()
                .upstream_auth_failures_total
                .with_label_values(&[
                    up.config.name.as_str(),
                    if status == 401 { "401" } else { "403" },
                ])
                .inc();
            if let Some(t) = ctx.token.and_then(|i| up.tokens.tokens.get(i)) {
                if t.mark_rejected() {
                    log::warn!(
                        "upstream {}: token {} ({}) rejected with {status}",
                        up.config.name,
                        t.index,
                        t.fingerprint
                    );
                }
            }
        }
        Ok(())
    }

    /// Counts the outcome once the response is done.
    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(up) = ctx.upstream() else {
            return;
        };
        let m = &up.status.metrics;
        if e.is_none() && ctx.upstream_status != 0 && ctx.upstream_status < 500 {
            m.ok.inc();
            if ctx.upstream_status < 400 {
                up.status.record_success(unix_now());
            }
        } else {
            m.error.inc();
        }
    }
}

/// The request target with `key_eq…` pairs removed and `piece` appended.
fn with_query_token(uri: &http::Uri, key_eq: &str, piece: &str) -> String {
    let mut out = String::with_capacity(uri.path().len() + piece.len() + 64);
    out.push_str(uri.path());
    out.push('?');
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            if pair.is_empty() || pair.starts_with(key_eq) || pair == &key_eq[..key_eq.len() - 1] {
                continue;
            }
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(piece);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_replaces_client_value() {
        let uri: http::Uri = "/v1/x?a=1&access_token=client&b=2&access_token"
            .parse()
            .unwrap();
        assert_eq!(
            with_query_token(&uri, "access_token=", "access_token=T"),
            "/v1/x?a=1&b=2&access_token=T"
        );
        let uri: http::Uri = "/v1/x".parse().unwrap();
        assert_eq!(with_query_token(&uri, "k=", "k=T"), "/v1/x?k=T");
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("api.example:8080"), "api.example");
        assert_eq!(strip_port("api.example"), "api.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}

//! The access log: one line per request on standard output (the error log
//! stays on standard error), plain `key=value` or JSON (`log.format`).
//! Off unless `log.access: true`; nothing is formatted when off.
//!
//! The path is logged without its query: a client may carry its own
//! credentials there, and graceway never logs a credential.

use std::io::Write;
use std::time::{Instant, SystemTime};

use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Serialize;

use super::RequestCtx;
use crate::outcome::Outcome;

#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub time: String,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream: &'a str,
    /// `ok`, `stale` or `error`.
    pub outcome: &'a str,
    /// The degradation reason, or `-`.
    pub reason: &'a str,
    /// Fingerprint of the token sent, or `-`.
    pub token: &'a str,
    /// Upstream time to the response header, in milliseconds (absent when
    /// no upstream was asked).
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// Why the token was chosen (`failover`, `round_robin`,
    /// `most_remaining`, `sticky`, `retry`, `trial`), or `-`. Never the
    /// sticky header's value.
    pub pick: &'a str,
    /// Milliseconds the request waited for a quota reset
    /// (`credentials.queue`), absent when it did not wait.
    pub queued_ms: Option<u64>,
}

pub fn write(line: &AccessLine, json: bool) {
    let text = if json {
        serde_json::to_string(line).unwrap_or_default()
    } else {
        format!(
            "{} {} {} {} upstream={} outcome={} reason={} token={} upstream_ms={} total_ms={:.1} pick={} queued_ms={}",
            line.time,
            line.method,
            line.path,
            line.status,
            line.upstream,
            line.outcome,
            line.reason,
            line.token,
            line.upstream_ms
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            line.total_ms,
            line.pick,
            line.queued_ms.map_or("-".to_string(), |v| v.to_string()),
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

impl super::Proxy {
    /// Writes this request's line (`log.access`).
    pub(super) fn access_log(
        &self,
        session: &Session,
        e: Option<&Error>,
        ctx: &RequestCtx,
        t0: Instant,
    ) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let up = ctx.upstream();
        let (outcome, reason) = match ctx.outcome {
            Outcome::Fresh if e.is_none() || ctx.stream => ("ok", "-"),
            Outcome::Stale(r) => ("stale", r.as_str()),
            Outcome::Hit(h) => ("hit", h.as_str()),
            Outcome::Error(Some(r)) => ("error", r.as_str()),
            Outcome::Client(r) => ("client", r.as_str()),
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
                pick: ctx.pool.pick.as_str(),
                queued_ms: ctx.pool.queued_ms,
            },
            json,
        );
    }
}

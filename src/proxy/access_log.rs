//! The access log: one line per request on standard output (the error log
//! stays on standard error), plain `key=value` or JSON (`log.format`).
//! Off unless `log.access: true`; nothing is formatted when off.
//!
//! The path is logged without its query: a client may carry its own
//! credentials there, and graceway never logs a credential.

use std::io::Write;

use serde::Serialize;

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
}

pub fn write(line: &AccessLine, json: bool) {
    let text = if json {
        serde_json::to_string(line).unwrap_or_default()
    } else {
        format!(
            "{} {} {} {} upstream={} outcome={} reason={} token={} upstream_ms={} total_ms={:.1}",
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
            line.total_ms
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

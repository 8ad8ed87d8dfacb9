//! `/status` (the inventory of external dependencies) and `/readyz`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use crate::app::App;

use crate::tokens::TokenState;

fn ts(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

#[derive(Serialize)]
struct TokenView {
    index: usize,
    source: String,
    kind: &'static str,
    fingerprint: String,
    state: TokenState,
    expires_at: Value,
    last_used: Value,
    error: Option<String>,
    /// The vendor's words on the last refusal (`invalid_token (...)`).
    detail: Option<String>,
    /// The quota the vendor last stated for this token.
    quota: Value,
    /// The last deprecation or sunset notice the vendor sent with it.
    notice: Value,
    /// The end of a quota cool-down (state `rate-limited`), else null.
    cool_until: Value,
}

/// `{remaining, limit, reset_at}` or null.
fn quota_view(t: &crate::tokens::Token) -> Value {
    t.evidence.quota().map_or(Value::Null, |(remaining, limit, reset)| {
        json!({ "remaining": remaining, "limit": limit, "reset_at": ts(reset) })
    })
}

/// `{deprecated, deprecation_at, sunset_at, links}` or null.
pub fn notice_view(t: &crate::tokens::Token) -> Value {
    let Some(n) = t.evidence.notice() else {
        return Value::Null;
    };
    let n = &n.1;
    let at = |s: Option<u64>| ts(s.map(crate::clock::from_unix));
    json!({
        "deprecated": n.deprecated,
        "deprecation_at": at(n.deprecation_at),
        "sunset_at": at(n.sunset_at),
        "links": n.links.iter().map(|(rel, url)| json!({"rel": rel, "url": url})).collect::<Vec<_>>(),
    })
}

fn breaker_view(b: &crate::generation::breaker::Breaker) -> Value {
    json!({
        "open": b.is_open(),
        "reason": b.reason().map(|r| r.as_str()),
        "since": ts(b.since()),
        "next_trial": ts(b.next_trial()),
    })
}

pub fn status(app: &App) -> Value {
    let gen = app.live.load_full();
    let now = SystemTime::now();
    let upstreams: Vec<Value> = gen
        .upstreams
        .iter()
        .map(|u| {
            let tokens: Vec<TokenView> = u
                .tokens
                .tokens
                .iter()
                .map(|t| TokenView {
                    index: t.index,
                    source: t.spec.source.describe(),
                    kind: t.spec.source.kind(),
                    fingerprint: t.fingerprint.clone(),
                    state: t.state(now),
                    expires_at: ts(t.expires_at),
                    last_used: ts(t.last_used()),
                    error: t.unavailable_reason.clone(),
                    detail: t.evidence.detail().map(|d| d.to_string()),
                    quota: quota_view(t),
                    notice: notice_view(t),
                    cool_until: ts(t.evidence.cool_until(now)),
                })
                .collect();
            let (state, reason) = u.state(now);
            let failure = u.status.last_failure();
            json!({
                "name": u.config.name,
                "url": u.config.url.original,
                "route": {
                    "host": u.config.route.host,
                    "path_prefix": u.config.route.path_prefix,
                },
                "state": state,
                "reason": reason,
                "degraded_since": ts(u.status.degradation().map(|(_, t)| t)),
                "last_success": ts(u.status.last_success()),
                "last_failure": failure.map(|(at, r)| json!({
                    "at": ts(Some(at)),
                    "reason": r.map(|r| r.as_str()),
                })),
                "breakers": {
                    "health": breaker_view(&u.status.health),
                    "auth": breaker_view(&u.auth),
                },
                "tokens": tokens,
                "stored": {
                    "entries": u.status.stored_entries.load(Ordering::Relaxed).max(0),
                    "bytes": u.status.stored_bytes.load(Ordering::Relaxed).max(0),
                },
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_at": ts(Some(app.started_at)),
        "config": {
            "path": gen.loaded.path.display().to_string(),
            "hash": gen.loaded.file_hash,
            "generation": gen.number,
            "loaded_at": ts(Some(gen.loaded_at)),
        },
        "reload": &**app.last_reload.load(),
        "memory": {
            "rss_bytes": app.memory.rss.load(Ordering::Relaxed),
            "soft_limit_bytes": gen.loaded.config.memory.soft_limit,
            "shed_entries": app.memory.shed_entries.load(Ordering::Relaxed),
            "shed_bytes": app.memory.shed_bytes.load(Ordering::Relaxed),
            "last_shed": ts((app.memory.last_shed_unix.load(Ordering::Relaxed) != 0).then(|| {
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(app.memory.last_shed_unix.load(Ordering::Relaxed))
            })),
        },
        "cache": {
            "entries": app.cache.entries(),
            "bytes": app.cache.bytes(),
            "limit_bytes": app.cache.budget(),
            "max_object_bytes": app.cache.max_object,
            "persist": app.cache.persist_status(),
            "fleet": app.fleet.as_ref().map(|f| f.status()),
        },
        "connections": connections(app),
        "upstreams": upstreams,
    })
}

/// Client connection figures per listener and the descriptor limits.
fn connections(app: &App) -> Value {
    let view = |f: &crate::net::listener::ListenerFigures| {
        json!({
            "open": f.open.load(Ordering::Relaxed),
            "max": f.cap.load(Ordering::Relaxed),
            "refused": f.refused.load(Ordering::Relaxed),
            "header_timeouts": f.header_timeouts.load(Ordering::Relaxed),
            "evicted": f.evicted.load(Ordering::Relaxed),
        })
    };
    let limits = app.limits.get();
    json!({
        "proxy": view(&crate::net::listener::PROXY),
        "admin": view(&crate::net::listener::ADMIN),
        "nofile_soft": limits.map(|l| l.nofile_soft),
        "nofile_hard": limits.map(|l| l.nofile_hard),
    })
}

/// Whether the proxy listener accepts connections. Pingora starts the
/// admin and proxy services side by side, so the first readiness checks
/// connect once; after the first success the answer is remembered.
fn proxy_listening(app: &App, listen: std::net::SocketAddr) -> bool {
    if app.proxy_listening.load(Ordering::Relaxed) {
        return true;
    }
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let ok =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok();
    if ok {
        app.proxy_listening.store(true, Ordering::Relaxed);
    }
    ok
}

/// Ready when every upstream can answer: it needs no token, has a usable
/// one, or has a stale path. Degraded-but-serving is ready.
pub fn readiness(app: &App) -> (bool, Value) {
    let gen = app.live.load_full();
    let now = SystemTime::now();
    let listening = proxy_listening(app, gen.loaded.config.listen);
    let draining = crate::app::lifecycle::draining();
    let mut all = listening && !draining;
    let ups: Vec<Value> = gen
        .upstreams
        .iter()
        .map(|u| {
            let (state, reason) = u.state(now);
            let ready = state != "down";
            all &= ready;
            json!({ "name": u.config.name, "ready": ready, "state": state, "reason": reason })
        })
        .collect();
    (
        all,
        json!({ "ready": all, "listening": listening, "draining": draining, "generation": gen.number, "upstreams": ups }),
    )
}

//! `/status` (the inventory of external dependencies) and `/readyz`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::outcome::{Reason, UpstreamState};

use crate::tokens::TokenState;

/// RFC 3339 seconds, as every timestamp of `/status` is written.
fn ts(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

// The `/status` document, typed: written here, read back by `graceway
// status` and the demo (`Status` derives both), so a renamed or missing
// field is an error where it is read, not a silent `-`.

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_at: Option<String>,
    pub config: ConfigView,
    pub reload: ReloadView,
    pub memory: MemoryView,
    pub cache: CacheView,
    pub connections: ConnectionsView,
    pub upstreams: Vec<UpstreamView>,
    /// The last state changes, oldest first (see [`crate::app::timeline`]);
    /// absent from an older server's document.
    #[serde(default)]
    pub timeline: Vec<crate::app::timeline::Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigView {
    pub path: String,
    pub hash: String,
    pub generation: u64,
    pub loaded_at: Option<String>,
}

/// The last reload attempt (`app::ReloadRecord` as written).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadView {
    pub attempt: u64,
    pub at: String,
    pub trigger: String,
    pub ok: bool,
    pub message: String,
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryView {
    pub rss_bytes: u64,
    pub soft_limit_bytes: Option<u64>,
    pub shed_entries: u64,
    pub shed_bytes: u64,
    pub last_shed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheView {
    pub entries: i64,
    pub bytes: i64,
    pub limit_bytes: u64,
    pub max_object_bytes: u64,
    pub persist: Option<crate::cache::persist::PersistView>,
    pub fleet: Option<crate::cache::fleet::FleetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsView {
    pub proxy: ListenerView,
    pub admin: ListenerView,
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub open: usize,
    pub max: usize,
    pub refused: u64,
    pub header_timeouts: u64,
    pub evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamView {
    pub name: String,
    pub url: String,
    pub route: RouteView,
    pub state: UpstreamState,
    pub reason: Option<Reason>,
    pub degraded_since: Option<String>,
    pub last_success: Option<String>,
    pub last_failure: Option<FailureView>,
    pub breakers: BreakersView,
    pub tokens: Vec<TokenView>,
    pub stored: StoredView,
    pub calls: CallsView,
    /// How requests share the tokens, and the quota queue; absent for an
    /// upstream without credentials (and from an older server).
    #[serde(default)]
    pub pool: Option<PoolView>,
    /// The client certificate sent (`tls.client_cert`); absent when none
    /// is configured (and from an older server).
    #[serde(default)]
    pub client_cert: Option<ClientCertView>,
}

/// `tls.client_cert` as loaded: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertView {
    /// `sha256:` + the 64 hex digits of the leaf's DER.
    pub fingerprint: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    pub state: crate::net::client_cert::CertState,
}

fn client_cert_view(u: &crate::generation::Upstream, now: SystemTime) -> Option<ClientCertView> {
    let c = u.client_cert.as_ref()?;
    Some(ClientCertView {
        fingerprint: c.fingerprint.clone(),
        subject: c.subject.clone(),
        not_before: ts(Some(c.not_before)).unwrap_or_default(),
        not_after: ts(Some(c.not_after)).unwrap_or_default(),
        state: c.state(now),
    })
}

/// `credentials.select`, `sticky_header` and `queue`, with the queue's
/// length now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// `failover`, `round_robin` or `most_remaining`.
    pub select: String,
    /// The header's name (never a value).
    pub sticky_header: Option<String>,
    pub queue: QueueView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    /// Milliseconds; 0: requests never wait.
    pub max_wait_ms: u64,
    pub max_queued: u32,
    /// Requests waiting for a quota reset now.
    pub waiting: i64,
}

fn pool_view(u: &crate::generation::Upstream) -> Option<PoolView> {
    let c = u.config.credentials.as_ref()?;
    Some(PoolView {
        select: c.select.as_str().to_string(),
        sticky_header: c.sticky_header.as_ref().map(|h| h.as_str().to_string()),
        queue: QueueView {
            max_wait_ms: c.queue.max_wait.as_millis() as u64,
            max_queued: c.queue.max_queued,
            waiting: u.tokens.pool.series.waiting.get().max(0),
        },
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub host: Option<String>,
    pub path_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureView {
    pub at: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakersView {
    pub health: BreakerView,
    pub auth: BreakerView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerView {
    pub open: bool,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub next_trial: Option<String>,
}

/// The vendor calls the cache spared since start: hits by kind, requests
/// waiting for another's fetch now, and refreshes of copies by result
/// (`graceway_cache_hits_total`, `graceway_coalesce_waiting`,
/// `graceway_cache_revalidations_total`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallsView {
    pub fresh_hits: u64,
    pub stale_while_revalidate_hits: u64,
    pub coalesced: u64,
    pub waiting: i64,
    pub revalidated_304: u64,
    pub revalidated_200: u64,
    pub revalidations_failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredView {
    pub entries: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub index: usize,
    pub source: String,
    pub kind: String,
    pub fingerprint: String,
    pub state: TokenState,
    pub expires_at: Option<String>,
    pub last_used: Option<String>,
    pub error: Option<String>,
    /// The vendor's words on the last refusal (`invalid_token (...)`).
    pub detail: Option<String>,
    /// The quota the vendor last stated for this token.
    pub quota: Option<QuotaView>,
    /// The last deprecation or sunset notice the vendor sent with it.
    pub notice: Option<NoticeView>,
    /// The end of a quota cool-down (state `rate-limited`), else null.
    pub cool_until: Option<String>,
    /// With the fleet ledger on: where the token's last finding came
    /// from (this replica or another, which, when).
    #[serde(default)]
    pub learned: Option<LearnedView>,
    /// An OAuth2 token: fetched here, or shared by another replica
    /// (`oauth2.share`), and when it was fetched.
    #[serde(default)]
    pub minted: Option<MintedView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedView {
    /// `here` (this replica fetched it) or `fleet` (another replica did).
    pub from: String,
    /// The replica that fetched it, when another did.
    pub replica: Option<String>,
    pub fetched_at: Option<String>,
}

fn minted_view(t: &crate::tokens::Token) -> Option<MintedView> {
    let o = t.minted_origin()?;
    Some(MintedView {
        from: if o.shared_by.is_some() {
            "fleet"
        } else {
            "here"
        }
        .into(),
        replica: o.shared_by,
        fetched_at: ts(Some(o.fetched_at)),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedView {
    /// `here` (this replica learned it) or `fleet` (another replica did).
    pub from: String,
    pub replica: String,
    /// `rejected`, `recovered` or `cool-down`.
    pub finding: String,
    pub at: Option<String>,
}

fn learned_view(t: &crate::tokens::Token) -> Option<LearnedView> {
    let l = t.learned()?;
    Some(LearnedView {
        from: if l.local { "here" } else { "fleet" }.into(),
        replica: l.origin.clone(),
        finding: l.finding.as_str().into(),
        at: ts(Some(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(l.at_ms),
        )),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaView {
    pub remaining: u64,
    pub limit: Option<u64>,
    pub reset_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoticeView {
    pub deprecated: bool,
    pub deprecation_at: Option<String>,
    pub sunset_at: Option<String>,
    pub links: Vec<LinkView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub rel: String,
    pub url: String,
}

fn quota_view(t: &crate::tokens::Token) -> Option<QuotaView> {
    t.evidence
        .quota()
        .map(|(remaining, limit, reset)| QuotaView {
            remaining,
            limit,
            reset_at: ts(reset),
        })
}

/// A token's last deprecation or sunset notice (also the webhook's).
pub fn notice_view(t: &crate::tokens::Token) -> Option<NoticeView> {
    let n = t.evidence.notice()?;
    let n = &n.1;
    let at = |s: Option<u64>| ts(s.map(crate::clock::from_unix));
    Some(NoticeView {
        deprecated: n.deprecated,
        deprecation_at: at(n.deprecation_at),
        sunset_at: at(n.sunset_at),
        links: n
            .links
            .iter()
            .map(|(rel, url)| LinkView {
                rel: rel.to_string(),
                url: url.to_string(),
            })
            .collect(),
    })
}

fn breaker_view(b: &crate::generation::breaker::Breaker) -> BreakerView {
    BreakerView {
        open: b.is_open(),
        reason: b.reason().map(|r| r.as_str().to_string()),
        since: ts(b.since()),
        next_trial: ts(b.next_trial()),
    }
}

fn upstream_view(u: &crate::generation::Upstream, now: SystemTime) -> UpstreamView {
    let tokens = u
        .tokens
        .tokens
        .iter()
        .map(|t| TokenView {
            index: t.index,
            source: t.spec.source.describe(),
            kind: t.spec.source.kind().to_string(),
            fingerprint: t.fingerprint.clone(),
            state: t.state(now),
            expires_at: ts(t.expires_at),
            last_used: ts(t.last_used()),
            error: t.unavailable_reason.clone(),
            detail: t.evidence.detail().map(|d| d.to_string()),
            quota: quota_view(t),
            notice: notice_view(t),
            cool_until: ts(t.evidence.cool_until(now)),
            learned: learned_view(t),
            minted: minted_view(t),
        })
        .collect();
    let (state, reason) = u.state(now);
    UpstreamView {
        name: u.config.name.clone(),
        url: u.config.url.original.clone(),
        route: RouteView {
            host: u.config.route.host.clone(),
            path_prefix: u.config.route.path_prefix.clone(),
        },
        state,
        reason,
        degraded_since: ts(u.status.degradation().map(|(_, t)| t)),
        last_success: ts(u.status.last_success()),
        last_failure: u.status.last_failure().map(|(at, r)| FailureView {
            at: ts(Some(at)),
            reason: r.map(|r| r.as_str().to_string()),
        }),
        breakers: BreakersView {
            health: breaker_view(&u.status.health),
            auth: breaker_view(&u.auth),
        },
        tokens,
        stored: StoredView {
            entries: u.status.stored_entries.load(Ordering::Relaxed).max(0),
            bytes: u.status.stored_bytes.load(Ordering::Relaxed).max(0),
        },
        pool: pool_view(u),
        client_cert: client_cert_view(u, now),
        calls: calls_view(u),
    }
}

fn calls_view(u: &crate::generation::Upstream) -> CallsView {
    use crate::outcome::Hit;
    let m = &u.status.metrics;
    let revalidated = |result: &str| {
        ["request", "background"]
            .iter()
            .map(|mode| {
                crate::metrics::metrics()
                    .cache_revalidations_total
                    .with_label_values(&[u.config.name.as_str(), mode, result])
                    .get()
            })
            .sum()
    };
    CallsView {
        fresh_hits: m.hits[Hit::Fresh as usize].get(),
        stale_while_revalidate_hits: m.hits[Hit::Revalidating as usize].get(),
        coalesced: m.hits[Hit::Coalesced as usize].get(),
        waiting: m.coalesce_waiting.get(),
        revalidated_304: revalidated("304"),
        revalidated_200: revalidated("200"),
        revalidations_failed: revalidated("failed"),
    }
}

/// The `/status` document now.
pub fn status(app: &App) -> Status {
    let gen = app.live.load_full();
    let now = SystemTime::now();
    let reload = app.last_reload.load();
    let last_shed = app.memory.last_shed_unix.load(Ordering::Relaxed);
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_at: ts(Some(app.started_at)),
        config: ConfigView {
            path: gen.loaded.path.display().to_string(),
            hash: gen.loaded.file_hash.clone(),
            generation: gen.number,
            loaded_at: ts(Some(gen.loaded_at)),
        },
        reload: ReloadView {
            attempt: reload.attempt,
            at: ts(Some(reload.at)).unwrap_or_default(),
            trigger: reload.trigger.as_str().to_string(),
            ok: reload.ok,
            message: reload.message.clone(),
            generation: reload.generation,
        },
        memory: MemoryView {
            rss_bytes: app.memory.rss.load(Ordering::Relaxed),
            soft_limit_bytes: gen.loaded.config.memory.soft_limit,
            shed_entries: app.memory.shed_entries.load(Ordering::Relaxed),
            shed_bytes: app.memory.shed_bytes.load(Ordering::Relaxed),
            last_shed: ts((last_shed != 0).then(|| crate::clock::from_unix(last_shed))),
        },
        cache: CacheView {
            entries: app.cache.entries(),
            bytes: app.cache.bytes(),
            limit_bytes: app.cache.budget(),
            max_object_bytes: app.cache.max_object,
            persist: app.cache.persist_status(),
            fleet: app.cache.fleet().map(|f| f.status()),
        },
        connections: connections(app),
        upstreams: gen
            .upstreams
            .iter()
            .map(|u| upstream_view(u, now))
            .collect(),
        timeline: app.timeline.snapshot(),
    }
}

/// Client connection figures per listener and the descriptor limits.
fn connections(app: &App) -> ConnectionsView {
    let view = |f: &crate::net::listener::ListenerFigures| ListenerView {
        open: f.open.load(Ordering::Relaxed),
        max: f.cap.load(Ordering::Relaxed),
        refused: f.refused.load(Ordering::Relaxed),
        header_timeouts: f.header_timeouts.load(Ordering::Relaxed),
        evicted: f.evicted.load(Ordering::Relaxed),
    };
    let limits = app.limits.get();
    ConnectionsView {
        proxy: view(&app.listeners.proxy),
        admin: view(&app.listeners.admin),
        nofile_soft: limits.map(|l| l.nofile_soft),
        nofile_hard: limits.map(|l| l.nofile_hard),
    }
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
    let draining = app.drain.draining();
    let mut all = listening && !draining;
    let ups: Vec<Value> = gen
        .upstreams
        .iter()
        .map(|u| {
            let (state, reason) = u.state(now);
            let ready = state != UpstreamState::Down;
            all &= ready;
            json!({ "name": u.config.name, "ready": ready, "state": state, "reason": reason })
        })
        .collect();
    (
        all,
        json!({ "ready": all, "listening": listening, "draining": draining, "generation": gen.number, "upstreams": ups }),
    )
}

#[cfg(test)]
pub(crate) mod tests;

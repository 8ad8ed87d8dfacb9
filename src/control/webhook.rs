//! State changes: each is logged once, and with `alerts.webhook` set, sent
//! as a JSON POST. The webhook gets a POST for each change of an
//! upstream's state (`healthy`, `degraded`, `down`, with its reason) and
//! of a token's state (`active`, `suspect`, `rejected`, `expiring`,
//! `expired`, `unavailable`; `reason` carries the vendor's words), of an
//! upstream's client certificate (`client-cert`: `active`, `expiring`,
//! `expired`, `not-yet-valid`), and for each new deprecation or sunset
//! notice the vendor sends (`notice`).
//!
//! States are compared once a second, so a flap inside a second is not
//! reported (the debounce), and the changes of one second go out in one
//! POST. The comparison is a pure function ([`Seen::changes`], over what
//! [`observe`] read of each upstream), unit-tested in `webhook/tests.rs`. Delivery runs in its own task with retries (1 s, doubling, 5
//! tries); at most 64 batches wait, a batch beyond that is dropped and
//! counted (`graceway_webhook_deliveries_total{result="dropped"}`).
//! Requests never wait for it. A payload names tokens by index and
//! fingerprint, never by value.
//!
//! ```json
//! {"source":"graceway","host":"...","events":[
//!   {"kind":"upstream","upstream":"emoji","from":"healthy","to":"degraded","reason":"token-rejected","at":"..."},
//!   {"kind":"auth-breaker","upstream":"emoji","from":"closed","to":"open","reason":"token-rejected","at":"..."},
//!   {"kind":"token","upstream":"emoji","token":0,"fingerprint":"sha256:...","from":"active","to":"rejected","reason":"invalid_token (The access token was revoked)","at":"..."},
//!   {"kind":"notice","upstream":"emoji","token":0,"fingerprint":"sha256:...","from":"none","to":"deprecation at 2026-12-01T00:00:00Z; sunset at 2027-01-01T00:00:00Z","reason":"successor-version: https://api.example/v2","at":"..."}]}
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::generation::{Breaker, Generation, Upstream};
use crate::metrics::metrics;
use crate::net::client_cert::CertState;
use crate::outcome::{Reason, UpstreamState};
use crate::tokens::evidence::Notice;
use crate::tokens::TokenState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub upstream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

/// Watches states and hands changes to the delivery task.
#[derive(Default)]
pub struct StateWatch {
    seen: Seen,
    last: Option<Instant>,
    tx: Option<mpsc::Sender<Vec<Event>>>,
    /// The webhook (and its CA) the delivery task was started for.
    target: Option<crate::config::AlertsConfig>,
}

/// One upstream's states at one tick, as the watch compares them: read
/// from the live generation by [`observe`], compared with the last tick's
/// by [`Seen::changes`].
#[derive(Debug, Clone)]
struct Observed {
    name: String,
    state: UpstreamState,
    reason: Option<Reason>,
    health: BreakerSeen,
    auth: BreakerSeen,
    tokens: Vec<TokenSeen>,
    /// The client certificate's fingerprint and state (`tls.client_cert`).
    client_cert: Option<(String, CertState)>,
}

#[derive(Debug, Clone, Copy)]
struct BreakerSeen {
    open: bool,
    /// Why it is open (`None` while closed).
    reason: Option<Reason>,
}

#[derive(Debug, Clone)]
struct TokenSeen {
    index: usize,
    fingerprint: String,
    state: TokenState,
    /// The vendor's words on the last refusal.
    detail: Option<Arc<String>>,
    /// The last deprecation or sunset notice, with the hash of its headers.
    notice: Option<Arc<(u64, Notice)>>,
}

/// What the watch reads of an upstream at `now`.
fn observe(u: &Upstream, now: SystemTime) -> Observed {
    let (state, reason) = u.state(now);
    let breaker = |b: &Breaker| BreakerSeen {
        open: b.is_open(),
        reason: b.reason(),
    };
    Observed {
        name: u.config.name.clone(),
        state,
        reason,
        health: breaker(&u.status.health),
        auth: breaker(&u.auth),
        tokens: u
            .tokens
            .tokens
            .iter()
            .map(|t| TokenSeen {
                index: t.index,
                fingerprint: t.fingerprint.clone(),
                state: t.state(now),
                detail: t.evidence.detail(),
                notice: t.evidence.notice(),
            })
            .collect(),
        client_cert: u
            .client_cert
            .as_ref()
            .map(|c| (c.fingerprint.clone(), c.state(now))),
    }
}

/// The states last seen. Entries are never dropped: an upstream or token
/// that leaves the config and comes back is compared with its state when
/// it left.
#[derive(Debug, Default)]
struct Seen {
    upstreams: HashMap<String, (UpstreamState, Option<Reason>)>,
    /// (upstream, token index, fingerprint) -> state.
    tokens: HashMap<(String, usize, String), TokenState>,
    /// (upstream, "health" | "auth") -> open.
    breakers: HashMap<(String, &'static str), bool>,
    /// (upstream, token fingerprint) -> hash of the last notice reported.
    notices: HashMap<(String, String), u64>,
    /// (upstream, certificate fingerprint) -> state.
    certs: HashMap<(String, String), CertState>,
}

impl Seen {
    /// The changes from the states last seen to `now`'s, stamped `at`, in
    /// order: per upstream its state, its health and auth breakers, its
    /// client certificate, then each token's state and new notice.
    /// Remembers `now`. An upstream or breaker seen for the first time is
    /// no change; a token or certificate is, when it first shows in a
    /// state other than active (a start or a rotation).
    fn changes(&mut self, now: &[Observed], at: &str) -> Vec<Event> {
        let mut events = Vec::new();
        for u in now {
            let name = &u.name;
            let cur = (u.state, u.reason);
            match self.upstreams.insert(name.clone(), cur) {
                Some(prev) if prev != cur => events.push(Event {
                    kind: "upstream",
                    upstream: name.clone(),
                    token: None,
                    fingerprint: None,
                    from: prev.0.as_str().to_string(),
                    to: cur.0.as_str().to_string(),
                    reason: cur.1.map(|r| r.as_str().to_string()),
                    at: at.to_string(),
                }),
                _ => {}
            }
            for (which, b) in [("health", &u.health), ("auth", &u.auth)] {
                let open_or_closed = |open| if open { "open" } else { "closed" }.to_string();
                match self.breakers.insert((name.clone(), which), b.open) {
                    Some(prev) if prev != b.open => events.push(Event {
                        kind: if which == "health" {
                            "health-breaker"
                        } else {
                            "auth-breaker"
                        },
                        upstream: name.clone(),
                        token: None,
                        fingerprint: None,
                        from: open_or_closed(prev),
                        to: open_or_closed(b.open),
                        reason: b.reason.map(|r| r.as_str().to_string()),
                        at: at.to_string(),
                    }),
                    _ => {}
                }
            }
            if let Some((fp, state)) = &u.client_cert {
                let from = match self.certs.insert((name.clone(), fp.clone()), *state) {
                    Some(prev) if prev != *state => Some(prev.as_str()),
                    None if *state != CertState::Active => Some("new"),
                    _ => None,
                };
                if let Some(from) = from {
                    events.push(Event {
                        kind: "client-cert",
                        upstream: name.clone(),
                        token: None,
                        fingerprint: Some(fp.clone()),
                        from: from.to_string(),
                        to: state.as_str().to_string(),
                        reason: None,
                        at: at.to_string(),
                    });
                }
            }
            for t in &u.tokens {
                let key = (name.clone(), t.index, t.fingerprint.clone());
                let from = match self.tokens.insert(key, t.state) {
                    Some(prev) if prev != t.state => Some(prev.as_str()),
                    None if t.state != TokenState::Active => Some("new"),
                    _ => None,
                };
                if let Some(from) = from {
                    let reason = matches!(t.state, TokenState::Rejected | TokenState::Suspect)
                        .then(|| t.detail.as_ref().map(|d| d.to_string()))
                        .flatten();
                    events.push(Event {
                        kind: "token",
                        upstream: name.clone(),
                        token: Some(t.index),
                        fingerprint: Some(t.fingerprint.clone()),
                        from: from.to_string(),
                        to: t.state.as_str().to_string(),
                        reason,
                        at: at.to_string(),
                    });
                }
                if let Some(n) = &t.notice {
                    let key = (name.clone(), t.fingerprint.clone());
                    if self.notices.insert(key, n.0) != Some(n.0) {
                        events.push(notice_event(name, t.index, &t.fingerprint, &n.1, at));
                    }
                }
            }
        }
        events
    }
}

impl StateWatch {
    /// Called from the control loop with the live generation; compares at
    /// most once a second.
    /// Each change is also kept in `timeline` (the status page's).
    pub fn tick(&mut self, gen: &Generation, timeline: &crate::app::timeline::Timeline) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(now);
        let alerts = &gen.loaded.config.alerts;
        if self.target.as_ref() != Some(alerts) {
            self.target = Some(alerts.clone());
            self.tx = alerts.webhook.clone().map(|u| {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(deliver(u, alerts.webhook_ca_file.clone(), rx));
                tx
            });
        }
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let sys_now = SystemTime::now();
        let observed: Vec<Observed> = gen.upstreams.iter().map(|u| observe(u, sys_now)).collect();
        let events = self.seen.changes(&observed, &at);
        if events.is_empty() {
            return;
        }
        // Every state change is logged once and kept in the timeline,
        // webhook or not.
        for e in &events {
            let (level, line) = log_line(e);
            log::log!(level, "{line}");
            timeline.record(crate::app::timeline::Change {
                at: e.at.clone(),
                kind: e.kind.to_string(),
                upstream: Some(e.upstream.clone()),
                token: e.token,
                fingerprint: e.fingerprint.clone(),
                from: e.from.clone(),
                to: e.to.clone(),
                reason: e.reason.clone(),
            });
        }
        if let Some(tx) = &self.tx {
            if tx.try_send(events).is_err() {
                metrics()
                    .webhook_deliveries_total
                    .with_label_values(&["dropped"])
                    .inc();
            }
        }
    }
}

/// The log line of a change, and its level: a warning for an upstream's
/// state and a vendor's notice, information for the rest.
fn log_line(e: &Event) -> (log::Level, String) {
    let why = |open: &str, close: &str| {
        e.reason
            .as_deref()
            .map(|r| format!("{open}{r}{close}"))
            .unwrap_or_default()
    };
    match e.token {
        None if e.kind == "client-cert" => (
            match e.to.as_str() {
                "active" => log::Level::Info,
                _ => log::Level::Warn,
            },
            format!(
                "upstream {}: client certificate {} is now {} (was {})",
                e.upstream,
                e.fingerprint.as_deref().unwrap_or("-"),
                e.to,
                e.from
            ),
        ),
        None if e.kind.ends_with("-breaker") => (
            log::Level::Info,
            format!(
                "upstream {}: {} {} -> {}{}",
                e.upstream,
                e.kind,
                e.from,
                e.to,
                why(" (", ")")
            ),
        ),
        Some(i) if e.kind == "notice" => (
            log::Level::Warn,
            format!(
                "upstream {}: token {i} ({}): the vendor announced {}{}",
                e.upstream,
                e.fingerprint.as_deref().unwrap_or("-"),
                e.to,
                why("; ", "")
            ),
        ),
        Some(i) => (
            log::Level::Info,
            format!(
                "upstream {}: token {i} ({}) is now {} (was {}){}",
                e.upstream,
                e.fingerprint.as_deref().unwrap_or("-"),
                e.to,
                e.from,
                why(": ", "")
            ),
        ),
        // The same state with another reason (degraded by a 5xx,
        // then by a rejected token) is one change, said as such.
        None if e.from == e.to => (
            log::Level::Warn,
            format!(
                "upstream {}: still {}, now {}",
                e.upstream,
                e.to,
                e.reason.as_deref().unwrap_or("-")
            ),
        ),
        None => (
            log::Level::Warn,
            format!(
                "upstream {}: state {} -> {}{}",
                e.upstream,
                e.from,
                e.to,
                why(" (", ")")
            ),
        ),
    }
}

/// A new deprecation or sunset notice, as one event: `to` says what was
/// announced (`deprecated since <time>; sunset at <time>`), `reason` names
/// the links the vendor gave.
fn notice_event(upstream: &str, index: usize, fingerprint: &str, n: &Notice, at: &str) -> Event {
    let time = |s: u64| humantime::format_rfc3339_seconds(crate::clock::from_unix(s)).to_string();
    let mut parts = Vec::new();
    if n.deprecated {
        parts.push(match n.deprecation_at {
            Some(d) => format!("deprecation at {}", time(d)),
            None => "deprecation".to_string(),
        });
    }
    if let Some(s) = n.sunset_at {
        parts.push(format!("sunset at {}", time(s)));
    }
    let links: Vec<String> = n
        .links
        .iter()
        .map(|(rel, url)| format!("{rel}: {url}"))
        .collect();
    Event {
        kind: "notice",
        upstream: upstream.to_string(),
        token: Some(index),
        fingerprint: Some(fingerprint.to_string()),
        from: "none".to_string(),
        to: if parts.is_empty() {
            "no deprecation".to_string()
        } else {
            parts.join("; ")
        },
        reason: (!links.is_empty()).then(|| links.join(", ")),
        at: at.to_string(),
    }
}

async fn deliver(
    url: String,
    ca_file: Option<std::path::PathBuf>,
    mut rx: mpsc::Receiver<Vec<Event>>,
) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    while let Some(events) = rx.recv().await {
        let body = serde_json::json!({
            "source": "graceway",
            "host": host,
            "events": events,
        })
        .to_string();
        let mut delivered = false;
        for attempt in 1..=5 {
            let tls = crate::net::outbound::Tls {
                verify: true,
                ca_file: ca_file.as_deref(),
            };
            match crate::net::outbound::request(
                "POST",
                &url,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
                Duration::from_secs(5),
                tls,
            )
            .await
            {
                Ok(r) if (200..300).contains(&r.status) => {
                    delivered = true;
                    break;
                }
                Ok(r) => log::warn!("webhook {url}: answered {} (attempt {attempt}/5)", r.status),
                Err(e) => log::warn!("webhook {url}: {e} (attempt {attempt}/5)"),
            }
            if attempt == 5 {
                break;
            }
            metrics()
                .webhook_deliveries_total
                .with_label_values(&["retried"])
                .inc();
            let delay =
                crate::clock::backoff(Duration::from_secs(1), attempt, Duration::from_secs(16));
            tokio::time::sleep(delay).await;
        }
        let result = if delivered { "ok" } else { "failed" };
        metrics()
            .webhook_deliveries_total
            .with_label_values(&[result])
            .inc();
        if !delivered {
            log::error!(
                "webhook {url}: gave up on {} events after 5 attempts",
                events.len()
            );
        }
    }
}

#[cfg(test)]
mod tests;

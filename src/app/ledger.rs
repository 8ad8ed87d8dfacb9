//! Applying the fleet ledger: what other replicas learned about the tokens
//! this replica holds (`tokens::ledger` the words, `cache::ledger` the
//! Redis side). At start the ledger is read before the proxy takes its
//! first request; then findings are applied as their notifications arrive,
//! and the ledger is read again every `cache::ledger::POLL` for what a
//! lost notification did not bring. An entry is applied
//! when it is newer than what this replica knows of that token (its own
//! finding or one applied before): a rejection takes the token out of
//! rotation here without this replica sending it again, a recovery puts a
//! configured token back (and closes the auth breaker), a cool-down skips
//! the token until the vendor's reset. Nothing here is on the request
//! path: a request reads the token's flags as it always does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::generation::Generation;
use crate::metrics::fleet_metrics as metrics;
use crate::tokens::ledger::{Entry, Finding, Slot, TokenId};

/// This replica's name in the ledger: the host (the pod's name under
/// Kubernetes) and the process id, so two processes on one host differ.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "graceway".into());
    format!("{host}/{}", std::process::id())
}

/// The ledger names of the tokens the live generation holds.
fn held(gen: &Generation) -> Vec<TokenId> {
    let mut ids: Vec<TokenId> = gen
        .upstreams
        .iter()
        .flat_map(|u| u.tokens.tokens.iter().filter_map(|t| t.ledger_id()))
        .collect();
    ids.sort_by_key(|id| id.0);
    ids.dedup();
    ids
}

/// The newest entry seen per token and slot (applied, or this replica's
/// own), so an entry is applied once.
#[derive(Default)]
pub struct Seen(HashMap<(TokenId, Slot), u64>);

/// When an entry is applied: in the read at start (what the fleet knew
/// before this replica ran: its age is not a delivery lag), or while
/// running (a notification or a read: its age is the lag).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum When {
    Start,
    Running,
}

/// Applies `entries` to the tokens of `gen`; returns how many changed a
/// token. `own` is this replica's name (its own entries are only noted).
pub fn apply(gen: &Generation, entries: &[Entry], seen: &mut Seen, own: &str, when: When) -> usize {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut changed = 0;
    for e in entries {
        let slot = e.finding.slot();
        let newest = seen.0.entry((e.token, slot)).or_insert(0);
        if e.at_ms <= *newest {
            continue;
        }
        *newest = e.at_ms;
        if e.origin == own {
            continue;
        }
        // The same value may serve two upstreams: each holds its own token.
        for up in gen.upstreams.iter() {
            for t in &up.tokens.tokens {
                if t.ledger_id() != Some(e.token) {
                    continue;
                }
                // A newer finding of this replica's own stands.
                if t.learned()
                    .is_some_and(|l| l.finding.slot() == slot && l.at_ms >= e.at_ms)
                {
                    continue;
                }
                if !t.apply(e) {
                    continue;
                }
                changed += 1;
                let m = metrics();
                m.ledger_findings_total
                    .with_label_values(&["applied"])
                    .inc();
                if when == When::Running {
                    m.ledger_lag_seconds
                        .observe(now_ms.saturating_sub(e.at_ms) as f64 / 1000.0);
                }
                let ago = Duration::from_millis(now_ms.saturating_sub(e.at_ms));
                let (level, how) = match e.finding {
                    Finding::Rejected { status, evidence } => (
                        log::Level::Info,
                        format!("rejected ({status}, {})", evidence.as_str()),
                    ),
                    Finding::Recovered { evidence } => {
                        // The vendor takes it again: so does this replica.
                        up.auth.success();
                        let how = format!("accepted again ({})", evidence.as_str());
                        (log::Level::Info, how)
                    }
                    Finding::CoolDown { until } => (
                        log::Level::Info,
                        format!(
                            "out of quota for {} s",
                            until.saturating_sub(crate::clock::unix_now())
                        ),
                    ),
                    // Figures arrive about once a second while requests
                    // flow: not an event worth a line.
                    Finding::Usage { remaining, .. } => (
                        log::Level::Debug,
                        format!("quota observed ({remaining:?} left)"),
                    ),
                    Finding::Notice { sunset_at, .. } => (
                        log::Level::Info,
                        match sunset_at {
                            Some(at) => format!("deprecated by the vendor (sunset at {at})"),
                            None => "deprecated by the vendor".to_string(),
                        },
                    ),
                };
                log::log!(
                    level,
                    "upstream {}: token {} ({}) {how} by replica {} {:.3}s ago: applied from the fleet ledger",
                    up.config.name,
                    t.index,
                    t.fingerprint,
                    e.origin,
                    ago.as_secs_f64()
                );
            }
        }
    }
    changed
}

/// Starts the ledger's writer, reads the ledger once (waiting a bounded
/// time for Redis: a replica that starts mid-outage should not send a
/// token the fleet knows is dead), then keeps applying it in the
/// background. Called by the control service before it reports ready.
pub async fn start(app: &Arc<App>) {
    let Some(tier) = app.ledger.clone() else {
        return;
    };
    tier.start();
    let own = app
        .shared
        .ledger
        .as_ref()
        .map_or_else(replica_name, |o| o.origin().to_string());
    let mut seen = Seen::default();
    let limit = (tier.timeout() * 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
    if tier.ready_within(limit).await {
        let gen = app.live.load_full();
        if let Some(entries) = tier.read(&held(&gen)).await {
            let n = apply(&gen, &entries, &mut seen, &own, When::Start);
            if n > 0 {
                log::info!("fleet ledger: {n} token finding(s) applied at start");
            }
        }
    } else {
        log::warn!(
            "fleet ledger: Redis not reachable within {limit:?} at start; this replica learns about its tokens alone until it is"
        );
    }
    let mut notified = tier.notifications();
    let app = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::cache::ledger::POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(e) = notified.recv() => {
                    if e.origin != own {
                        metrics()
                            .ledger_findings_total
                            .with_label_values(&["notified"])
                            .inc();
                    }
                    let gen = app.live.load_full();
                    apply(&gen, std::slice::from_ref(&e), &mut seen, &own, When::Running);
                }
                _ = tick.tick() => {
                    let gen = app.live.load_full();
                    if let Some(entries) = tier.read(&held(&gen)).await {
                        apply(&gen, &entries, &mut seen, &own, When::Running);
                    }
                }
            }
        }
    });
}

/// One trial per fleet: the probe and the background trials ask here
/// before they send a token (see `cache::ledger::LedgerTier::take_trial`).
#[derive(Clone)]
pub struct FleetTrials {
    tier: Arc<crate::cache::ledger::LedgerTier>,
    origin: String,
}

impl FleetTrials {
    /// With the ledger on.
    pub fn of(app: &App) -> Option<FleetTrials> {
        Some(FleetTrials {
            tier: app.ledger.clone()?,
            origin: app.shared.ledger.as_ref()?.origin().to_string(),
        })
    }

    /// Whether this replica tries `t` now (for `window`): a token outside
    /// the ledger always is.
    pub async fn take(&self, t: &crate::tokens::Token, window: Duration) -> bool {
        match t.ledger_id() {
            Some(id) => self.tier.take_trial(id, &self.origin, window).await,
            None => true,
        }
    }
}

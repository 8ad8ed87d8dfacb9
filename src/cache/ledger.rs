//! The fleet ledger's Redis side: each replica's findings about its tokens
//! (`tokens::ledger`) written where every replica sharing the fleet tier
//! reads them, over the fleet tier's connection and under its breaker and
//! timeout, never on the request path.
//!
//! - **Keys**: `<key_prefix>ledger:v1:{<sha256 of the token's value>}:<slot>`
//!   with one slot for the token's acceptance (rejected or accepted
//!   again, the newest finding wins) and one for its quota (a cool-down
//!   until the vendor's reset). The braces are a Redis Cluster hash tag:
//!   both slots of a token live on one node, so one `MGET` reads them.
//! - **Writes**: a finding is queued when a replica reaches it (never a
//!   wait: a full queue drops it, counted) and written with `SET .. PX` for
//!   as long as it holds (a rejection for the auth breaker's longest
//!   window unless a replica renews it, so a wrong verdict heals).
//! - **Notifications**: the same record is published on
//!   `<key_prefix>ledger:v1:findings` before it is written; every replica
//!   keeps one subscribed connection ([`LedgerTier::notifications`]) and
//!   applies what arrives at once, so a finding reaches a busy replica in
//!   about one Redis round trip. A Cluster passes a `PUBLISH` to every
//!   node, so the subscriber holds any one node and moves to the next when
//!   it goes away.
//! - **Reads**: the replica reads the slots of the tokens it holds, at
//!   start before its first request and then every [`POLL`]: what a lost
//!   notification (a reconnecting subscriber, Redis restarted) did not
//!   bring arrives within that. It cannot read a token it does not hold:
//!   a record names the token it is about, and one whose name is not its
//!   key's is ignored and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::fleet::FleetTier;
use crate::metrics::fleet_metrics as metrics;
use crate::tokens::ledger::{self, Entry, Slot, TokenId};

/// How often a replica reads the ledger.
pub const POLL: Duration = Duration::from_millis(250);

pub struct LedgerTier {
    fleet: Arc<FleetTier>,
    rx: Mutex<Option<mpsc::Receiver<Entry>>>,
}

/// `<prefix>ledger:v1:{<hex>}:<slot>`.
pub fn key(prefix: &str, token: &TokenId, slot: Slot) -> String {
    format!("{prefix}ledger:v1:{{{}}}:{}", token.hex(), slot.as_str())
}

/// `<prefix>ledger:v1:findings`: the channel every finding is published on.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}ledger:v1:findings")
}

/// How many notifications may wait for the applier; more are dropped (the
/// next read brings them).
const NOTIFIED_QUEUE: usize = 1024;

/// `<prefix>ledger:v1:{<hex>}:trial`: who runs the token's trial or probe
/// this window.
pub fn key_trial(prefix: &str, token: &TokenId) -> String {
    format!("{prefix}ledger:v1:{{{}}}:trial", token.hex())
}

impl LedgerTier {
    /// The ledger over `fleet`'s connection, writing what arrives on `rx`
    /// (the other end is the replica's `tokens::ledger::Outbox`).
    pub fn new(fleet: Arc<FleetTier>, rx: mpsc::Receiver<Entry>) -> Arc<LedgerTier> {
        Arc::new(LedgerTier {
            fleet,
            rx: Mutex::new(Some(rx)),
        })
    }

    /// Starts the writer on the current runtime (the control service's).
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move { me.write_loop(rx).await });
    }

    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Entry>) {
        let m = metrics();
        let channel = channel(self.fleet.key_prefix());
        while let Some(e) = rx.recv().await {
            let record = ledger::encode(&e);
            // Notified first: the busy replicas are waiting for it; the
            // key is for those that start later or missed the message.
            let publish = redis::cmd("PUBLISH").arg(&channel).arg(&record).to_owned();
            if self
                .fleet
                .query::<u64>("ledger-publish", &publish)
                .await
                .is_some()
            {
                super::fleet::count("ledger-publish", "ok");
            }
            let cmd = redis::cmd("SET")
                .arg(key(self.fleet.key_prefix(), &e.token, e.finding.slot()))
                .arg(record)
                .arg("PX")
                .arg(e.ttl_ms.max(1))
                .to_owned();
            let direction = match self.fleet.query::<()>("ledger-set", &cmd).await {
                Some(()) => {
                    super::fleet::count("ledger-set", "ok");
                    "published"
                }
                None => "dropped",
            };
            m.ledger_findings_total
                .with_label_values(&[direction])
                .inc();
        }
    }

    /// The findings other replicas publish, as they arrive: a task keeps
    /// one subscribed connection, reconnecting (1 s, doubling to 10 s)
    /// when it drops. Records that do not decode are counted as ignored;
    /// a full queue drops (the next read brings the finding).
    pub fn notifications(self: &Arc<Self>) -> mpsc::Receiver<Entry> {
        let (tx, rx) = mpsc::channel(NOTIFIED_QUEUE);
        let me = self.clone();
        tokio::spawn(async move { me.subscribe_loop(tx).await });
        rx
    }

    async fn subscribe_loop(self: Arc<Self>, tx: mpsc::Sender<Entry>) {
        use futures_util::StreamExt;
        let channel = channel(self.fleet.key_prefix());
        let m = metrics();
        let mut pause = Duration::from_secs(1);
        let mut node = 0;
        loop {
            match self.fleet.subscribe(&channel, node).await {
                Ok(p) => {
                    super::fleet::count("ledger-subscribe", "ok");
                    m.ledger_subscribed.set(1);
                    pause = Duration::from_secs(1);
                    let mut messages = p.into_on_message();
                    while let Some(msg) = messages.next().await {
                        match ledger::decode(msg.get_payload_bytes()) {
                            Some(e) => {
                                if tx.is_closed() {
                                    return;
                                }
                                let _ = tx.try_send(e);
                            }
                            None => m
                                .ledger_findings_total
                                .with_label_values(&["ignored"])
                                .inc(),
                        }
                    }
                    m.ledger_subscribed.set(0);
                    log::warn!(
                        "fleet ledger: the notification connection to Redis closed; reconnecting (findings are read every {POLL:?} meanwhile)"
                    );
                }
                Err(e) => {
                    super::fleet::count("ledger-subscribe", "error");
                    log::debug!("fleet ledger: cannot subscribe: {e}");
                }
            }
            if tx.is_closed() {
                return;
            }
            node += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Waits at most `limit` for Redis (at start: a replica reads the
    /// ledger before its first request, but never waits longer).
    pub async fn ready_within(&self, limit: Duration) -> bool {
        self.fleet.connected_within(limit).await
    }

    /// The entries the fleet holds about `tokens`, within the fleet tier's
    /// timeout per token; `None` when Redis did not answer (the replica
    /// learns alone meanwhile). Records that do not decode, or that name
    /// another token than their key, are left out and counted.
    pub async fn read(&self, tokens: &[TokenId]) -> Option<Vec<Entry>> {
        let mut out = Vec::new();
        let m = metrics();
        for id in tokens {
            let mut cmd = redis::cmd("MGET");
            for slot in Slot::ALL {
                cmd.arg(key(self.fleet.key_prefix(), id, slot));
            }
            let got: Vec<Option<Vec<u8>>> = self.fleet.query("ledger-get", &cmd).await?;
            super::fleet::count("ledger-get", "ok");
            for (slot, bytes) in Slot::ALL.into_iter().zip(got) {
                let Some(bytes) = bytes else {
                    continue;
                };
                match ledger::decode(&bytes) {
                    Some(e) if e.token == *id && e.finding.slot() == slot => out.push(e),
                    _ => m
                        .ledger_findings_total
                        .with_label_values(&["ignored"])
                        .inc(),
                }
            }
        }
        Some(out)
    }

    /// Takes the fleet's trial of `token` for `window`: true when this
    /// replica runs it (it won the lock, or Redis cannot be asked and the
    /// replica decides alone), false when another replica holds it (and
    /// will publish what it finds). `SET .. NX PX`, so a replica that dies
    /// mid-trial frees it after the window.
    pub async fn take_trial(&self, token: TokenId, origin: &str, window: Duration) -> bool {
        let cmd = redis::cmd("SET")
            .arg(key_trial(self.fleet.key_prefix(), &token))
            .arg(origin)
            .arg("NX")
            .arg("PX")
            .arg((window.as_millis() as u64).max(100))
            .to_owned();
        let (won, result) = match self
            .fleet
            .query::<Option<String>>("ledger-trial", &cmd)
            .await
        {
            Some(Some(_)) => (true, "won"),
            Some(None) => (false, "lost"),
            None => (true, "alone"),
        };
        metrics()
            .ledger_trials_total
            .with_label_values(&[result])
            .inc();
        won
    }

    /// The fleet tier's timeout (what one ledger call may take).
    pub fn timeout(&self) -> Duration {
        self.fleet.timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_slots_of_a_token_share_a_cluster_hash_tag() {
        let id = TokenId([0xab; 32]);
        let state = key("graceway:", &id, Slot::State);
        let quota = key("graceway:", &id, Slot::Quota);
        assert_eq!(
            state,
            format!("graceway:ledger:v1:{{{}}}:state", "ab".repeat(32))
        );
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        assert_eq!(tag(&state), tag(&quota));
        assert_eq!(
            redis::cluster_routing::Slot::for_key(&state),
            redis::cluster_routing::Slot::for_key(&quota)
        );
    }
}

//! The fleet tier's and the fleet ledger's series.

use super::*;

/// The fleet tier's series, registered only when `cache.redis` is set (so
/// that a graceway without Redis exports no `graceway_fleet_up 0`).
pub struct FleetMetrics {
    pub fleet_up: IntGauge,
    pub fleet_operations_total: IntCounterVec,
    pub fleet_queue_dropped_total: IntCounter,
    /// The fleet ledger's findings by direction: `published` (written to
    /// Redis), `notified` (another replica's, arrived by notification),
    /// `applied` (another replica's, changing a token here), `ignored`
    /// (not a record, or naming another token than its key), `dropped`
    /// (queue full or Redis down).
    pub ledger_findings_total: IntCounterVec,
    /// From a replica learning a finding to this one applying it (while
    /// running; the read at start applies older findings, not counted).
    pub ledger_lag_seconds: Histogram,
    /// Trials and probes of a token, by who ran them: `won` (this replica
    /// took the fleet's lock), `lost` (another replica runs it), `alone`
    /// (Redis could not be asked).
    pub ledger_trials_total: IntCounterVec,
    /// 1 while the ledger's notification connection is subscribed.
    pub ledger_subscribed: IntGauge,
    /// Shared OAuth2 tokens (`oauth2.share`), by result: `shared` (the
    /// fleet's token used, no fetch), `fetched` (this replica fetched for
    /// the fleet), `alone` (fetched for itself: Redis could not be asked,
    /// or no token came while the lock lived), `undecryptable` (a record
    /// that did not open with the key: ignored).
    pub oauth2_share_total: IntCounterVec,
}

pub fn fleet_metrics() -> &'static FleetMetrics {
    static FLEET: OnceLock<FleetMetrics> = OnceLock::new();
    FLEET.get_or_init(|| {
        let ops = register_int_counter_vec!(
            "graceway_fleet_operations_total",
            "Fleet-tier (Redis) operations, by op (get, set) and result (hit, miss, ok, error, timeout, corrupt, skipped).",
            &["op", "result"]
        )
        .expect("metric registers");
        for (op, results) in [
            ("get", &["hit", "miss", "error", "timeout", "corrupt", "skipped"][..]),
            ("set", &["ok", "error", "timeout", "skipped"][..]),
            ("ledger-set", &["ok", "error", "timeout", "skipped"][..]),
            ("ledger-get", &["ok", "error", "timeout", "skipped"][..]),
            ("ledger-trial", &["ok", "error", "timeout", "skipped"][..]),
            ("ledger-publish", &["ok", "error", "timeout", "skipped"][..]),
            ("ledger-subscribe", &["ok", "error"][..]),
            ("oauth2-get", &["ok", "error", "timeout", "skipped"][..]),
            ("oauth2-set", &["ok", "error", "timeout", "skipped"][..]),
            ("oauth2-lock", &["ok", "error", "timeout", "skipped"][..]),
            ("oauth2-unlock", &["ok", "error", "timeout", "skipped"][..]),
        ] {
            for r in results {
                ops.with_label_values(&[op, r]);
            }
        }
        FleetMetrics {
            fleet_up: register_int_gauge!(
                "graceway_fleet_up",
                "1 while the fleet tier's Redis answers (connected, breaker closed)."
            )
            .expect("metric registers"),
            fleet_operations_total: ops,
            fleet_queue_dropped_total: register_int_counter!(
                "graceway_fleet_queue_dropped_total",
                "Copies not written to Redis because the write-behind queue was full."
            )
            .expect("metric registers"),
            ledger_findings_total: {
                let c = register_int_counter_vec!(
                    "graceway_ledger_findings_total",
                    "Fleet ledger findings about tokens, by direction (published, notified, applied, ignored, dropped).",
                    &["direction"]
                )
                .expect("metric registers");
                for d in ["published", "notified", "applied", "ignored", "dropped"] {
                    c.with_label_values(&[d]);
                }
                c
            },
            ledger_trials_total: {
                let c = register_int_counter_vec!(
                    "graceway_ledger_trials_total",
                    "Token trials and probes by who ran them: won (this replica took the fleet's lock), lost (another replica runs it), alone (Redis could not be asked).",
                    &["result"]
                )
                .expect("metric registers");
                for r in ["won", "lost", "alone"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            oauth2_share_total: {
                let c = register_int_counter_vec!(
                    "graceway_oauth2_share_total",
                    "Shared OAuth2 tokens (oauth2.share) by result: shared (the fleet's token used, no fetch), fetched (fetched here for the fleet), alone (fetched for this replica only: Redis could not be asked, or no token came while the lock lived), undecryptable (a record that did not open with the key, ignored).",
                    &["result"]
                )
                .expect("metric registers");
                for r in ["shared", "fetched", "alone", "undecryptable"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            ledger_lag_seconds: register_histogram!(
                "graceway_ledger_lag_seconds",
                "Seconds from a replica learning a token finding to this replica applying it.",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]
            )
            .expect("metric registers"),
            ledger_subscribed: register_int_gauge!(
                "graceway_ledger_subscribed",
                "1 while the fleet ledger's notification connection to Redis is subscribed (findings arrive at once; without it they are read every 250 ms)."
            )
            .expect("metric registers"),
        }
    })
}

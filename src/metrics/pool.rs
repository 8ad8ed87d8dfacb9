//! Token pools and pacing: which token each request's attempts took and
//! why, and the requests waiting for a quota reset.

use super::*;

/// The series of every upstream's pool, registered on first use.
pub struct PoolMetrics {
    /// `graceway_token_picks_total{upstream,token,pick}`.
    pub token_picks_total: IntCounterVec,
    /// `graceway_token_queue_waiting{upstream}`.
    pub token_queue_waiting: IntGaugeVec,
    /// `graceway_token_queue_waits_total{upstream,outcome}`.
    pub token_queue_waits_total: IntCounterVec,
}

pub fn pool_metrics() -> &'static PoolMetrics {
    static POOL: OnceLock<PoolMetrics> = OnceLock::new();
    POOL.get_or_init(|| PoolMetrics {
        token_picks_total: register_int_counter_vec!(
            "graceway_token_picks_total",
            "Attempts that carried a token, by token (index in the list) and why it was chosen: failover, round_robin, most_remaining, sticky, retry, trial.",
            &["upstream", "token", "pick"]
        )
        .expect("metric registers"),
        token_queue_waiting: register_int_gauge_vec!(
            "graceway_token_queue_waiting",
            "Requests waiting for a token's quota reset (credentials.queue).",
            &["upstream"]
        )
        .expect("metric registers"),
        token_queue_waits_total: register_int_counter_vec!(
            "graceway_token_queue_waits_total",
            "Requests that found every token's quota spent with a reset within credentials.queue.max_wait, by outcome: sent (waited, then went out), copy (gave up: the stored copy), refused (gave up: 503 with Retry-After).",
            &["upstream", "outcome"]
        )
        .expect("metric registers"),
    })
}

/// How a queued request ended (`graceway_token_queue_waits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    Sent,
    Copy,
    Refused,
}

impl QueueOutcome {
    pub const ALL: [QueueOutcome; 3] = [
        QueueOutcome::Sent,
        QueueOutcome::Copy,
        QueueOutcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueOutcome::Sent => "sent",
            QueueOutcome::Copy => "copy",
            QueueOutcome::Refused => "refused",
        }
    }
}

/// Number of pick reasons a token's counter is kept for.
pub const PICKS: usize = 6;

/// One upstream's pool series, resolved when its tokens are loaded: the
/// request path bumps a handle, never looks a label set up. The pick
/// counters are resolved on their first use (most upstreams see one or
/// two reasons), the queue's at once (exported at 0).
pub struct PoolSeries {
    upstream: String,
    picks: Box<[[OnceLock<IntCounter>; PICKS]]>,
    /// The number of requests waiting: also the queue's own counter (one
    /// atomic, shared by every generation of the upstream).
    pub waiting: IntGauge,
    waits: [IntCounter; 3],
}

impl std::fmt::Debug for PoolSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSeries")
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Default for PoolSeries {
    /// A set with no upstream (unit tests): nothing is registered.
    fn default() -> Self {
        let none = || IntCounter::new("unregistered", "-").expect("a valid name");
        PoolSeries {
            upstream: String::new(),
            picks: Box::new([]),
            waiting: IntGauge::new("unregistered", "-").expect("a valid name"),
            waits: [none(), none(), none()],
        }
    }
}

impl PoolSeries {
    pub fn new(upstream: &str, tokens: usize) -> PoolSeries {
        let m = pool_metrics();
        PoolSeries {
            upstream: upstream.to_string(),
            picks: (0..tokens).map(|_| Default::default()).collect(),
            waiting: m.token_queue_waiting.with_label_values(&[upstream]),
            waits: QueueOutcome::ALL.map(|o| {
                m.token_queue_waits_total
                    .with_label_values(&[upstream, o.as_str()])
            }),
        }
    }

    /// Counts an attempt that carried token `index`, chosen as `pick`
    /// (`kind` is its position, `name` its label).
    pub fn picked(&self, index: usize, kind: usize, name: &'static str) {
        let Some(slot) = self.picks.get(index).and_then(|p| p.get(kind)) else {
            return;
        };
        slot.get_or_init(|| {
            pool_metrics().token_picks_total.with_label_values(&[
                self.upstream.as_str(),
                &index.to_string(),
                name,
            ])
        })
        .inc();
    }

    pub fn waited(&self, outcome: QueueOutcome) {
        self.waits[outcome as usize].inc();
    }
}

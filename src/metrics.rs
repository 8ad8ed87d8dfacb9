//! Prometheus metrics (prefix `graceway_`), registered in the `prometheus`
//! crate's default registry, which also carries the standard process
//! collector (`process_resident_memory_bytes` and friends).
//!
//! The request path never looks a label set up: each upstream's counters are
//! resolved once into [`UpstreamMetrics`] and reached through the upstream.
//! Label values are bounded: upstream names, token indexes, status codes,
//! fixed reason words. Never a path, never a token value.

use std::sync::OnceLock;

use crate::outcome::Reason;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

pub struct Metrics {
    pub requests_total: IntCounterVec,
    pub upstream_responses_total: IntCounterVec,
    pub upstream_auth_failures_total: IntCounterVec,
    pub stale_served_total: IntCounterVec,
    pub stale_served_from_fleet_total: IntCounterVec,
    pub cache_hits_total: IntCounterVec,
    pub cache_revalidations_total: IntCounterVec,
    pub coalesce_waits_total: IntCounterVec,
    pub coalesce_waiting: IntGaugeVec,
    /// Token values the upstream echoed, taken out, by `part` (`header`:
    /// masked or dropped; `body`: the copy not kept, and masked on the way
    /// out with `stale.scrub_bodies`).
    pub token_reflections_total: IntCounterVec,
    /// Request headers not forwarded, by reason (`underscore`: a name with
    /// an underscore).
    pub request_headers_dropped_total: IntCounterVec,
    /// Protocol upgrades by result: `tunnelled` (101, allowed by
    /// `upgrade`), `stripped` (`Upgrade` not allowed, removed),
    /// `refused-101` (a 101 nobody asked for, answered 502).
    pub upgrades_total: IntCounterVec,
    pub degraded: IntGaugeVec,
    pub token_state: IntGaugeVec,
    pub token_expiry_timestamp_seconds: IntGaugeVec,
    pub upstream_client_cert_expiry_timestamp_seconds: IntGaugeVec,
    /// 1 for a token graceway renews itself with working renewals (OAuth2,
    /// a command with `refresh`): its expiry needs no operator.
    pub token_renews_itself: IntGaugeVec,
    /// Token fetches of self-renewing sources (OAuth2), by result: `ok`,
    /// `failed`, `refused` (the upstream refused the fetched token).
    pub token_fetches_total: IntCounterVec,
    /// Vendor signals, set at scrape time from the tokens' evidence.
    pub upstream_deprecated: IntGaugeVec,
    pub upstream_sunset_timestamp_seconds: IntGaugeVec,
    pub token_quota_remaining: IntGaugeVec,
    pub token_quota_limit: IntGaugeVec,
    pub token_quota_reset_timestamp_seconds: IntGaugeVec,
    pub token_reloads_total: IntCounterVec,
    /// Full config reloads (SIGHUP, `POST /reload`, `graceway reload`),
    /// apart from token refreshes, with the last result, as Prometheus and
    /// Alertmanager export theirs.
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp_seconds: IntGauge,
    /// 1 while the upstream's auth breaker is open (no usable token).
    pub upstream_auth_breaker_open: IntGaugeVec,
    /// `graceway_token_info{upstream,token,fingerprint} 1`: joins a token's
    /// index to its fingerprint in alerts.
    pub token_info: IntGaugeVec,
    pub upstream_breaker_open: IntGaugeVec,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub cache_evictions_total: IntCounter,
    /// First asks for a key not kept because the memory tier was half full
    /// (kept on the second ask: scan resistance, see `Cache::admit`).
    pub cache_admissions_deferred_total: IntCounter,
    /// Persist files found damaged (moved aside, started empty).
    pub cache_persist_damaged_total: IntCounter,
    pub upstream_request_duration_seconds: HistogramVec,
    /// Connects that failed on one address and moved to the next.
    pub upstream_address_failovers_total: IntCounterVec,
    pub memory_soft_limit_bytes: IntGauge,
    pub memory_shed_entries_total: IntCounter,
    pub webhook_deliveries_total: IntCounterVec,
    /// Requests graceway refused or cut for the client's own doing, by
    /// reason (a fixed set: [`CLIENT_REJECTIONS`]).
    pub client_rejections_total: IntCounterVec,
    /// Open client connections and connections refused over the cap, per
    /// listener; read from `net::listener::PROXY`/`ADMIN` at scrape time.
    pub client_connections: IntGaugeVec,
    pub client_connections_max: IntGaugeVec,
    pub client_connections_refused_total: IntCounterVec,
    /// Connections closed to make room for a new one at the cap (the
    /// longest idle keep-alive, else the slowest request header).
    pub client_connections_evicted_total: IntCounterVec,
    /// Expected events Pingora would otherwise log at ERROR or WARN
    /// (see `logging`), by kind.
    pub proxy_events_total: IntCounterVec,
}

/// Every `reason` of `graceway_client_rejections_total`, exported at 0
/// from start.
pub const CLIENT_REJECTIONS: [crate::outcome::ClientReason; 12] = crate::outcome::ClientReason::ALL;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Every `event` label of `graceway_proxy_events_total`.
pub const PROXY_EVENTS: [&str; 4] = [
    "client-aborted-header",
    "client-handshake-failed",
    "upstream-reuse-raced",
    "upgrade-waiting-for-sockets",
];

/// The process-wide metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        // Kept by the registry only: nothing updates it after this.
        register_int_gauge_vec!(
            "graceway_build_info",
            "1, with the version of this graceway and of Pingora as labels.",
            &["version", "pingora"]
        )
        .expect("metric registers")
        .with_label_values(&[env!("CARGO_PKG_VERSION"), "0.9"])
        .set(1);
        Metrics {
            requests_total: register_int_counter_vec!(
                "graceway_requests_total",
                "Requests answered, by upstream and outcome (ok, hit: a copy with nothing wrong, stale, error, client: the client went away, stalled or sent too much).",
                &["upstream", "outcome"]
            )
            .expect("metric registers"),
            upstream_responses_total: register_int_counter_vec!(
                "graceway_upstream_responses_total",
                "Responses received from upstreams, by status code.",
                &["upstream", "status"]
            )
            .expect("metric registers"),
            upstream_auth_failures_total: register_int_counter_vec!(
                "graceway_upstream_auth_failures_total",
                "Upstream 401/403 answers, by status code.",
                &["upstream", "status"]
            )
            .expect("metric registers"),
            request_headers_dropped_total: {
                let c = register_int_counter_vec!(
                    "graceway_request_headers_dropped_total",
                    "Client request headers not forwarded, by reason (underscore: a name with an underscore).",
                    &["reason"]
                )
                .expect("metric registers");
                c.with_label_values(&["underscore"]);
                c
            },
            upgrades_total: register_int_counter_vec!(
                "graceway_upgrades_total",
                "Protocol upgrades by upstream and result (tunnelled, stripped, refused-101).",
                &["upstream", "result"]
            )
            .expect("metric registers"),
            token_reflections_total: register_int_counter_vec!(
                "graceway_token_reflections_total",
                "Token values found in the upstream's answers and taken out, by upstream and part (header, body).",
                &["upstream", "part"]
            )
            .expect("metric registers"),
            stale_served_total: register_int_counter_vec!(
                "graceway_stale_served_total",
                "Degraded answers served from the last-good cache, by reason.",
                &["upstream", "reason"]
            )
            .expect("metric registers"),
            stale_served_from_fleet_total: register_int_counter_vec!(
                "graceway_stale_served_from_fleet_total",
                "Of graceway_stale_served_total, the copies the fleet tier (Redis) supplied on a local miss; the rest came from the memory tier.",
                &["upstream"]
            )
            .expect("metric registers"),
            cache_hits_total: register_int_counter_vec!(
                "graceway_cache_hits_total",
                "Requests answered from a copy with nothing wrong, before any vendor call, by kind (fresh, stale-while-revalidate, coalesced: another request's fetch of the same key).",
                &["upstream", "kind"]
            )
            .expect("metric registers"),
            cache_revalidations_total: register_int_counter_vec!(
                "graceway_cache_revalidations_total",
                "Refreshes of a kept copy, by mode (background: stale-while-revalidate or a breaker's pace; request: a client's request sent the copy's validators) and result (304: renewed without a body, 200: replaced, failed).",
                &["upstream", "mode", "result"]
            )
            .expect("metric registers"),
            coalesce_waits_total: register_int_counter_vec!(
                "graceway_coalesce_waits_total",
                "Requests that waited for another request's fetch of their key, by outcome (answered: its answer; degraded: answered as it was; alone: it could not be shared and they went themselves; timed-out: past cache.coalesce.wait; abandoned: its client left and a waiter fetched instead).",
                &["upstream", "outcome"]
            )
            .expect("metric registers"),
            coalesce_waiting: register_int_gauge_vec!(
                "graceway_coalesce_waiting",
                "Requests waiting now for another request's fetch of their key (cache.coalesce).",
                &["upstream"]
            )
            .expect("metric registers"),
            degraded: register_int_gauge_vec!(
                "graceway_degraded",
                "1 while the upstream is answered in degraded mode.",
                &["upstream"]
            )
            .expect("metric registers"),
            token_state: register_int_gauge_vec!(
                "graceway_token_state",
                "1 for the current state of each token (token = index in the upstream's list).",
                &["upstream", "token", "state"]
            )
            .expect("metric registers"),
            token_renews_itself: register_int_gauge_vec!(
                "graceway_token_renews_itself",
                "1 when graceway renews the token itself (OAuth2, a command with refresh) and its renewals work: its expiry needs no operator.",
                &["upstream", "token"]
            )
            .expect("metric registers"),
            token_fetches_total: register_int_counter_vec!(
                "graceway_token_fetches_total",
                "OAuth2 token fetches by upstream, token and result (ok, failed, refused: the upstream refused the fetched token).",
                &["upstream", "token", "result"]
            )
            .expect("metric registers"),
            token_expiry_timestamp_seconds: register_int_gauge_vec!(
                "graceway_token_expiry_timestamp_seconds",
                "Unix time at which the token expires (JWT exp or expires_at).",
                &["upstream", "token"]
            )
            .expect("metric registers"),
            upstream_client_cert_expiry_timestamp_seconds: register_int_gauge_vec!(
                "graceway_upstream_client_cert_expiry_timestamp_seconds",
                "Unix time of the notAfter of the client certificate (tls.client_cert) sent to the upstream.",
                &["upstream"]
            )
            .expect("metric registers"),
            upstream_deprecated: register_int_gauge_vec!(
                "graceway_upstream_deprecated",
                "1 while the upstream's answers carry a Deprecation header (RFC 9745) for any token.",
                &["upstream"]
            )
            .expect("metric registers"),
            upstream_sunset_timestamp_seconds: register_int_gauge_vec!(
                "graceway_upstream_sunset_timestamp_seconds",
                "Unix time of the earliest Sunset (RFC 8594) the upstream announced; 0 when none.",
                &["upstream"]
            )
            .expect("metric registers"),
            token_quota_remaining: register_int_gauge_vec!(
                "graceway_token_quota_remaining",
                "Requests left in the token's quota, as the upstream last stated (RateLimit or X-RateLimit headers).",
                &["upstream", "token"]
            )
            .expect("metric registers"),
            token_quota_limit: register_int_gauge_vec!(
                "graceway_token_quota_limit",
                "The token's quota per window, as the upstream last stated.",
                &["upstream", "token"]
            )
            .expect("metric registers"),
            token_quota_reset_timestamp_seconds: register_int_gauge_vec!(
                "graceway_token_quota_reset_timestamp_seconds",
                "Unix time at which the token's quota resets, as the upstream last stated.",
                &["upstream", "token"]
            )
            .expect("metric registers"),
            token_reloads_total: {
                let c = register_int_counter_vec!(
                    "graceway_token_reloads_total",
                    "Config reloads and token refreshes together, by result (ok, failed).",
                    &["result"]
                )
                .expect("metric registers");
                for r in ["ok", "failed"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            config_reloads_total: {
                let c = register_int_counter_vec!(
                    "graceway_config_reloads_total",
                    "Config reloads (SIGHUP, POST /reload), by result (ok, failed); token refreshes are not counted here.",
                    &["result"]
                )
                .expect("metric registers");
                for r in ["ok", "failed"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            config_last_reload_successful: {
                let g = register_int_gauge!(
                    "graceway_config_last_reload_successful",
                    "1 when the last config reload (or the start) succeeded."
                )
                .expect("metric registers");
                g.set(1);
                g
            },
            config_last_reload_success_timestamp_seconds: {
                let g = register_int_gauge!(
                    "graceway_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load (start or reload)."
                )
                .expect("metric registers");
                g.set(crate::clock::unix_now() as i64);
                g
            },
            upstream_auth_breaker_open: register_int_gauge_vec!(
                "graceway_upstream_auth_breaker_open",
                "1 while the upstream's auth breaker is open: no usable token, requests answered without asking the upstream.",
                &["upstream"]
            )
            .expect("metric registers"),
            token_info: register_int_gauge_vec!(
                "graceway_token_info",
                "1 for each token: its index and sha256 fingerprint (never the value).",
                &["upstream", "token", "fingerprint"]
            )
            .expect("metric registers"),
            upstream_breaker_open: register_int_gauge_vec!(
                "graceway_upstream_breaker_open",
                "1 while the upstream-health breaker is open.",
                &["upstream"]
            )
            .expect("metric registers"),
            cache_bytes: register_int_gauge!(
                "graceway_cache_bytes",
                "Bytes held by the last-good memory cache."
            )
            .expect("metric registers"),
            cache_entries: register_int_gauge!(
                "graceway_cache_entries",
                "Entries held by the last-good memory cache."
            )
            .expect("metric registers"),
            cache_admissions_deferred_total: register_int_counter!(
                "graceway_cache_admissions_deferred_total",
                "Copies not kept on a key's first ask because the memory tier was half full (kept on the second ask)."
            )
            .expect("metric registers"),
            cache_persist_damaged_total: register_int_counter!(
                "graceway_cache_persist_damaged_total",
                "Persist files found damaged on open, read or write: moved aside, replaced by an empty one."
            )
            .expect("metric registers"),
            cache_evictions_total: register_int_counter!(
                "graceway_cache_evictions_total",
                "Entries evicted from the last-good memory cache."
            )
            .expect("metric registers"),
            upstream_request_duration_seconds: register_histogram_vec!(
                "graceway_upstream_request_duration_seconds",
                "Time from sending a request upstream to its response header.",
                &["upstream"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
            )
            .expect("metric registers"),
            upstream_address_failovers_total: register_int_counter_vec!(
                "graceway_upstream_address_failovers_total",
                "Connects that failed on one address of the upstream's name and moved to the next.",
                &["upstream"]
            )
            .expect("metric registers"),
            memory_soft_limit_bytes: register_int_gauge!(
                "graceway_memory_soft_limit_bytes",
                "The configured memory.soft_limit (0 when unset)."
            )
            .expect("metric registers"),
            memory_shed_entries_total: register_int_counter!(
                "graceway_memory_shed_entries_total",
                "Last-good copies shed because resident memory passed memory.soft_limit."
            )
            .expect("metric registers"),
            webhook_deliveries_total: {
                let c = register_int_counter_vec!(
                    "graceway_webhook_deliveries_total",
                    "Alert webhook deliveries, by result (ok, retried, failed, dropped).",
                    &["result"]
                )
                .expect("metric registers");
                for r in ["ok", "retried", "failed", "dropped"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            client_rejections_total: {
                let c = register_int_counter_vec!(
                    "graceway_client_rejections_total",
                    "Requests refused or cut for the client's own doing (bad target, framing, limits, stalls, disconnects), by reason.",
                    &["reason"]
                )
                .expect("metric registers");
                for r in CLIENT_REJECTIONS {
                    c.with_label_values(&[r.as_str()]);
                }
                c
            },
            client_connections: register_int_gauge_vec!(
                "graceway_client_connections",
                "Open client connections, by listener (proxy, admin).",
                &["listener"]
            )
            .expect("metric registers"),
            client_connections_max: register_int_gauge_vec!(
                "graceway_client_connections_max",
                "The cap on open client connections, by listener.",
                &["listener"]
            )
            .expect("metric registers"),
            client_connections_refused_total: register_int_counter_vec!(
                "graceway_client_connections_refused_total",
                "Client connections refused because the listener was at its cap.",
                &["listener"]
            )
            .expect("metric registers"),
            client_connections_evicted_total: register_int_counter_vec!(
                "graceway_client_connections_evicted_total",
                "Client connections closed to make room for a new one at the cap (idle keep-alive first, then the slowest request header).",
                &["listener"]
            )
            .expect("metric registers"),
            proxy_events_total: {
                let c = register_int_counter_vec!(
                    "graceway_proxy_events_total",
                    "Expected connection events logged below ERROR, by kind.",
                    &["event"]
                )
                .expect("metric registers");
                for e in PROXY_EVENTS {
                    c.with_label_values(&[e]);
                }
                c
            },
        }
    })
}

pub mod fleet;
pub use fleet::fleet_metrics;
pub mod pool;

/// Counts a request refused or cut for the client's doing.
pub fn client_rejected(reason: crate::outcome::ClientReason) {
    metrics()
        .client_rejections_total
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// One upstream's metric handles, resolved once.
pub struct UpstreamMetrics {
    pub ok: IntCounter,
    /// `requests_total{outcome="hit"}`.
    pub hit: IntCounter,
    /// `cache_hits_total` by [`crate::outcome::Hit`] (index = `kind as usize`).
    pub hits: Vec<IntCounter>,
    /// `coalesce_waiting`.
    pub coalesce_waiting: IntGauge,
    pub stale: IntCounter,
    pub error: IntCounter,
    /// The client went away or was refused (`client`): never the upstream's.
    pub client: IntCounter,
    pub degraded: IntGauge,
    pub breaker_open: IntGauge,
    /// `stale_served_total` by [`Reason`] (index = `reason as usize - 1`).
    stale_by_reason: Vec<IntCounter>,
    /// `stale_served_from_fleet_total`: copies the fleet tier supplied.
    pub stale_from_fleet: IntCounter,
    pub duration: Histogram,
    /// `upstream_address_failovers_total`.
    pub address_failovers: IntCounter,
    name: String,
    /// `upgrades_total` by result.
    pub upgrades_tunnelled: IntCounter,
    pub upgrades_stripped: IntCounter,
    pub upgrades_refused: IntCounter,
    /// `token_reflections_total` for `header` and `body`.
    pub reflected_header: IntCounter,
    pub reflected_body: IntCounter,
    /// Lazily resolved `upstream_responses_total` handle per status code.
    responses: Box<[OnceLock<IntCounter>]>,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> UpstreamMetrics {
        let m = metrics();
        m.degraded.with_label_values(&[upstream]).set(0);
        m.upstream_breaker_open
            .with_label_values(&[upstream])
            .set(0);
        m.upstream_auth_breaker_open
            .with_label_values(&[upstream])
            .set(0);
        for status in ["401", "403"] {
            m.upstream_auth_failures_total
                .with_label_values(&[upstream, status]);
        }
        UpstreamMetrics {
            ok: m.requests_total.with_label_values(&[upstream, "ok"]),
            hit: m.requests_total.with_label_values(&[upstream, "hit"]),
            coalesce_waiting: m.coalesce_waiting.with_label_values(&[upstream]),
            hits: crate::outcome::Hit::ALL
                .iter()
                .map(|k| {
                    m.cache_hits_total
                        .with_label_values(&[upstream, k.as_str()])
                })
                .collect(),
            stale: m.requests_total.with_label_values(&[upstream, "stale"]),
            error: m.requests_total.with_label_values(&[upstream, "error"]),
            client: m.requests_total.with_label_values(&[upstream, "client"]),
            degraded: m.degraded.with_label_values(&[upstream]),
            breaker_open: m.upstream_breaker_open.with_label_values(&[upstream]),
            stale_by_reason: Reason::ALL
                .iter()
                .map(|r| {
                    m.stale_served_total
                        .with_label_values(&[upstream, r.as_str()])
                })
                .collect(),
            stale_from_fleet: m
                .stale_served_from_fleet_total
                .with_label_values(&[upstream]),
            duration: m
                .upstream_request_duration_seconds
                .with_label_values(&[upstream]),
            address_failovers: m
                .upstream_address_failovers_total
                .with_label_values(&[upstream]),
            upgrades_tunnelled: m.upgrades_total.with_label_values(&[upstream, "tunnelled"]),
            upgrades_stripped: m.upgrades_total.with_label_values(&[upstream, "stripped"]),
            upgrades_refused: m
                .upgrades_total
                .with_label_values(&[upstream, "refused-101"]),
            reflected_header: m
                .token_reflections_total
                .with_label_values(&[upstream, "header"]),
            reflected_body: m
                .token_reflections_total
                .with_label_values(&[upstream, "body"]),
            name: upstream.to_string(),
            responses: (0..600).map(|_| OnceLock::new()).collect(),
        }
    }

    /// One refresh of a copy (`cache_revalidations_total`).
    pub fn revalidated(&self, mode: &str, result: &str) {
        metrics()
            .cache_revalidations_total
            .with_label_values(&[&self.name, mode, result])
            .inc();
    }

    /// One waiter's end (`coalesce_waits_total`).
    pub fn coalesce_wait(&self, outcome: &str) {
        metrics()
            .coalesce_waits_total
            .with_label_values(&[&self.name, outcome])
            .inc();
    }

    pub fn stale_served(&self, reason: Reason) {
        self.stale_by_reason[reason as usize - 1].inc();
    }

    #[inline]
    pub fn upstream_response(&self, status: u16) {
        let slot = &self.responses[(status as usize).min(599)];
        slot.get_or_init(|| {
            metrics()
                .upstream_responses_total
                .with_label_values(&[&self.name, &status.to_string()])
        })
        .inc();
    }
}

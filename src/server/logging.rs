//! The process logger: env_logger, with Pingora's messages about expected
//! connection events demoted.
//!
//! Pingora logs some everyday events at ERROR: a client that closes its
//! connection while sending a header, a pooled upstream connection that a
//! race made unusable. An ERROR line in graceway means an operator should
//! act, so these are counted in `graceway_proxy_events_total{event}` and
//! logged at DEBUG instead. The table is matched only for Pingora's own
//! WARN and ERROR records (rare in normal operation), never per request;
//! it names events of Pingora's own. The one warning graceway's proxy
//! causes is matched by its module alone ([`QUIET_WARNINGS`]).

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogConfig;

/// (target prefix, message fragment, event).
const DEMOTED: [(&str, &str, &str); 4] = [
    // `run --upgrade` waits for the old process to hand its sockets over:
    // each second of waiting is expected (`transfer_fd`).
    (
        "pingora_core::server",
        "No incoming socket transfer",
        "upgrade-waiting-for-sockets",
    ),
    // A client went away (or stalled past the header deadline) before its
    // request header was complete: `handle_new_request`.
    (
        "pingora_proxy",
        "downstream session type",
        "client-aborted-header",
    ),
    (
        "pingora_core::services",
        "Downstream handshake",
        "client-handshake-failed",
    ),
    // The connection pool handed over a connection that was closing; a new
    // one is made. `connectors::reused_stream`.
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
        "upstream-reuse-raced",
    ),
];

/// A module whose every WARN is expected: pingora-core's HTTP/1 server
/// says WARN in one place only (0.9: "Respond header is already sent"),
/// when a degraded answer over an empty upstream body was written whole
/// before Pingora's own header write (`proxy::degrade`). Matched by target
/// and level, not by text; the degraded answer is counted by the proxy.
const QUIET_WARNINGS: &str = "pingora_core::protocols::http::v1::server";

struct Demoting {
    inner: env_logger::Logger,
}

impl Demoting {
    /// The event a Pingora WARN/ERROR record stands for, if it is expected.
    fn expected(record: &Record) -> Option<&'static str> {
        if record.level() > Level::Warn || !record.target().starts_with("pingora") {
            return None;
        }
        if record.level() == Level::Warn && record.target() == QUIET_WARNINGS {
            return Some("");
        }
        let text = record.args().to_string();
        DEMOTED
            .iter()
            .find(|(target, fragment, _)| {
                record.target().starts_with(target) && text.contains(fragment)
            })
            .map(|(_, _, event)| *event)
    }
}

impl Log for Demoting {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        match Self::expected(record) {
            None => {
                if self.inner.enabled(record.metadata()) {
                    self.inner.log(record)
                }
            }
            Some(event) => {
                if !event.is_empty() {
                    crate::metrics::metrics()
                        .proxy_events_total
                        .with_label_values(&[event])
                        .inc();
                }
                let debug = Record::builder()
                    .args(*record.args())
                    .level(Level::Debug)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build();
                if self.inner.enabled(debug.metadata()) {
                    self.inner.log(&debug);
                }
            }
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Sets up logging once. `RUST_LOG` overrides the config's `log.level`.
pub fn init(cfg: &LogConfig) {
    let mut b = env_logger::Builder::new();
    b.filter_level(cfg.level)
        .format_timestamp_millis()
        .format_target(false);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let inner = b.build();
    let max = inner.filter().max(LevelFilter::Warn);
    if log::set_boxed_logger(Box::new(Demoting { inner })).is_ok() {
        log::set_max_level(max);
    }
}
